"""The delivery engine: Kafka in, incident.io out, offsets committed only behind terminals.

One thread (the poll thread) owns all state: the `DeliveryLedger`, the per-destination
queues, the timers, the commits. Worker threads only POST to incident.io and hand the
answer back through a queue; the dead-letter producer's acknowledgements arrive on the
poll thread too (`producer.poll`). So every decision is made in one place, in order,
without locks, and the rebalance callbacks (which librdkafka runs inside `poll`) can
drain and commit synchronously.

A message's life: fetched -> decoded -> routed -> one job per delivery (or dead letter)
-> each job waits for its key (per-key order), its destination's hold and rate limit,
then a worker -> 202 (done), 429 (the limiter pauses, the job waits), 5xx/timeout
(backoff), 4xx payload error (dead letter), 401/403/404 (the destination is held) ->
terminal -> the ledger's watermark moves -> the offset is committed.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from pydantic import SecretStr

from streamer import logs
from streamer.config import Config, DeliverySettings, Destination
from streamer.dead_letters import DeadLetter, SourceMessage
from streamer.decoding import (
    DecodeError,
    EventDecoder,
    RegistryUnavailable,
    RegistryWriterSchemas,
    load_schema,
)
from streamer.failure_policy import (
    Accepted,
    Backoff,
    FailurePolicy,
    HoldDestination,
    RateLimited,
    Retry,
)
from streamer.failure_policy import DeadLetter as DeadLetterDecision
from streamer.incident_io import Answer, HelperProcessClient, IncidentIoClient, PostsAlertEvents
from streamer.ledger import DeliveryLedger, Job, OrderingKey, Partition
from streamer.rate_limit import RollingWindowLimiter, acquire, share_of
from streamer.reload import ConfigReloader
from streamer.telemetry import Telemetry

_PROPAGATOR = TraceContextTextMapPropagator()

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
    sent_at: float = 0.0  # monotonic, for request duration
    span: Span | None = None  # the current attempt's client span


@dataclass
class Stats:
    """Counters for the summary screen and tests (metrics proper come with telemetry)."""

    consumed: int = 0
    routed: int = 0
    dropped: int = 0
    delivered: int = 0
    retried: int = 0
    rate_limited: int = 0  # 429s received
    rate_limit_waits: int = 0  # deliveries our own limiter held back
    dead_lettered: int = 0
    held_destinations: int = 0
    pauses: int = 0  # times consumption paused at the in-flight cap
    committed: dict[Partition, int] = field(default_factory=dict)


class _DestinationState:
    def __init__(
        self,
        name: str,
        spec: Destination,
        token: SecretStr,
        key_limiter: RollingWindowLimiter,
        margin: float,
    ) -> None:
        self.name = name
        self.spec = spec
        self.token = token
        self.limiter = RollingWindowLimiter(spec.events_per_minute, 60.0, margin=margin)
        self.key_limiter = key_limiter
        self.ready: deque[Job] = deque()
        self.held_reason: str | None = None
        self.probe_at = 0.0
        self.probing = False


def registry_of(config: Config) -> RegistryWriterSchemas | None:
    """The schema registry client the configuration asks for, if any."""
    registry = config.file.schema_registry
    if registry is None:
        return None
    return RegistryWriterSchemas.connect(
        registry.url,
        **registry.properties,
        **{k: v.get_secret_value() for k, v in config.registry_secrets.items()},
    )


def decoders_of(config: Config, registry: RegistryWriterSchemas | None) -> dict[str, EventDecoder]:
    """A decoder per configured topic, by topic name."""
    decoders = {}
    for topic in config.file.topics:
        writer = (
            load_schema(config.path.parent / topic.writer_schema) if topic.writer_schema else None
        )
        decoders[topic.name] = EventDecoder(
            topic.format, config.reader_schema, registry=registry, writer_schema=writer
        )
    return decoders


def kafka_settings(config: Config) -> dict[str, Any]:
    """librdkafka settings shared by the consumer, the dead-letter producer and start-up
    checks; secrets come from the environment or files, never from the file itself."""
    return {
        "bootstrap.servers": config.file.kafka.bootstrap_servers,
        **config.file.kafka.properties,
        **{k: v.get_secret_value() for k, v in config.kafka_secrets.items()},
    }


def consumer_settings(config: Config) -> dict[str, Any]:
    """Defaults an operator may override (properties:), then what no-loss depends on."""
    return {
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
        **kafka_settings(config),
        "group.id": config.file.kafka.group_id,
        "enable.auto.commit": False,  # offsets move only behind terminal events
        "enable.auto.offset.store": False,
    }


class Engine:
    def __init__(
        self,
        config: Config,
        *,
        consumer: Consumer | None = None,
        producer: Producer | None = None,
        http: PostsAlertEvents | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.reloader = ConfigReloader(config)
        self.telemetry = telemetry or Telemetry()
        self.settings: DeliverySettings = config.file.delivery
        self.clock, self.wall_clock = clock, wall_clock
        # librdkafka's own log lines go through Python logging (JSON, secrets masked).
        kafka_log = logging.getLogger("librdkafka")
        self.consumer = consumer or Consumer(
            {
                "statistics.interval.ms": 5000,  # consumer lag per partition, for the metric
                **consumer_settings(config),
                "on_commit": self._on_commit,
                "logger": kafka_log,
                "stats_cb": self._on_statistics,
            }
        )
        self.producer = producer or Producer(
            {
                **kafka_settings(config),
                "enable.idempotence": True,
                "acks": "all",
                "logger": kafka_log,
            }
        )
        timeout = self.settings.request_timeout_seconds
        self.http: PostsAlertEvents = http or (
            HelperProcessClient(timeout=timeout, threads=self.settings.workers)
            if self.settings.http_process
            else IncidentIoClient(timeout=timeout)
        )
        self.policy = FailurePolicy(
            Backoff(self.settings.backoff_base_seconds, self.settings.backoff_cap_seconds),
            self.settings.max_retry_seconds,
        )
        self.ledger = DeliveryLedger()
        self.stats = Stats()
        self._workers = ThreadPoolExecutor(self.settings.workers, thread_name_prefix="deliver")
        self._busy_workers = 0
        self._results: queue.SimpleQueue[tuple[Job, Answer | Exception]] = queue.SimpleQueue()
        self._timers: list[tuple[float, int, Job]] = []
        self._sequence = itertools.count()
        self._destinations: dict[str, _DestinationState] = {}
        self._key_limiters: dict[str, RollingWindowLimiter] = {}
        self._decoders: dict[str, EventDecoder] = {}
        self._registry: RegistryWriterSchemas | None = None
        self._backpressure = False
        self._registry_blocked: dict[Partition, float] = {}  # partition -> resume at
        self._registry_attempts: dict[Partition, int] = {}
        # Partitions being let go, and when their last request may start: one started
        # later could still be in flight after the hand-over, racing the next owner's
        # deliveries of the same keys (a reorder).
        self._last_start: dict[Partition, float] = {}
        self._partition_counts: dict[str, int] = {}
        # Offsets the broker confirmed, and ones sent but not yet confirmed. A commit can
        # fail (mid-rebalance the generation changes under it): only a confirmed offset
        # counts, so a failed one is sent again even if nothing new became terminal.
        self._committed: dict[Partition, int] = {}
        self._committing: dict[Partition, int] = {}
        self._last_commit = clock()
        self._terminal_since_commit = 0
        self._last_reload_check = clock()
        # Per message: its `process` span and how many of its jobs are not terminal yet.
        # Per message: its `process` span, how many of its jobs are not terminal, and when
        # it was fetched (monotonic, for messaging.process.duration).
        self._spans: dict[tuple[Partition, int], tuple[Span, int, float]] = {}
        self._lag: dict[Partition, int] = {}  # from librdkafka's statistics
        self._apply_config(config)
        self._register_gauges()

    # -- configuration ---------------------------------------------------------------------

    def _apply_config(self, config: Config) -> None:
        logs.MASK.add(
            s.get_secret_value()
            for s in (
                *config.tokens.values(),
                *config.kafka_secrets.values(),
                *config.registry_secrets.values(),
            )
        )
        if self._registry is None:
            self._registry = registry_of(config)
        # Topics the new file no longer names keep their decoders: the subscription is set
        # at start (changing topics needs a restart), so their messages still arrive.
        self._decoders.update(decoders_of(config, self._registry))
        for name, spec in config.file.destinations.items():
            token = config.tokens[name]
            key = token.get_secret_value()  # limiter per API key; the dict never leaves here
            key_limiter = self._key_limiters.setdefault(
                key,
                RollingWindowLimiter(
                    self.settings.requests_per_minute_per_api_key,
                    60.0,
                    margin=self.settings.rate_limit_margin_seconds,
                ),
            )
            state = self._destinations.get(name)
            if state is None:
                self._destinations[name] = _DestinationState(
                    name, spec, token, key_limiter, self.settings.rate_limit_margin_seconds
                )
            else:
                state.spec, state.token, state.key_limiter = spec, token, key_limiter
        self._update_shares()

    def _register_gauges(self) -> None:
        t = self.telemetry
        t.gauge("streamer.events.in_flight", lambda: [(self.ledger.unfinished(), {})])
        t.gauge(
            "streamer.partitions.paused",
            lambda: [
                (
                    len(self.ledger.partitions)
                    if self._backpressure
                    else len(self._registry_blocked),
                    {},
                )
            ],
        )
        t.gauge("streamer.destinations.held", lambda: [(self.stats.held_destinations, {})])

        def gaps() -> list[tuple[float, dict[str, Any]]]:
            out = []
            for p in self.ledger.partitions:
                next_offset, committable = self.ledger.next_offset(p), self.ledger.commit_offset(p)
                if next_offset is not None and committable is not None:
                    attributes = {
                        "messaging.destination.name": p[0],
                        "messaging.destination.partition.id": str(p[1]),
                    }
                    out.append((float(next_offset - committable), attributes))
            return out

        t.gauge("streamer.commit.watermark_gap", gaps)
        t.gauge(
            "streamer.consumer.lag",
            lambda: [
                (
                    float(lag),
                    {
                        "messaging.destination.name": p[0],
                        "messaging.destination.partition.id": str(p[1]),
                    },
                )
                for p, lag in self._lag.items()
                if p in self.ledger.partitions
            ],
        )

    @property
    def config(self) -> Config:
        return self.reloader.current

    # -- the loop --------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Consumes until `stop` is set, then drains within the grace period and commits."""
        self.http.start()  # before the first event, so that it does not wait for it
        topics = [t.name for t in self.config.file.topics]
        self.consumer.subscribe(
            topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        try:
            while not stop.is_set():
                self._step(consume=True)
        finally:
            self._shutdown()

    def _step(self, *, consume: bool) -> None:
        self.telemetry.health.progressed()
        # While requests are in flight, answers arrive on the results queue: wait there
        # (woken at once by an answer) instead of inside consume(), which nothing wakes.
        timeout = 0.01 if self._timers else 0.1
        room = self.settings.max_unfinished - self.ledger.unfinished()
        fetched = 0
        if consume and room > 0:
            # Never fetch past the cap: a batch larger than the room left would overshoot
            # it before the pause below takes effect.
            # consume(n, timeout) waits for a full batch or the timeout: a lone message would
            # wait the whole timeout. poll() returns as soon as one arrives; then take
            # whatever else is already fetched without waiting.
            first = self.consumer.poll(0 if self._busy_workers else timeout)
            batch = [] if first is None else [first]
            if first is not None and room > 1:
                batch += self.consumer.consume(min(500, room - 1), 0)
            for message in batch:
                self._ingest(message)
            fetched = len(batch)
        elif consume:
            # At the cap: still serve rebalance callbacks. Partitions are paused, but one
            # just assigned may hand over a message; it is ingested, never dropped.
            handed_over = self.consumer.poll(0)
            if handed_over is not None:
                self._ingest(handed_over)
        if not fetched:
            self._collect_results(wait=timeout if self._busy_workers else 0.0)
            if not self._busy_workers and (not consume or room <= 0):
                time.sleep(timeout / 2)
        self.producer.poll(0)
        self._collect_results()
        self._fire_timers()
        self._dispatch()
        self._apply_backpressure()
        self._commit_if_due()
        now = self.clock()
        if now - self._last_reload_check >= self.settings.reload_interval_seconds:
            self._last_reload_check = now
            if self.reloader.check():
                self._apply_config(self.reloader.current)

    # -- in: messages -> jobs --------------------------------------------------------------

    def _ingest(self, message: Message) -> None:
        error = message.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer error: %s", error)
            return
        source = _source_message(message)
        if source is None:
            return
        partition: Partition = (source.topic, source.partition)
        if partition in self._registry_blocked or partition not in self.ledger.partitions:
            return  # re-fetched after the seek that unblocks it / no longer ours
        seen_up_to = self.ledger.next_offset(partition)
        if seen_up_to is not None and source.offset < seen_up_to:
            return  # fetched twice (a prefetch around a seek): it is already accounted for
        self.stats.consumed += 1
        self.telemetry.consumed.add(
            1,
            {
                "messaging.system": "kafka",
                "messaging.destination.name": source.topic,
                "messaging.consumer.group.name": self.config.file.kafka.group_id,
            },
        )
        span = self._process_span(source)
        works: list[tuple[OrderingKey | None, Any]] = []
        try:
            event = self._decoders[source.topic].decode(source.value, source.headers)
        except DecodeError as e:
            works.append((None, DeadLetter(source, f"decode:{e.reason}", e.detail)))
        except RegistryUnavailable as e:
            self._block_for_registry(partition, source.offset, str(e))
            span.set_attribute("streamer.outcome", "registry-unavailable")
            span.end()
            return
        else:
            self._registry_attempts.pop(partition, None)
            decision = self.config.rules.evaluate(event)
            event_time = event.get("event_time")
            event_epoch = event_time.timestamp() if isinstance(event_time, datetime) else None
            for d in decision.deliveries:
                body = d.payload.model_dump(exclude_none=True)
                key = OrderingKey(d.destination, d.payload.deduplication_key or "")
                works.append(
                    (key, Delivery(source, d.route, d.destination, body, event_time=event_epoch))
                )
                self.telemetry.routed.add(1, {"route": d.route, "destination": d.destination})
            for f in decision.failures:
                works.append(
                    (None, DeadLetter(source, "template", f.reason, f.route, f.destination))
                )
            self.stats.routed += len(decision.deliveries)
            if decision.dropped:
                self.stats.dropped += 1
                self.telemetry.dropped.add(1)
        if works:
            self._spans[(partition, source.offset)] = (span, len(works), self.clock())
        else:
            span.set_attribute("streamer.outcome", "dropped")
            span.end()
            self.telemetry.process_duration.record(0.0, {"streamer.outcome": "dropped"})
        for job in self.ledger.add(partition, source.offset, works):
            self._activate(job)
        if not works:
            self._terminal_since_commit += 1

    def _process_span(self, source: SourceMessage) -> Span:
        """The `process` span of one event, linked to the producer's trace if it sent one."""
        if not self.telemetry.tracing:
            return trace.INVALID_SPAN
        carrier = {k: v.decode("latin-1") for k, v in source.headers if v is not None}
        producer_context = trace.get_current_span(_PROPAGATOR.extract(carrier)).get_span_context()
        links = [Link(producer_context)] if producer_context.is_valid else []
        return self.telemetry.tracer.start_span(
            f"process {source.topic}",
            kind=SpanKind.CONSUMER,
            links=links,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "process",
                "messaging.destination.name": source.topic,
                "messaging.destination.partition.id": str(source.partition),
                "messaging.kafka.offset": source.offset,
                "messaging.consumer.group.name": self.config.file.kafka.group_id,
            },
        )

    def _activate(self, job: Job) -> None:
        """A job whose key is free: queue it for its destination, or dead-letter it."""
        if isinstance(job.work, DeadLetter):
            self._produce_dead_letter(job)
        else:
            self._destinations[job.work.destination].ready.append(job)

    def _block_for_registry(self, partition: Partition, offset: int, reason: str) -> None:
        """The registry is down: not the message's fault. Pause, seek back, retry later."""
        attempt = self._registry_attempts.get(partition, 0) + 1  # grows while it stays down
        self._registry_attempts[partition] = attempt
        delay = self.policy.backoff.delay(attempt) + 1.0
        self._registry_blocked[partition] = self.clock() + delay
        tp = TopicPartition(partition[0], partition[1], offset)
        self.consumer.pause([tp])
        self.consumer.seek(tp)
        log.warning(
            "schema registry unavailable; %s[%d] paused at offset %d for %.1f s: %s",
            partition[0],
            partition[1],
            offset,
            delay,
            reason,
            extra={"topic": partition[0], "partition": partition[1], "offset": offset},
        )

    # -- out: jobs -> incident.io ----------------------------------------------------------

    def _dispatch(self) -> None:
        now = self.clock()
        for state in self._destinations.values():
            while state.ready and self._busy_workers < self.settings.workers:
                job = state.ready[0]
                if not self.ledger.owns(job):  # its partition was revoked: let the key go
                    state.ready.popleft()
                    self._release(job)
                    continue
                if now >= self._last_start.get(job.partition, math.inf):
                    break  # too late to start: it is left to the next owner
                if state.held_reason is not None:
                    if state.probing or now < state.probe_at:
                        break
                    state.probing = True  # one event probes a held destination
                if acquire([state.limiter, state.key_limiter], now) is not None:
                    state.probing = False
                    if not job.work.waited_for_rate_limit:
                        job.work.waited_for_rate_limit = True
                        job.work.waiting_since = now
                        self.stats.rate_limit_waits += 1
                        self.telemetry.rate_limit_waits.add(1, {"destination": state.name})
                    break
                state.ready.popleft()
                self._send(job, state)

    def _send(self, job: Job, state: _DestinationState) -> None:
        delivery: Delivery = job.work
        if delivery.first_attempt_at is None:
            delivery.first_attempt_at = self.wall_clock()
        delivery.sent_at = self.clock()
        if delivery.waiting_since is not None:
            self.telemetry.rate_limit_wait.record(
                delivery.sent_at - delivery.waiting_since, {"destination": state.name}
            )
            delivery.waiting_since = None
        parent = self._spans.get((job.partition, job.offset))
        if self.telemetry.tracing:
            delivery.span = self.telemetry.tracer.start_span(
                "POST",
                kind=SpanKind.CLIENT,
                context=trace.set_span_in_context(parent[0]) if parent else None,
                attributes={
                    "http.request.method": "POST",
                    "server.address": state.spec.url,
                    "streamer.destination": state.name,
                },
            )
        self._busy_workers += 1
        spec, token, payload = state.spec, state.token, delivery.payload

        def post() -> None:
            try:
                answer: Answer | Exception = self.http.post_alert_event(
                    spec.url, spec.alert_source_config_id, token, payload
                )
            except (httpx.TransportError, httpx.InvalidURL) as e:
                answer = e
            except Exception as e:  # never lose a result: the poll thread decides
                answer = e
            self._results.put((job, answer))

        self._workers.submit(post)

    def _collect_results(self, wait: float = 0.0) -> None:
        """Handles every answer that arrived; waits up to `wait` s for the first one."""
        while True:
            try:
                job, answer = (
                    self._results.get(timeout=wait) if wait else self._results.get_nowait()
                )
            except queue.Empty:
                return
            wait = 0.0
            self._busy_workers -= 1
            self._on_answer(job, answer)

    def _on_answer(self, job: Job, answer: Answer | Exception) -> None:
        delivery: Delivery = job.work
        state = self._destinations[delivery.destination]
        was_probe, state.probing = state.probing, False
        if not self.ledger.owns(job):  # revoked meanwhile: the new owner delivers it
            if delivery.span is not None:
                delivery.span.set_attribute("streamer.outcome", "revoked")
                delivery.span.end()
                delivery.span = None
            self._release(job)
            return
        now_wall = self.wall_clock()
        first = delivery.first_attempt_at or now_wall
        outcome: dict[str, str | int] = {"destination": state.name, "http.request.method": "POST"}
        if isinstance(answer, Exception):
            outcome["error.type"] = type(answer).__name__
        else:
            outcome["http.response.status_code"] = answer.status
        self.telemetry.attempts.add(1, outcome)
        if delivery.span is not None:
            if isinstance(answer, Exception):
                delivery.span.set_attribute("error.type", type(answer).__name__)
                delivery.span.set_status(Status(StatusCode.ERROR))
            else:
                delivery.span.set_attribute("http.response.status_code", answer.status)
                if answer.status >= 400:
                    delivery.span.set_status(Status(StatusCode.ERROR))
            delivery.span.end()
            delivery.span = None
        self.telemetry.request_duration.record(self.clock() - delivery.sent_at, outcome)
        if isinstance(answer, Exception):
            decision = self.policy.decide_error(
                answer, attempt=job.attempts, first_attempt_at=first, now=now_wall
            )
        else:
            decision = self.policy.decide_response(
                answer.status,
                answer.headers,
                answer.body,
                attempt=job.attempts,
                first_attempt_at=first,
                now=now_wall,
            )
        answered = not isinstance(decision, HoldDestination) and (
            was_probe or isinstance(decision, Accepted)
        )
        if state.held_reason is not None and answered:
            log.info(
                "destination %s released: it answers again",
                state.name,
                extra={"destination": state.name},
            )
            state.held_reason = None
            self.stats.held_destinations -= 1
        if isinstance(decision, Accepted):
            self.stats.delivered += 1
            log.debug(
                "delivered to %s",
                state.name,
                extra={**_context(job), "request_id": decision.request_id},
            )
            if delivery.event_time is not None:
                self.telemetry.latency.record(
                    max(0.0, now_wall - delivery.event_time), {"destination": state.name}
                )
            self._finish(job)
        elif isinstance(decision, RateLimited):
            self.stats.rate_limited += 1
            state.limiter.pause_until(self.clock() + max(0.0, decision.retry_at - now_wall))
            state.ready.appendleft(job)  # not a failure: no attempt counted
        elif isinstance(decision, Retry):
            job.attempts += 1
            self.stats.retried += 1
            log.warning(
                "delivery to %s failed (%s); retry %d in %.1f s",
                state.name,
                decision.reason,
                job.attempts,
                decision.delay,
                extra={
                    **_context(job),
                    "request_id": decision.request_id,
                    "attempts": job.attempts,
                },
            )
            self._schedule(self.clock() + decision.delay, job)
        elif isinstance(decision, HoldDestination):
            job.attempts += 1
            if state.held_reason is None:
                self.stats.held_destinations += 1
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
            state.held_reason = decision.reason
            state.probe_at = self.clock() + self.settings.hold_retry_seconds
            state.ready.appendleft(job)
        elif isinstance(decision, DeadLetterDecision):
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
            self._produce_dead_letter(job)

    def _schedule(self, due: float, job: Job) -> None:
        heapq.heappush(self._timers, (due, next(self._sequence), job))

    def _fire_timers(self) -> None:
        now = self.clock()
        while self._timers and self._timers[0][0] <= now:
            _, _, job = heapq.heappop(self._timers)
            if not self.ledger.owns(job):
                self._release(job)
            elif isinstance(job.work, DeadLetter):
                self._produce_dead_letter(job)
            else:
                self._destinations[job.work.destination].ready.append(job)
        for partition, resume_at in list(self._registry_blocked.items()):
            if resume_at <= now:
                del self._registry_blocked[partition]
                if not self._backpressure:
                    self.consumer.resume([TopicPartition(*partition)])

    # -- dead letters ----------------------------------------------------------------------

    def _produce_dead_letter(self, job: Job) -> None:
        letter: DeadLetter = job.work
        message = letter.message

        def acknowledged(error: KafkaError | None, _: Message) -> None:
            if error is None:
                self.stats.dead_lettered += 1
                self.telemetry.dead_lettered.add(1, {"reason": letter.reason})
                log.error(
                    "dead-lettered %s[%d]@%d: %s %s",
                    message.topic,
                    message.partition,
                    message.offset,
                    letter.reason,
                    letter.detail[:500],
                    extra={
                        **_context(job),
                        "reason": letter.reason,
                        "request_id": letter.request_id,
                        "http_status": letter.http_status,
                        "attempts": letter.attempts,
                    },
                )
                self._finish(job)
            else:  # not terminal until the dead letter is safely written
                log.warning(
                    "dead letter for %s[%d]@%d not written (%s); retrying",
                    message.topic,
                    message.partition,
                    message.offset,
                    error,
                )
                self._schedule(self.clock() + 1.0, job)

        headers: list[tuple[str, str | bytes | None]] = list(letter.headers())
        try:
            self.producer.produce(
                self.config.file.kafka.dead_letter_topic,
                value=message.value,
                key=message.key,
                headers=headers,
                on_delivery=acknowledged,
            )
        except BufferError:
            self._schedule(self.clock() + 0.5, job)

    # -- terminal states and commits -------------------------------------------------------

    def _end_span(self, job: Job, outcome: str) -> None:
        key = (job.partition, job.offset)
        entry = self._spans.get(key)
        if entry is None:
            return
        span, left, fetched_at = entry
        if left > 1:
            self._spans[key] = (span, left - 1, fetched_at)
            return
        del self._spans[key]
        span.set_attribute("streamer.outcome", outcome)
        span.end()
        self.telemetry.process_duration.record(
            self.clock() - fetched_at, {"streamer.outcome": outcome}
        )

    def _finish(self, job: Job) -> None:
        self._end_span(job, "dead-lettered" if isinstance(job.work, DeadLetter) else "delivered")
        self._terminal_since_commit += 1
        for next_job in self.ledger.finish(job):
            self._activate(next_job)

    def _release(self, job: Job) -> None:
        """A fenced job: free its key without touching any watermark."""
        self._end_span(job, "revoked")
        for next_job in self.ledger.finish(job):
            self._activate(next_job)

    def _commit_if_due(
        self, *, force: bool = False, partitions: Iterable[Partition] | None = None
    ) -> None:
        now = self.clock()
        due = (
            now - self._last_commit >= self.settings.commit_interval_seconds
            or self._terminal_since_commit >= self.settings.commit_every_messages
        )
        if not (force or due):
            return
        self._last_commit, self._terminal_since_commit = now, 0
        wanted = set(partitions) if partitions is not None else None
        offsets = [
            TopicPartition(p[0], p[1], o)
            for p, o in self.ledger.commit_offsets().items()
            if (wanted is None or p in wanted)
            and o != self._committed.get(p)
            and (force or o != self._committing.get(p))
        ]
        if not offsets:
            return
        try:
            if force:  # on revoke and shutdown: wait for the broker's answer
                self._on_commit(None, self.consumer.commit(offsets=offsets, asynchronous=False))
            else:
                for tp in offsets:
                    self._committing[(tp.topic, tp.partition)] = tp.offset
                self.consumer.commit(offsets=offsets, asynchronous=True)
        except Exception as e:  # e.g. no coordinator mid-rebalance: the next commit retries
            for tp in offsets:
                self._committing.pop((tp.topic, tp.partition), None)
            log.warning("commit failed, will retry: %s", e)

    def _on_statistics(self, text: str) -> None:
        """librdkafka's statistics (JSON): keep each assigned partition's consumer lag."""
        try:
            topics = json.loads(text).get("topics", {})
            lag = {}
            for topic, data in topics.items():
                for pid, partition in data.get("partitions", {}).items():
                    value = partition.get("consumer_lag", -1)
                    if pid != "-1" and isinstance(value, int) and value >= 0:
                        lag[(topic, int(pid))] = value
            self._lag = lag
        except (ValueError, AttributeError, TypeError):
            log.debug("unreadable librdkafka statistics ignored")

    def _on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """The broker's answer to a commit (librdkafka calls this on the poll thread)."""
        failed = []
        for tp in partitions:
            partition = (tp.topic, tp.partition)
            if self._committing.get(partition) == tp.offset:
                del self._committing[partition]
            if error is not None or tp.error is not None:
                failed.append(f"{tp.topic}[{tp.partition}]@{tp.offset}")
            elif partition in self.ledger.partitions:
                self._committed[partition] = tp.offset
                self.stats.committed[partition] = tp.offset
        if failed:
            log.warning(
                "commit of %s failed (%s); it is sent again at the next commit",
                ", ".join(failed),
                error or "per-partition errors",
            )

    # -- backpressure ----------------------------------------------------------------------

    def _apply_backpressure(self) -> None:
        unfinished = self.ledger.unfinished()
        cap = self.settings.max_unfinished
        assigned = [TopicPartition(*p) for p in self.ledger.partitions]
        if not self._backpressure and unfinished >= cap:
            self._backpressure = True
            self.stats.pauses += 1
            self.consumer.pause(assigned)
            log.info("%d events in flight (cap %d): consumption paused", unfinished, cap)
        elif self._backpressure and unfinished <= cap * 0.8:
            self._backpressure = False
            self._resume(p for p in self.ledger.partitions if p not in self._registry_blocked)
            log.info("%d events in flight: consumption resumed", unfinished)

    def _resume(self, partitions: Iterable[Partition]) -> None:
        # librdkafka drops prefetched messages on pause: seek to what we have not seen.
        tps = []
        for p in partitions:
            next_offset = self.ledger.next_offset(p)
            tp = TopicPartition(p[0], p[1], next_offset if next_offset is not None else -1001)
            if next_offset is not None:
                self.consumer.seek(tp)
            tps.append(tp)
        if tps:
            self.consumer.resume(tps)

    # -- rebalance -------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.telemetry.health.joined = True  # an empty assignment is a joined member too
        for tp in partitions:
            self.ledger.assign((tp.topic, tp.partition))
        log.info("assigned %s", _names(partitions), extra={"partitions": _names(partitions)})
        self._update_shares()
        if self._backpressure:
            consumer.pause(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        deadline = self.clock() + self.settings.revoke_drain_seconds
        for p in revoked:
            self._last_start[p] = deadline - self.settings.request_timeout_seconds
        # Drain: keep serving everything (other partitions too) until the revoked ones
        # are terminal or the deadline passes; then commit what is terminal and let go.
        while (
            any(self.ledger.unfinished(p) for p in revoked)
            and self.clock() < deadline
            and self._can_progress()
        ):
            self._step(consume=False)
        self._commit_if_due(force=True, partitions=revoked)
        left = sum(self.ledger.unfinished(p) for p in revoked)
        for p in revoked:
            self.ledger.revoke(p)
            self._committed.pop(p, None)
            self._committing.pop(p, None)
            self._registry_blocked.pop(p, None)
        self._drop_queued(revoked)
        for p in revoked:
            self._last_start.pop(p, None)
        log.info("revoked %s (%d events left to the next owner)", _names(partitions), left)
        self._update_shares()

    def _can_progress(self) -> bool:
        """While draining: could anything still finish or start before its cut-off?

        No when nothing is in flight (requests, dead-letter produces) and every waiting
        request could start only after its partition's last start (rate limits, a held
        destination, a retry's backoff): waiting out the drain would change nothing, so
        the drain ends early and those events go to the next owner.
        """
        if self._busy_workers or len(self.producer):
            return True
        now = self.clock()
        for state in self._destinations.values():
            if not state.ready:
                continue
            start = max(state.limiter.next_start(now), state.key_limiter.next_start(now))
            if state.held_reason is not None:  # (a probe in flight is a busy worker)
                start = max(start, state.probe_at)
            if start < self._last_start.get(state.ready[0].partition, math.inf):
                return True
        return any(
            due < self._last_start.get(job.partition, math.inf) for due, _, job in self._timers
        )

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        lost = {(tp.topic, tp.partition) for tp in partitions}
        for p in lost:  # another member owns them now: commit nothing
            self.ledger.lose(p)
            self._committed.pop(p, None)
            self._committing.pop(p, None)
            self._registry_blocked.pop(p, None)
        self._drop_queued(lost)
        log.warning(
            "lost %s: nothing committed for them",
            _names(partitions),
            extra={"partitions": _names(partitions)},
        )
        self._update_shares()

    def _drop_queued(self, partitions: set[Partition]) -> None:
        # Split first, release after: releasing a job activates the next job of its key,
        # which may be appended to the very queue being split.
        dropped: list[Job] = []
        for state in self._destinations.values():
            dropped += [job for job in state.ready if job.partition in partitions]
            state.ready = deque(job for job in state.ready if job.partition not in partitions)
        for job in dropped:
            self._release(job)

    def _update_shares(self) -> None:
        share = self.settings.rate_limit_share
        owned = len(self.ledger.partitions)
        if share == "partitions":
            total = self._total_partitions()
            limit_of: Callable[[int], int] = lambda limit: share_of(limit, owned, total)  # noqa: E731
        else:
            limit_of = lambda limit: max(1, int(limit * float(share)))  # noqa: E731
        for state in self._destinations.values():
            state.limiter.set_limit(limit_of(state.spec.events_per_minute))
        for limiter in self._key_limiters.values():
            limiter.set_limit(limit_of(self.settings.requests_per_minute_per_api_key))

    def _total_partitions(self) -> int:
        total = 0
        for topic in self.config.file.topics:
            if topic.name not in self._partition_counts:
                try:
                    metadata = self.consumer.list_topics(topic.name, timeout=5)
                    count = len(metadata.topics[topic.name].partitions)
                except Exception:
                    count = 0
                if count:
                    self._partition_counts[topic.name] = count
            total += self._partition_counts.get(topic.name, 0)
        return total or max(1, len(self.ledger.partitions))

    # -- shutdown --------------------------------------------------------------------------

    def _shutdown(self) -> None:
        """Stop fetching, drain within the grace period, commit, leave the group."""
        deadline = self.clock() + self.settings.shutdown_grace_seconds
        for p in self.ledger.partitions:
            self._last_start[p] = deadline - self.settings.request_timeout_seconds
        try:
            self.consumer.pause([TopicPartition(*p) for p in self.ledger.partitions])
            while self.ledger.unfinished() and self.clock() < deadline and self._can_progress():
                self._step(consume=False)
            self._commit_if_due(force=True)
            left = self.ledger.unfinished()
            if left:
                log.warning(
                    "shutdown: %d events not terminal; their requests could not start "
                    "before the %.0f s grace ends (rate limits, retries, a held destination "
                    "or a slow incident.io): the next owner delivers them",
                    left,
                    self.settings.shutdown_grace_seconds,
                )
        finally:
            self.consumer.close()  # leaves the group; on_revoke has nothing left to drain
            self.producer.flush(5)
            self._workers.shutdown(wait=False, cancel_futures=True)
            self.http.close()


def _context(job: Job) -> dict[str, Any]:
    """Where a job's event came from and where it goes, for log lines."""
    context: dict[str, Any] = {
        "topic": job.partition[0],
        "partition": job.partition[1],
        "offset": job.offset,
    }
    if job.key is not None:
        context["destination"] = job.key.destination
        context["deduplication_key"] = job.key.deduplication_key
    route = getattr(job.work, "route", None)
    if route is not None:
        context["route"] = route
    return context


def _source_message(message: Message) -> SourceMessage | None:
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    if topic is None or partition is None or offset is None:
        return None
    raw = message.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    headers = tuple((name, _bytes(value)) for name, value in pairs)
    return SourceMessage(
        topic, partition, offset, _bytes(message.key()), _bytes(message.value()), headers
    )


def _bytes(value: str | bytes | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


def _names(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "nothing"
