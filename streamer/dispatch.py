"""Out: deliveries to incident.io, one worker per request, every answer decided.

The dispatcher takes each destination's queue in turn and starts what its destination
allows (hold, limits) and the hand-over allows (cut-offs), up to `workers` requests at
once. Workers only POST; the answer comes back to the poll thread (`collect`), where the
failure policy decides it: accepted -> terminal; 429 -> the limiter pauses and the
delivery waits at the head of its queue (not a failed attempt); 5xx or a transport error
-> a retry after a backoff (`schedule`); 401/403/404/3xx -> the destination is held;
any other refusal -> a dead letter. An answer that cannot be understood is retried like
a transport error: nothing an endpoint sends can stop the loop.

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
import queue
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from streamer.coalescing import Waiting, coalesce
from streamer.config import DeliverySettings
from streamer.dead_letters import DeadLetter, SourceMessage
from streamer.destinations import Destinations, DestinationState
from streamer.failure_policy import (
    Accepted,
    Backoff,
    Decision,
    FailurePolicy,
    HoldDestination,
    RateLimited,
    Retry,
)
from streamer.handover import HandOver
from streamer.incident_io import Answer, PostsAlertEvents
from streamer.instrumentation import MessageSpans, log_context
from streamer.ledger import DeliveryLedger, Job, OrderingKey, Partition
from streamer.logs import redact_url
from streamer.pending import PendingView
from streamer.telemetry import Telemetry

log = logging.getLogger("streamer.engine")


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


class Dispatcher:
    def __init__(
        self,
        settings: DeliverySettings,
        *,
        ledger: DeliveryLedger,
        destinations: Destinations,
        handover: HandOver,
        http: PostsAlertEvents,
        telemetry: Telemetry,
        spans: MessageSpans,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
        activate: Callable[[Job], None],
        finish: Callable[[Job], None],
        release: Callable[[Job], None],
        dead_letter: Callable[[Job], None],
    ) -> None:
        self.settings = settings
        self.ledger, self.destinations, self.handover = ledger, destinations, handover
        self.http, self.telemetry, self.spans = http, telemetry, spans
        self.clock, self.wall_clock = clock, wall_clock
        self.activate, self.finish, self.release = activate, finish, release
        self.dead_letter = dead_letter
        self.policy = FailurePolicy(
            Backoff(settings.backoff_base_seconds, settings.backoff_cap_seconds),
            settings.max_retry_seconds,
        )
        self.busy = 0  # requests in flight
        self._workers = ThreadPoolExecutor(settings.workers, thread_name_prefix="deliver")
        self._results: queue.SimpleQueue[tuple[Job, Answer | Exception]] = queue.SimpleQueue()
        self._timers: list[tuple[float, int, Job]] = []  # (due, tie-breaker, job)
        self._sequence = itertools.count()
        # what waits and why (/pending, gauges, the watermark log line): rebuilt each second
        self.pending = PendingView(telemetry, clock, settings.watermark_hold_log_seconds)

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

    def close(self) -> None:
        self._workers.shutdown(wait=False, cancel_futures=True)
        self.http.close()

    def dispatch(self) -> None:
        """Starts what may start now, per destination in its queue's order (`priority`). A
        delivery of a partition past its hand-over cut-off is passed over (it stays queued
        for the drain to give up), so it does not hold back the partitions that stay; keys
        are distinct within a queue, so neither priority nor passing over reorders a key."""
        now = self.clock()
        for state in self.destinations:
            passed_over = []
            while state.ready and self.busy < self.settings.workers:
                job = state.ready[0]
                if not self.ledger.owns(job):  # its partition was revoked: let the key go
                    state.ready.remove(job)
                    self.release(job)
                    continue
                if not self.handover.may_start(job.partition, now):
                    passed_over.append(state.ready.remove(job))  # left to the next owner
                    continue
                if not state.may_start(now):
                    if not state.held_reason and not job.work.waited_for_rate_limit:
                        job.work.waited_for_rate_limit = True
                        job.work.waiting_since = now
                        self.telemetry.rate_limit_waits.add(1, {"destination": state.name})
                    break
                job.work.place = state.ready.remove(job)
                self._send(job, state, now)
            for entry in passed_over:
                state.ready.restore(entry)
        if self.pending.due(now):
            self.pending.refresh(
                now, self.destinations, self.handover, self.ledger, (j for _, _, j in self._timers)
            )

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

    def ended(self, job: Job) -> tuple[list[Job], int]:
        """`job` is terminal: accepted, or its dead letter written. Ends it in the ledger
        with the jobs it superseded (terminal with it if it was accepted; else the newest
        of them is sent itself). Returns its key's jobs active now, and how many messages'
        jobs ended (itself and those it stood for)."""
        stood = not isinstance(job.work, DeadLetter)
        superseded = job.stands_for if stood and self.ledger.owns(job) else []
        for older in superseded:
            self.spans.job_ended(older.partition, older.offset, "superseded")
        if superseded and job.key is not None:
            self.telemetry.superseded.add(len(superseded), {"destination": job.key.destination})
        return self.ledger.finish(job, stood=stood), 1 + len(superseded)

    def _send(self, job: Job, state: DestinationState, now: float) -> None:
        delivery: Delivery = job.work
        if delivery.first_attempt_at is None:
            delivery.first_attempt_at = self.wall_clock()
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
        spec, token, payload = state.spec, state.token, delivery.payload

        def post() -> None:
            try:
                answer: Answer | Exception = self.http.post_alert_event(
                    spec.url, spec.alert_source_config_id, token, payload
                )
            except Exception as e:  # never lose a result: the poll thread decides
                answer = e
            self._results.put((job, answer))

        self._workers.submit(post)

    def collect(self, wait: float = 0.0) -> None:
        """Handles every answer that arrived; waits up to `wait` s for the first one."""
        while True:
            try:
                job, answer = (
                    self._results.get(timeout=wait) if wait else self._results.get_nowait()
                )
            except queue.Empty:
                return
            wait = 0.0
            self.busy -= 1
            self._on_answer(job, answer)

    def _on_answer(self, job: Job, answer: Answer | Exception) -> None:
        delivery: Delivery = job.work
        state = self.destinations[delivery.destination]
        was_probe = state.request_ended(delivery.sent_at, self.clock(), job.partition)
        self._record_attempt(delivery, state, answer)
        if not self.ledger.owns(job):  # revoked meanwhile: the new owner delivers it
            self.release(job)
            return
        now_wall = self.wall_clock()
        first = delivery.first_attempt_at or now_wall
        decision = decide(self.policy, answer, job.attempts, first, now_wall)
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
                    max(0.0, now_wall - delivery.event_time), {"destination": state.name}
                )
            self.finish(job)
        elif isinstance(decision, RateLimited):  # not a failure: no attempt counted
            state.rate_limited(self.clock() + max(0.0, decision.retry_at - now_wall))
            self.enqueue(job)  # its key keeps its place
        elif isinstance(decision, Retry):
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
        elif isinstance(decision, HoldDestination):
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
        else:  # the payload is wrong, or retries ran out: a dead letter
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
            self.dead_letter(job)

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

    def fire_timers(self) -> None:
        now = self.clock()
        while self._timers and self._timers[0][0] <= now:
            _, _, job = heapq.heappop(self._timers)
            if not self.ledger.owns(job):
                self.release(job)
            else:
                self.activate(job)


def decide(
    policy: FailurePolicy,
    answer: Answer | Exception,
    attempt: int,
    first_attempt_at: float,
    now: float,
) -> Decision:
    """The policy's decision on one attempt's answer (wall-clock times). An answer the
    policy cannot read is treated as no answer at all: retried, never raised."""
    try:
        if isinstance(answer, Exception):
            raise answer
        return policy.decide_response(
            answer.status,
            answer.headers,
            answer.body,
            attempt=attempt,
            first_attempt_at=first_attempt_at,
            now=now,
        )
    except Exception as e:
        return policy.decide_error(e, attempt=attempt, first_attempt_at=first_attempt_at, now=now)
