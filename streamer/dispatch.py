"""Out: what starts when, and what each of incident.io's answers does to it.

A private part of the delivery machine (`delivery_machine.py`; docs/design.md, "The
delivery machine"): it takes each destination's queue in turn and returns what may start
now (its destination's hold and limits, the hand-over's cut-offs), up to `workers`
requests at once; the machine turns those into `Post` effects. Each answer comes back
through `answered`, where the failure policy decides it: accepted -> terminal; 429 -> the
limiter pauses and the delivery waits at the head of its queue (not a failed attempt);
5xx or a transport error -> a retry after a backoff (`schedule`); 401/403/404/3xx -> the
destination is held; any other refusal -> a dead letter. An answer that cannot be
understood is retried like a transport error: nothing an endpoint sends can stop the
machine. Nothing here does I/O or calls back: it returns what happened, the machine acts.

An answer for a job whose partition was revoked meanwhile only releases its key: the
next owner delivers it (fencing).

Alert storms (`coalescing.py`): a delivery waits in its destination's queue in priority
order, and where the destination coalesces, a newer event of a waiting key supersedes it
(on arrival, and whenever the key waits again after a 429, a hold or a backoff); what
waits and why is reported by `pending.py`.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from streamer.coalescing import Waiting, coalesce
from streamer.config import DeliverySettings
from streamer.dead_letters import DeadLetter, SourceMessage
from streamer.delivery_events import Post
from streamer.destinations import Destinations, DestinationState
from streamer.failure_policy import (
    Accepted,
    Backoff,
    FailurePolicy,
    HoldDestination,
    RateLimited,
    Retry,
    decide,
)
from streamer.handover import HandOver
from streamer.incident_io import Answer
from streamer.instrumentation import MessageSpans, log_context
from streamer.ledger import DeliveryLedger, Job, OrderingKey, Partition
from streamer.liveness import stall_threshold
from streamer.logs import redact_url
from streamer.pending import PendingView
from streamer.telemetry import Telemetry

log = logging.getLogger(__name__)

# what an answer did: the job is terminal, goes to its dead letter, was fenced off (its
# key is free again), or waits (a 429, a hold: back in its queue; a retry: a timer)
Verdict = Literal["accepted", "dead-letter", "released", "waits"]


@dataclass
class Delivery:
    """A job's work: one alert event for one destination."""

    message: SourceMessage
    route: str
    destination: str
    payload: dict[str, Any]
    first_attempt_at: float | None = None  # wall clock, for max_retry_seconds
    waited_for_rate_limit: bool = False
    waiting_since: float | None = None  # monotonic: when the limiter first said wait
    event_time: float | None = None  # epoch seconds, for end-to-end latency
    sent_at: float = 0.0  # monotonic: when its slots were taken (request duration too)
    # its key's place in the destination's queue (since when it waits, and its turn): kept
    # across 429s, holds and retries, and handed to the event that supersedes it
    place: Waiting | None = None
    span: Span | None = None  # the current attempt's client span
    labels: Mapping[str, Any] | None = None  # what silences test (silences.labels_of)
    alert_labels: Mapping[str, str] | None = None  # what inhibit rules test (alerts only)


