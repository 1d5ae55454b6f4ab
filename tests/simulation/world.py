"""The simulated world a group of members runs in: broker, coordinator, incident.io,
producers, faults, and the truth the invariants are checked against.

`World` performs the members' effects with latencies and injected failures, always
through the scheduler (nothing re-enters a machine from inside its `handle`), and records
every fact the checker needs: each start, each arrival, each dead letter, each stored
commit. All randomness comes from `random.Random` streams derived from the seed.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import httpx

from streamer import delivery_events as ev
from streamer.config import Config, DeliverySettings
from tests.simulation.alert_api import SimIncidentIo
from tests.simulation.broker import Broker, LetterRecord
from tests.simulation.coordinator import Coordinator
from tests.simulation.invariants import Checks, Truth
from tests.simulation.member import Member
from tests.simulation.scheduler import MemberClock, Scheduler
from tests.simulation.workload import TOPIC, SimMessage

log = logging.getLogger(__name__)

INDEX_LAG = 0.01  # seconds before a letter written is in every member's index
MAX_METADATA = 4096  # the broker's offset.metadata.max.bytes (its default)


@dataclass
class Troubles:
    """Failure rates of the broker's side, switched on for periods (true time)."""

    commit_failures: list[tuple[float, float, float]] = field(default_factory=list)
    dead_letter_failures: list[tuple[float, float, float]] = field(default_factory=list)
    note_read_failures: list[tuple[float, float, float]] = field(default_factory=list)

    @staticmethod
    def rate(periods: list[tuple[float, float, float]], at: float) -> float:
        return max((p for start, end, p in periods if start <= at < end), default=0.0)


