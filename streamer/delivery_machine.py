"""The delivery machine: every decision of delivery, events in, effects out.

One door (docs/design.md, "The delivery machine"): `handle(event, now, wall)` takes what
happened (`delivery_events.py`: messages fetched, an answer, a dead letter written, time
passing, a rebalance, a commit's answer, notes read, a new configuration) and returns the
effects the shell must perform (POST, produce a dead letter, commit with notes, pause,
resume, read notes). The shell (`engine.py`, or the simulator in tests/simulation/)
performs them and feeds their results back as events; nothing here blocks, sleeps, reads
a clock or talks to Kafka or HTTP, and nothing here calls back into the shell.

Its parts are private (the shell only asks the read-only questions below): admission
(`admission.py`: which fetched messages become jobs), the ledger (guarantees 1, 2),
destinations and the dispatcher (3, 5), coalescing (11), backpressure (4), the hand-over
(6), and the commit conversation with the group budget (1, 3, 10).

A message's walk: `Fetched` -> admission -> the ledger -> one job per delivery, queued for
its destination (or a `WriteDeadLetter`) -> `Tick`: `Post` when its key, hold, limits and
hand-over allow -> `Answered`: terminal, a retry, a wait or a dead letter -> a job that
ends goes through `_end` (the one place), which frees its key -> a `Commit` behind the
watermark.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Collection, Mapping

from pydantic import SecretStr

from streamer.admission import Admission
from streamer.backpressure import Backpressure
from streamer.commit_conversation import CommitConversation
from streamer.commits import CLAIM_RETRY, CommitSchedule
from streamer.config import Config, DeliverySettings, Destination
from streamer.dead_letters import DeadLetter
from streamer.delivery_events import (
    Answered,
    Assigned,
    CommitAnswered,
    CommitNotSent,
    ConfigChanged,
    DeadLetterNotWritten,
    DeadLetterWritten,
    Effect,
    Event,
    Fetched,
    LetGo,
    NotesRead,
    Pause,
    ReleaseHeld,
    Revoked,
    Revoking,
    Tick,
    WriteDeadLetter,
)
from streamer.destinations import Destinations
from streamer.dispatch import Dispatcher
from streamer.failure_policy import Backoff
from streamer.group_budget import GroupBudget
from streamer.handover import HandOver
from streamer.held_releases import HeldReleases, Quiet, Stale
from streamer.instrumentation import ConsumerLag, MessageSpans, Stats, register_gauges, stats_of
from streamer.ledger import DeliveryLedger, Job, Partition
from streamer.telemetry import Telemetry

log = logging.getLogger(__name__)

__all__ = ["DeliveryMachine"]


class DeliveryMachine:
    def __init__(
        self,
        settings: DeliverySettings,
        destinations: Mapping[str, Destination],
        tokens: Mapping[str, SecretStr],
        *,
        group_id: str = "streamer",
        now: float = 0.0,
        writer: str | None = None,
        telemetry: Telemetry | None = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.telemetry = telemetry or Telemetry()
        self._rng = rng  # every jitter (seeded in simulations: a seed replays exactly)
        s = self.settings = settings
        self._now, self._wall = now, 0.0

        def clock() -> float:  # the latest event's time: the machine reads no clock
            return self._now

        self._ledger = DeliveryLedger()
        self._destinations = Destinations(s)
        self._backpressure = Backpressure(
            max_messages=s.max_unfinished,
            max_bytes=s.max_unfinished_bytes,
            backoff=Backoff(s.backoff_base_seconds, s.backoff_cap_seconds),
            rng=rng,
        )
        # a claimed partition starts once the others could read the claim (a view later)
        self._handover = HandOver(s.request_timeout_seconds, s.commit_interval_seconds + 0.25)
        self._commits = CommitSchedule(
            interval=s.commit_interval_seconds, every=s.commit_every_messages, now=now
        )
        # a note may take two commit intervals (and a round trip) to be confirmed
        self._budget = GroupBudget(
            self._destinations,
            self._ledger,
            tail_seconds=2 * s.commit_interval_seconds + 1.0,
            view_interval=s.commit_interval_seconds,
            writer=writer,
        )
        self._commit = CommitConversation(
            schedule=self._commits,
            budget=self._budget,
            handover=self._handover,
            ledger=self._ledger,
        )
        self.spans = MessageSpans(self.telemetry, group_id, clock)
        self._out = Dispatcher(
            s,
            ledger=self._ledger,
            destinations=self._destinations,
            handover=self._handover,
            telemetry=self.telemetry,
            spans=self.spans,
            clock=clock,
            rng=rng,
        )
        self._admission = Admission(
            ledger=self._ledger,
            backpressure=self._backpressure,
            budget=self._budget,
            commit=self._commit,
            commits=self._commits,
            out=self._out,
            spans=self.spans,
            telemetry=self.telemetry,
            activate=self._activate,
        )
        self._held = HeldReleases(self._ledger)  # held targets' releases (held_targets.py)
        self._total_partitions = 0
        self._effects: list[Effect] = []
        self._configure(destinations, tokens)

    @classmethod
    def of(
        cls, config: Config, *, now: float = 0.0, telemetry: Telemetry | None = None
    ) -> DeliveryMachine:
        """The machine for a loaded configuration."""
        return cls(
            config.file.delivery,
            config.file.destinations,
            config.tokens,
            group_id=config.file.kafka.group_id,
            now=now,
            telemetry=telemetry,
        )

    # -- the door ------------------------------------------------------------------------

    def handle(self, event: Event, now: float, wall: float) -> list[Effect]:
        """Everything that happens goes through here; returns what the shell must do."""
        self._now, self._wall = now, wall
        self._effects = []
        match event:
            case Fetched():  # which messages become jobs: admission.py
                self._admission.fetched(event, now, self._effects)
            case Tick():
                self._tick(event)
            case Answered():
                self._answered(event)
            case DeadLetterWritten():  # its letter is on the topic: terminal
                self.telemetry.dead_lettered.add(1, {"reason": event.job.work.reason})
                self._end(event.job)
            case DeadLetterNotWritten():  # not terminal until it is
                self._out.schedule(self._now + event.retry_in, event.job)
            case CommitAnswered():
                self._commit.answered(event.results, sync=event.sync, now=now)
            case CommitNotSent():
                self._commit.not_sent(event.offsets, sync=event.sync)
            case NotesRead() if event.group:
                self._commit.group_read(event.notes, event.failed, now, wall)
            case NotesRead():
                self._held.noted(event.notes)  # where this assignment reads from
                self._commit.previous_read(event.notes, event.failed, now, wall)
            case Assigned():
                self._assigned(event)
            case Revoking():  # a drain begins: nothing of them starts too late to end
                self._handover.begin(event.partitions, event.deadline)
            case Revoked():  # the drain is over: commit what is terminal, and wait
                # nothing of them starts any more: the final note is built now (a start
                # after it, before `LetGo`, would be a start no note tells the next owner)
                self._handover.stop(event.partitions)
                self._effects += self._commit.due(
                    now, wall, force=True, partitions=event.partitions
                )
            case LetGo():
                self._let_go(event)
            case ConfigChanged():
                self._total_partitions = event.total_partitions
                self._configure(event.destinations, event.tokens)
            case ReleaseHeld():
                for job in self._held.release(event, self._effects):
                    self._activate(job)
        return self._effects

    # -- what the shell may ask (reads, never changes) -------------------------------------

    @property
    def writer(self) -> str:
        """This incarnation's name in the notes it writes."""
        return self._budget.writer

    @property
    def partitions(self) -> list[Partition]:
        return self._ledger.partitions

    held_waiting = property(lambda self: self._held.waiting)  # one waits for a fetch: ask again

    @property
    def busy(self) -> int:
        """Requests in flight (posted, not answered)."""
        return self._out.busy

    @property
    def has_timers(self) -> bool:
        return self._out.has_timers

    @property
    def blocked(self) -> int:
        """Partitions paused for the schema registry (or an unread note)."""
        return self._backpressure.blocked_count()

    @property
    def paused(self) -> bool:
        """Every partition is paused for the caps."""
        return self._backpressure.paused

    def unfinished(self, partition: Partition | None = None) -> int:
        return self._ledger.unfinished(partition)

    def room(self) -> int:
        """How many more messages may be fetched now (bounded memory)."""
        return self._backpressure.room(self._ledger.unfinished(), self._ledger.unfinished_size())

    def needs_routing(self, partition: Partition, offset: int) -> bool:
        """Whether a fetched message is worth decoding and routing (else the shell passes
        it with `works=None`: not ours, blocked, fetched twice, or known to be done)."""
        return self._admission.needs_routing(partition, offset)

    def drained(self, partitions: Collection[Partition], *, producing: bool) -> bool:
        """A drain of `partitions` may end: all terminal, or waiting cannot change anything
        (nothing in flight, a release included, or being produced, nothing that could start
        before its cut-off)."""
        if not any(self._ledger.unfinished(p) for p in partitions):
            return not self._held.in_flight(partitions)  # (a release is no message)
        return not self._out.worth_waiting(producing=producing)

    def next_wakeup(self, now: float) -> float:
        """The earliest time at which a `Tick` could do something (a timer, a slot, a
        commit, a view, a registry retry); `now` if something can happen already. A
        queue's head counts only if a worker is free and its partition may start (an
        answer, a claim or its settle wakes the shell for the others)."""
        times = [self._commits.next_due(), self._commit.next_view()]
        if (timer := self._out.next_timer()) is not None:
            times.append(timer)
        if self._out.busy < self.settings.workers:
            times += [
                start
                for partition, start in self._destinations.earliest_starts(now)
                if self._handover.may_start(partition, max(now, start))
            ]
        times += self._backpressure.blocked_until()
        # a claim is a commit: of a partition whose offset is known (a message wakes it)
        if any(self._ledger.commit_offset(p) is not None for p in self._handover.unclaimed()):
            times.append(now + CLAIM_RETRY)
        if (settled := self._handover.settled_at(now)) is not None:
            times.append(settled)
        return max(now, min(times))

    @property
    def stats(self) -> Stats:
        """The summary's numbers as they stand (read from the metrics)."""
        return stats_of(
            self.telemetry,
            held_destinations=self._destinations.held(),
            pauses=self._backpressure.pauses,
            committed=self._commits.last_confirmed,
        )

    def quiet_with(self, quiet: Quiet, *, stale: Stale | None = None) -> None:
        """Asked at each delivery's turn: silences and inhibit rules (`quiet(delivery, wall)`:
        an outcome, or None), a release's record `stale(key, partition, offset)`: `settled`."""
        self._out.quiet = self._held.at_turn(quiet, stale)

    def register_gauges(self, lag: ConsumerLag) -> None:
        """The gauges read from the parts (the metrics thread reads them as they stand)."""
        register_gauges(self.telemetry, self._ledger, self._backpressure, self._destinations, lag)

    # -- in: messages -> jobs --------------------------------------------------------------

    def _activate(self, job: Job) -> None:
        """A job whose key is free: queue it for its destination, or write its letter."""
        if isinstance(job.work, DeadLetter):
            self._effects.append(WriteDeadLetter(job, job.work))
        else:
            self._out.enqueue(job)  # coalesced and ranked (streamer/coalescing.py)

    # -- out: answers and dead letters -----------------------------------------------------

    def _answered(self, event: Answered) -> None:
        self._held.answered(event.job)
        verdict = self._out.answered(event.job, event.answer, self._wall)
        if verdict == "accepted":
            self._end(event.job)
        elif verdict == "released":
            self._release(event.job)
        elif verdict == "dead-letter":
            self._activate(event.job)  # its work is its dead letter now

    # -- a job ends: the one place ---------------------------------------------------------

    def _end(self, job: Job, outcome: str | None = None) -> None:
        """`job` is terminal (accepted, its dead letter written, or muted at its turn):
        with the jobs it stood for, if it stood for any; its key's next job is activated."""
        if outcome is None:
            outcome = "dead-lettered" if isinstance(job.work, DeadLetter) else "delivered"
        if not job.held:  # (a held target's release has no message of its own)
            self.spans.job_ended(job.partition, job.offset, outcome)
        # muted at its turn (a resolve never is): as silenced for what it superseded
        muted = outcome in ("silenced", "inhibited")
        next_jobs, ended = self._out.ended(job, silenced=muted)
        self._commits.terminal(ended - job.held)
        self._effects += self._held.ended(job, outcome)
        self._commits.soon()  # in the offset map within 0.1 s: a kill re-sends little
        for next_job in next_jobs:
            self._activate(next_job)

    def _release(self, job: Job) -> None:
        """A fenced job (its partition was let go): free its key, no watermark moves."""
        self.spans.job_ended(job.partition, job.offset, "revoked")
        self._held.forget(job)
        for next_job in self._ledger.finish(job):
            self._activate(next_job)

    # -- time passes -----------------------------------------------------------------------

    def _tick(self, _: Tick) -> None:
        now = self._now
        for job in self._out.due_timers(now):  # fenced meanwhile: its key is free again
            (self._activate if self._ledger.owns(job) else self._release)(job)
        self._effects += self._backpressure.unblocked(now)
        posts, released, quieted = self._out.dispatch(now, self._wall)
        for job in released:
            self._release(job)
        for job, outcome in quieted:
            self._end(job, outcome)
        self._held.posted(post.job for post in posts)
        self._effects += posts
        self._effects += self._backpressure.caps(self._ledger)
        self._effects += self._commit.due(now, self._wall)

    # -- partitions: taken, and let go -----------------------------------------------------

    def _assigned(self, event: Assigned) -> None:
        """Newly owned: nothing of them starts until our note is on the broker (the claim)
        nor before the previous owner's note is read (its budget and offsets done)."""
        self._total_partitions = event.total_partitions
        for p in event.partitions:
            self._ledger.assign(p)
        self._budget.share_by_ownership(self._total_partitions, self._now)
        self._handover.take(event.partitions)
        self._effects += self._commit.take(event.partitions)
        if self._backpressure.paused:
            self._effects.append(Pause(list(event.partitions)))

    def _let_go(self, event: LetGo) -> None:
        """The partitions leave every part at once: their messages are no longer ours (the
        ledger fences their answers), their waiting jobs free their keys (released, never
        dropped: the next owner delivers them), shares are computed again."""
        partitions = list(event.partitions)
        for p in partitions:
            self._ledger.revoke(p)
        self.spans.let_go(partitions)  # each unfinished message ends once, as revoked
        self._commit.let_go(partitions)
        self._held.let_go(partitions)
        self._backpressure.forget(partitions)
        for job in self._destinations.drop(partitions):
            self._release(job)
        self._handover.end(partitions)
        self._budget.share_by_ownership(self._total_partitions, self._now)

    def _configure(
        self, destinations: Mapping[str, Destination], tokens: Mapping[str, SecretStr]
    ) -> None:
        self._destinations.configure(destinations, tokens)
        self._held.configured = set(destinations)  # (a removed one keeps its state there)
        self._budget.share_by_ownership(self._total_partitions, self._now)