class Dispatcher:
    def __init__(
        self,
        settings: DeliverySettings,
        *,
        ledger: DeliveryLedger,
        destinations: Destinations,
        handover: HandOver,
        telemetry: Telemetry,
        spans: MessageSpans,
        clock: Callable[[], float],
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.rng = rng  # the backoff's jitter (seeded in simulations)
        self.ledger, self.destinations, self.handover = ledger, destinations, handover
        self.telemetry, self.spans, self.clock = telemetry, spans, clock
        self.policy = FailurePolicy(
            Backoff(settings.backoff_base_seconds, settings.backoff_cap_seconds),
            settings.max_retry_seconds,
        )
        self.busy = 0  # requests in flight
        # the shell's question at a delivery's turn: has a silence (or an inhibit rule's
        # source) read since it was routed muted it? Its answer is the outcome, `silenced`
        # or `inhibited` (intake.quiet_at_turn; None: not muted, or never asked). It then
        # ends, never sent.
        self.quiet: Callable[[Delivery, float], str | None] | None = None
        self._timers: list[tuple[float, int, Job]] = []  # (due, tie-breaker, job)
        self._sequence = itertools.count()
        # what waits and why (/pending, gauges, the watermark log line): rebuilt each second
        self.pending = PendingView(
            telemetry,
            clock,
            settings.watermark_hold_log_seconds,
            stall_after=stall_threshold(settings),
        )

    @property
    def has_timers(self) -> bool:
        return bool(self._timers)

    def timer_starts(self) -> Iterator[tuple[Partition, float]]:
        """Each scheduled job's partition and due time (for drains)."""
        return ((job.partition, due) for due, _, job in self._timers)

    def worth_waiting(self, *, producing: bool) -> bool:
        """While draining: could anything still finish (a request, a dead letter being
        produced), or start before its partition's cut-off?"""
        now = self.clock()
        starts = itertools.chain(self.destinations.earliest_starts(now), self.timer_starts())
        return self.handover.worth_waiting(in_flight=bool(self.busy or producing), starts=starts)

    def dispatch(
        self, now: float, wall: float
    ) -> tuple[list[Post], list[Job], list[tuple[Job, str]]]:
        """What starts now (its slots taken, as `Post`s), per destination in its queue's order
        (`priority`), the jobs found fenced off (their keys are free again), and those
        `quiet` says a silence or an inhibit rule mutes now, with that outcome (terminal,
        never sent, taking no slot). A
        delivery of a partition past its hand-over cut-off is passed over (it stays queued
        for the drain to give up), so it does not hold back the partitions that stay; keys
        are distinct within a queue, so neither priority nor passing over reorders a key."""
        started: list[Post] = []
        released: list[Job] = []
        quieted: list[tuple[Job, str]] = []
        for state in self.destinations:
            passed_over = []
            while state.ready and self.busy < self.settings.workers:
                job = state.ready[0]
                if not self.ledger.owns(job):  # its partition was revoked: let the key go
                    state.ready.remove(job)
                    released.append(job)
                    continue
                if not self.handover.may_start(job.partition, now):
                    if not self._any_may_start(state, now):
                        break  # all would be passed over (a claim settling: the backlog)
                    passed_over.append(state.ready.remove(job))  # left to the next owner
                    continue
                outcome = self.quiet(job.work, wall) if self.quiet is not None else None
                if outcome is not None:
                    state.ready.remove(job)  # a silence added (a source fired) while it waited
                    quieted.append((job, outcome))
                    continue
                if not state.take_slot(now):
                    if not state.held_reason and not job.work.waited_for_rate_limit:
                        job.work.waited_for_rate_limit = True
                        job.work.waiting_since = now
                        self.telemetry.rate_limit_waits.add(1, {"destination": state.name})
                    break
                job.work.place = state.ready.remove(job)
                self._started(job, state, now, wall)
                spec, payload = state.spec, job.work.payload
                started.append(
                    Post(job, spec.url, spec.alert_source_config_id, state.token, payload)
                )
            for entry in passed_over:
                state.ready.restore(entry)
        if self.pending.due(now):
            self.pending.refresh(
                now,
                self.destinations,
                self.handover,
                self.ledger,
                (j for _, _, j in self._timers),
                workers_free=self.busy < self.settings.workers,
            )
        return started, released, quieted

    def _any_may_start(self, state: DestinationState, now: float) -> bool:
        """Whether a partition with deliveries waiting in `state`'s queue may start now.
        None may: the walk stops instead of passing over every waiting delivery one by one
        (each step of a claim's settle, with a backlog of thousands). Nothing is released
        by stopping: a queue holds no fenced job (a partition let go leaves its queues at
        once, `Destinations.drop`; an answer or a timer of one is released, not queued)."""
        return any(self.handover.may_start(p, now) for p in state.ready.per_partition())

    # -- waiting: coalescing and priority ----------------------------------------------------

    def enqueue(self, job: Job) -> None:
        """A delivery waits for its destination (its key just became free, or it is back
        from a 429, a hold or a backoff). Where the destination coalesces, the newest
        event of its key waits in its place and the older ones end `superseded`."""
        state = self.destinations[job.work.destination]
        place = job.work.place
        if state.coalesces and job.key is not None:
            job = coalesce(self.ledger, job.key, waiting=(job,)).active or job
        job.work.place = place
        state.ready.add(job, rank=state.rank(job), since=self.clock(), place=place)

    def coalesce(self, works: Iterable[tuple[OrderingKey | None, Any]]) -> None:
        """Events just added to the ledger: each may supersede the waiting (not in flight)
        events of its key. The newest takes the key's place in its destination's queue."""
        for key, _ in works:
            if key is None:
                continue
            state = self.destinations[key.destination]
            if not state.coalesces:
                continue
            coalesced = coalesce(self.ledger, key, waiting=state.ready)
            if coalesced.active is not None:
                replaced = coalesced.superseded[0]  # the key's waiting event
                state.ready.replace(replaced, coalesced.active, rank=state.rank(coalesced.active))

    def ended(self, job: Job, *, silenced: bool = False) -> tuple[list[Job], int]:
        """`job` is terminal: accepted, its dead letter written, or `silenced` at its turn.
        Ends it in the ledger with the jobs it superseded (terminal with it if it was
        accepted; else the newest of them is sent itself). A silenced job never stands for
        a resolve (a resolve is never silenced): the newest resolve it superseded is sent
        itself, standing for the older ones; the newer ones end with it. Returns its key's
        jobs active now, and how many messages' jobs ended (itself and those it stood for)."""
        stood = not isinstance(job.work, DeadLetter)
        superseded = job.stands_for if stood and self.ledger.owns(job) else []
        revive = next((o for o in reversed(superseded) if _resolve(o)), None) if silenced else None
        if revive is not None:
            superseded = superseded[superseded.index(revive) + 1 :]
        for older in superseded:
            self.spans.job_ended(older.partition, older.offset, "superseded")
        if superseded and job.key is not None:
            self.telemetry.superseded.add(len(superseded), {"destination": job.key.destination})
        active = self.ledger.finish(job, stood=stood, revive=revive)
        return active, 1 + len(superseded)

    def _started(self, job: Job, state: DestinationState, now: float, wall: float) -> None:
        delivery: Delivery = job.work
        if delivery.first_attempt_at is None:
            delivery.first_attempt_at = wall
        delivery.sent_at = now  # when its slots were taken
        if delivery.waiting_since is not None:
            self.telemetry.rate_limit_wait.record(
                delivery.sent_at - delivery.waiting_since, {"destination": state.name}
            )
            delivery.waiting_since = None
        if self.telemetry.tracing:
            parent = self.spans.parent(job.partition, job.offset)
            delivery.span = self.telemetry.tracer.start_span(
                "POST",
                kind=SpanKind.CLIENT,
                context=trace.set_span_in_context(parent) if parent else None,
                attributes={
                    "http.request.method": "POST",
                    "server.address": redact_url(state.spec.url),
                    "streamer.destination": state.name,
                },
            )
        self.busy += 1

    def answered(self, job: Job, answer: Answer | Exception, wall: float) -> Verdict:
        """One answer (or the client's exception) for a started job, decided."""
        self.busy -= 1
        delivery: Delivery = job.work
        state = self.destinations[delivery.destination]
        was_probe = state.request_ended(delivery.sent_at, self.clock(), job.partition)
        self._record_attempt(delivery, state, answer)
        if not self.ledger.owns(job):  # revoked meanwhile: the new owner delivers it
            return "released"
        first = delivery.first_attempt_at or wall
        decision = decide(self.policy, answer, job.attempts, first, wall, self.rng)
        change = state.answered(
            decision,
            was_probe=was_probe,
            now=self.clock(),
            hold_retry=self.settings.hold_retry_seconds,
        )
        if change == "released":
            log.info(
                "destination %s released: it answers again",
                state.name,
                extra={"destination": state.name},
            )
        if isinstance(decision, Accepted):
            self.telemetry.delivered.add(1, {"destination": state.name})
            if delivery.event_time is not None:
                self.telemetry.latency.record(
                    max(0.0, wall - delivery.event_time), {"destination": state.name}
                )
            return "accepted"
        if isinstance(decision, RateLimited):  # not a failure: no attempt counted
            state.rate_limited(self.clock() + max(0.0, decision.retry_at - wall))
            self.enqueue(job)  # its key keeps its place
            return "waits"
        if isinstance(decision, Retry):
            job.attempts += 1
            self.telemetry.retries.add(1, {"destination": state.name})
            log.warning(
                "delivery to %s failed (%s); retry %d in %.1f s",
                state.name,
                decision.reason,
                job.attempts,
                decision.delay,
                extra={**log_context(job), "request_id": decision.request_id},
            )
            self.schedule(self.clock() + decision.delay, job)
            return "waits"
        if isinstance(decision, HoldDestination):
            job.attempts += 1
            if change == "held":
                log.error(
                    "destination %s held: %s (request_id %s); other destinations keep "
                    "flowing, nothing is dead-lettered, retrying every %.0f s",
                    state.name,
                    decision.reason,
                    decision.request_id,
                    self.settings.hold_retry_seconds,
                    extra={
                        "destination": state.name,
                        "request_id": decision.request_id,
                        "http_status": decision.status,
                    },
                )
            self.enqueue(job)
            return "waits"
        # the payload is wrong, or retries ran out: a dead letter
        job.attempts += 1
        job.work = DeadLetter(
            delivery.message,
            f"http-{decision.status}" if decision.status else "gave-up",
            decision.reason,
            delivery.route,
            delivery.destination,
            decision.status,
            decision.body,
            decision.request_id,
            job.attempts,
        )
        return "dead-letter"

    def _record_attempt(
        self, delivery: Delivery, state: DestinationState, answer: Answer | Exception
    ) -> None:
        outcome: dict[str, str | int] = {"destination": state.name, "http.request.method": "POST"}
        if isinstance(answer, Exception):
            outcome["error.type"] = type(answer).__name__
        else:
            outcome["http.response.status_code"] = answer.status
        self.telemetry.attempts.add(1, outcome)
        self.telemetry.request_duration.record(self.clock() - delivery.sent_at, outcome)
        span, delivery.span = delivery.span, None
        if span is not None:
            if isinstance(answer, Exception):
                span.set_attribute("error.type", type(answer).__name__)
                span.set_status(Status(StatusCode.ERROR))
            else:
                span.set_attribute("http.response.status_code", answer.status)
                if answer.status >= 400:
                    span.set_status(Status(StatusCode.ERROR))
            span.end()

    def schedule(self, due: float, job: Job) -> None:
        heapq.heappush(self._timers, (due, next(self._sequence), job))

    def due_timers(self, now: float) -> list[Job]:
        """The jobs whose backoff (or dead letter's pause) is over, in due order."""
        due = []
        while self._timers and self._timers[0][0] <= now:
            due.append(heapq.heappop(self._timers)[2])
        return due

    def next_timer(self) -> float | None:
        return self._timers[0][0] if self._timers else None


def _resolve(job: Job) -> bool:
    """A delivery of a resolve (never silenced, so never ended by a silenced job)."""
    return isinstance(job.work, Delivery) and job.work.payload.get("status") == "resolved"