class World:
    def __init__(
        self,
        seed: int,
        config: Config,
        *,
        partitions: int,
        sources: dict[str, tuple[str, str, int]],  # destination -> (source id, token, limit)
        checks: Checks,
        max_tick: float = 1.0,
        trace_limit: int = 400,
        dead_letter_index: bool = True,
    ) -> None:
        self.seed = seed
        self.config = config
        self.settings: DeliverySettings = config.file.delivery
        self.scheduler = Scheduler()
        self.rng = random.Random(f"{seed}:world")
        self.broker = Broker(partitions)
        self.max_tick = max_tick
        # the engine's DeadLetterWriter asks the DeadLetterIndex (a follower of the topic)
        # before producing: a letter for the source offset already there is not written again
        self.dead_letter_index = dead_letter_index
        self.letters_not_rewritten = 0
        window = self.settings.rate_limit_window_seconds
        per_key = self.settings.requests_per_minute_per_api_key
        self.sources = sources
        self.api = SimIncidentIo(
            {sid: (token, limit) for sid, token, limit in sources.values()},
            window=window,
            requests_per_window_per_token=per_key,
            rng=random.Random(f"{seed}:api"),
        )
        windows = {sid: (window, limit) for sid, _, limit in sources.values()}
        windows |= {f"api-key:{token}": (window, per_key) for _, token, _ in sources.values()}
        self.truth = Truth(self.broker, windows, checks)
        self.coordinator = Coordinator(
            self.scheduler,
            partitions,
            random.Random(f"{seed}:coordinator"),
            session_timeout=0.0,
            revoke=self._revoke,
            assign=self._assign,
        )
        self.troubles = Troubles()
        self.members: dict[str, Member] = {}  # by group member id
        self.processes: list[Member] = []
        self.produced = 0
        self._digest = hashlib.sha256()
        self.trace_tail: deque[str] = deque(maxlen=trace_limit)
        self.full_trace: list[str] | None = None

    # -- members --------------------------------------------------------------------------

    def start(self, name: str, incarnation: int, clock: MemberClock, *, static: bool) -> Member:
        member = Member(self, name, incarnation, clock, static=static)
        self.processes.append(member)
        self.members[member.group_id] = member
        self.note(f"{member.id} starts (wall skew {clock.skew:+.1f} s, static {static})")
        self.coordinator.join(member.group_id, member.instance)
        member.maybe_fetch()
        member.handle(ev.Tick())
        return member

    def running(self, name: str) -> Member | None:
        for member in reversed(self.processes):
            if member.name == name and member.alive:
                return member
        return None

    def kill(self, member: Member) -> None:
        self.note(f"kill -9 {member.id}")
        member.kill()
        self.coordinator.died(member.group_id)

    def crash(self, member: Member) -> None:
        self.kill(member)

    def lose(self, member: Member, rejoin_after: float) -> None:
        if member.group_id not in self.coordinator.entries:
            return  # not in the group now (lost already, not back yet)
        self.note(f"{member.id} loses its session")
        partitions = self.coordinator.lose(member.group_id)
        member.lose(partitions)
        self.scheduler.after(rejoin_after, self._rejoin, member)

    def _rejoin(self, member: Member) -> None:
        if member.alive:
            member.rejoin()
            self.members[member.group_id] = member

    def stopped(self, member: Member) -> None:
        self.note(f"{member.id} left")

    def _revoke(self, group_id: str, partitions: list[int]) -> None:
        member = self.members.get(group_id)
        if member is not None and member.alive:
            member.revoke(partitions)

    def _assign(self, group_id: str, partitions: list[int]) -> None:
        member = self.members.get(group_id)
        if member is not None and member.alive:
            member.assign(partitions)

    # -- producers ------------------------------------------------------------------------

    def produce(self, message: SimMessage) -> None:
        self.broker.produce(message)
        self.produced += 1
        for member in self.processes:
            if member.alive:
                member.maybe_fetch()

    # -- effects --------------------------------------------------------------------------

    def post(self, member: Member, post: ev.Post) -> None:
        t = self.scheduler.now
        job = post.job
        key = job.key
        assert key is not None
        partition, offset = job.partition[1], job.offset
        self.truth.started(member.id, partition, offset, key.destination, key.deduplication_key, t)
        to_arrive, to_answer = self.api.latency(post.alert_source_config_id, t)
        timeout = self.settings.request_timeout_seconds
        token = post.token.get_secret_value()
        if to_arrive < timeout:
            self.scheduler.at(
                t + to_arrive, self._arrive, member, post, token, to_answer, t + timeout
            )
        if to_arrive + to_answer >= timeout:
            self.scheduler.at(
                t + timeout, self._answered, member, job, httpx.ReadTimeout("timed out")
            )

    def _arrive(
        self, member: Member, post: ev.Post, token: str, to_answer: float, deadline: float
    ) -> None:
        t = self.scheduler.now
        job = post.job
        source = post.alert_source_config_id
        answer = self.api.arrive(
            t, source, token, dict(post.payload), member.id, job.partition[1], job.offset
        )
        arrival = self.api.arrivals[-1]
        owner = self.coordinator.owner(job.partition[1])
        sender_owns = member.alive and owner == member.group_id
        self.truth.arrival(arrival, job.key.destination, sender_owns, [source, f"api-key:{token}"])
        if t + to_answer < deadline:
            self.scheduler.at(t + to_answer, self._answered, member, job, answer)

    def _answered(self, member: Member, job: Any, answer: Any) -> None:
        self.truth.ended(member.id, job.key.destination, job.key.deduplication_key)
        member.handle(ev.Answered(job, answer))

    def write_dead_letter(self, member: Member, write: ev.WriteDeadLetter) -> None:
        if self.dead_letter_index:  # asked first: the index reads up to now in INDEX_LAG
            self.scheduler.after(INDEX_LAG, self._ask_index, member, write, self.scheduler.now)
        else:
            self._produce_letter(member, write)

    def _ask_index(self, member: Member, write: ev.WriteDeadLetter, asked: float) -> None:
        letter = write.letter
        source = (letter.message.partition, letter.message.offset, letter.destination)
        seen = self.broker.lettered_at.get(source)
        if seen is not None and seen <= asked:
            # a letter for the source offset and destination is there (SourceOffset)
            self.letters_not_rewritten += 1
            self.note(f"{member.id}: the index has a letter for {source}: not written again")
            member.handle(ev.DeadLetterWritten(write.job))
            return
        self._produce_letter(member, write)

    def _produce_letter(self, member: Member, write: ev.WriteDeadLetter) -> None:
        t = self.scheduler.now
        member.producing += 1
        to_store, to_ack = self.rng.uniform(0.002, 0.05), self.rng.uniform(0.002, 0.05)
        fails = self.rng.random() < Troubles.rate(self.troubles.dead_letter_failures, t)
        self.scheduler.at(t + to_store, self._store_letter, member, write, fails, to_ack)

    def _store_letter(
        self, member: Member, write: ev.WriteDeadLetter, fails: bool, to_ack: float
    ) -> None:
        t = self.scheduler.now
        if fails:
            member.producing -= 1
            member.handle(ev.DeadLetterNotWritten(write.job, retry_in=0.5))
            return
        letter = write.letter
        record = LetterRecord(
            letter.message.partition,
            letter.message.offset,
            letter.destination,
            letter.reason,
            member.id,
            t,
        )
        self.broker.write_dead_letter(record)
        self.truth.dead_letter(record)
        self.scheduler.after(to_ack, self._letter_acknowledged, member, write)

    def _letter_acknowledged(self, member: Member, write: ev.WriteDeadLetter) -> None:
        member.producing -= 1
        member.handle(ev.DeadLetterWritten(write.job))

    def commit(self, member: Member, commit: ev.Commit) -> None:
        t = self.scheduler.now
        rate = Troubles.rate(self.troubles.commit_failures, t)
        if self.rng.random() < rate / 4:  # raised on send: no coordinator mid-rebalance
            offsets = {p: o for p, (o, _) in commit.offsets.items()}
            self.scheduler.after(0.001, member.handle, ev.CommitNotSent(offsets, commit.sync))
            return
        to_store, to_answer = self.rng.uniform(0.002, 0.05), self.rng.uniform(0.002, 0.05)
        # one connection to the coordinator: commits land, and are answered, in the order
        # they were sent (librdkafka calls on_commit in that order)
        store_at = max(t + to_store, member.commit_stored_at + 1e-6)
        answer_at = max(store_at + to_answer, member.commit_answered_at + 1e-6)
        member.commit_stored_at, member.commit_answered_at = store_at, answer_at
        self.scheduler.at(store_at, self._store_commit, member, commit, rate, answer_at)

    def _store_commit(
        self, member: Member, commit: ev.Commit, rate: float, answer_at: float
    ) -> None:
        t = self.scheduler.now
        results: dict[tuple[str, int], tuple[int, str | None]] = {}
        for tp, (offset, note) in sorted(commit.offsets.items()):
            partition = tp[1]
            error = self.coordinator.may_commit(member.group_id, partition)
            self.truth.checked["note-fits"] += 1
            if note is not None and len(note.encode()) > MAX_METADATA:
                error = "OFFSET_METADATA_TOO_LARGE"  # as the broker answers; nothing stored
                self.truth.violate(
                    "note-fits", t, f"{member.id}'s note for {partition}: {len(note)} bytes"
                )
            if error is None and self.rng.random() < rate:
                error = "REQUEST_TIMED_OUT"
                if self.rng.random() < 0.3:  # stored, but the answer says it failed
                    self.broker.commit(partition, offset, note, member.id, t)
                    self.truth.committed(partition, offset, member.id, t)
            elif error is None:
                self.broker.commit(partition, offset, note, member.id, t)
                self.truth.committed(partition, offset, member.id, t)
            results[tp] = (offset, error)
        self.scheduler.at(answer_at, member.handle, ev.CommitAnswered(results, commit.sync))

    def read_notes(self, member: Member, read: ev.ReadNotes) -> None:
        t = self.scheduler.now
        to_read, to_answer = self.rng.uniform(0.002, 0.05), self.rng.uniform(0.002, 0.05)
        self.scheduler.at(t + to_read, self._read_notes, member, read, to_answer)

    def _read_notes(self, member: Member, read: ev.ReadNotes, to_answer: float) -> None:
        rate = Troubles.rate(self.troubles.note_read_failures, self.scheduler.now)
        if rate and self.rng.random() < rate / 4:
            return  # committed() raised (no coordinator): the engine feeds nothing
        notes, failed = {}, []
        # a group view reads every partition of the topic (as the engine does)
        partitions = (
            [(TOPIC, p) for p in range(self.broker.partitions)] if read.group else (read.partitions)
        )
        for tp in partitions:
            if self.rng.random() < rate:
                failed.append(tp)
            else:
                notes[tp] = self.broker.read_note(tp[1])
        self.scheduler.after(
            to_answer, member.handle, ev.NotesRead(notes, failed, group=read.group)
        )

    # -- records --------------------------------------------------------------------------

    def trace(self, member: Member, event: Any, effects: list[Any]) -> None:
        line = f"{self.scheduler.now:.4f} {member.id} {_brief(event)} -> " + ", ".join(
            _brief(e) for e in effects
        )
        self._digest.update(line.encode())
        self.trace_tail.append(line)
        if self.full_trace is not None:
            self.full_trace.append(line)

    def note(self, what: str) -> None:
        line = f"{self.scheduler.now:.4f} world: {what}"
        self._digest.update(line.encode())
        self.trace_tail.append(line)
        if self.full_trace is not None:
            self.full_trace.append(line)

    @property
    def digest(self) -> str:
        return self._digest.hexdigest()[:16]


def _brief(thing: Any) -> str:
    """A short, deterministic description of an event or effect (for traces)."""
    name = type(thing).__name__
    if isinstance(thing, ev.Fetched):
        return f"Fetched({','.join(f'{m.partition[1]}:{m.offset}' for m in thing.messages)})"
    if isinstance(
        thing,
        (ev.Answered, ev.Post, ev.WriteDeadLetter, ev.DeadLetterWritten, ev.DeadLetterNotWritten),
    ):
        job = thing.job
        extra = ""
        if isinstance(thing, ev.Answered):
            answer = thing.answer
            extra = f" {getattr(answer, 'status', type(answer).__name__)}"
        return f"{name}({job.partition[1]}:{job.offset}{extra})"
    if isinstance(thing, ev.Commit):
        return (
            f"Commit({','.join(f'{p[1]}@{o}' for p, (o, _) in sorted(thing.offsets.items()))}"
            f"{' sync' if thing.sync else ''})"
        )
    if isinstance(thing, ev.CommitAnswered):
        return (
            "CommitAnswered("
            + ",".join(
                f"{p[1]}@{o}{'' if e is None else ' ' + e}"
                for p, (o, e) in sorted(thing.results.items())
            )
            + ")"
        )
    for attribute in ("partitions", "partition"):
        value = getattr(thing, attribute, None)
        if value is not None:
            if isinstance(value, dict):
                value = sorted(value.items())
            return f"{name}({value})"
    return name
