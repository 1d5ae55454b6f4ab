"""Metrics and health, served together on one port for Prometheus and Kubernetes probes.

Metrics go through the OpenTelemetry SDK (names from the semantic conventions where they
exist: `messaging.client.consumed.messages`, `http.client.request.duration` with
`http.response.status_code`) and are exported with the SDK's Prometheus reader; when
OTEL_EXPORTER_OTLP_ENDPOINT is set, metrics and spans are also sent over OTLP/HTTP (the
exporters read the other OTEL_EXPORTER_OTLP_* and OTEL_METRIC_EXPORT_INTERVAL variables).
Each
`Telemetry` has its own MeterProvider and registry, so several engines in one process
(tests) never mix their counts. Standard OTEL_* resource variables apply
(OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES).

Health: `/livez` says the poll loop made progress within `max_poll_interval` (a stuck
loop is what Kubernetes should restart); `/readyz` says the configuration loaded and the
consumer joined its group. Neither depends on incident.io being up: an outage there is
handled by retries and holds, and restarting pods would not help.
The port itself, and the bounds a client is held to: `metrics_server.py`.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
)
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from streamer import __version__


@dataclass
class Health:
    max_poll_interval: float = 300.0
    clock: Callable[[], float] = time.monotonic
    last_progress: float = field(default=0.0)
    joined: bool = False

    def __post_init__(self) -> None:
        self.last_progress = self.clock()

    def progressed(self) -> None:
        self.last_progress = self.clock()

    def live(self) -> bool:
        return self.clock() - self.last_progress < self.max_poll_interval

    def ready(self) -> bool:
        return self.joined


def _resource() -> Resource:
    """service.name "streamer" unless OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES say."""
    attributes = {"service.version": __version__}
    named = os.environ.get("OTEL_SERVICE_NAME") or "service.name=" in os.environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    )
    if not named:
        attributes["service.name"] = "streamer"
    return Resource.create(attributes)


class Tally:
    """A counter cheap enough for every event: `add` updates a dict entry, and OpenTelemetry
    reads the totals when it collects (an observable counter). The SDK's own counter costs
    several microseconds per call in attribute cleaning and hashing (bench/delivery.py)."""

    def __init__(self, meter: Meter, name: str, description: str) -> None:
        self._totals: dict[tuple[tuple[str, Any], ...], int] = {}
        self._lock = threading.Lock()
        meter.create_observable_counter(name, callbacks=[self._observe], description=description)

    def add(self, amount: int, attributes: Mapping[str, Any] | None = None) -> None:
        key = tuple(sorted(attributes.items())) if attributes else ()
        with self._lock:
            self._totals[key] = self._totals.get(key, 0) + amount

    def total(self, where: Callable[[Mapping[str, Any]], bool] | None = None) -> int:
        """The sum over every attribute set (or those `where` says), for summaries."""
        with self._lock:
            totals = list(self._totals.items())
        return sum(n for key, n in totals if where is None or where(dict(key)))

    def _observe(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            totals = list(self._totals.items())
        return [Observation(total, dict(key)) for key, total in totals]


class Telemetry:
    """The service's instruments; the engine calls them, Prometheus scrapes them."""

    def __init__(
        self, *, health: Health | None = None, span_exporter: SpanExporter | None = None
    ) -> None:
        self.health = health or Health()
        otlp = bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
        # Traces: a span per event and per request, exported to the exporter given (tests)
        # and over OTLP when configured; otherwise recorded and dropped.
        self.tracer_provider = TracerProvider(resource=_resource())
        if span_exporter is not None:
            self.tracer_provider.add_span_processor(SimpleSpanProcessor(span_exporter))
        if otlp:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            self.tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        # Nothing exports spans: make none (a span per event and per request costs CPU).
        self.tracing = span_exporter is not None or otlp
        self.tracer: trace.Tracer = (
            self.tracer_provider.get_tracer("streamer", __version__)
            if self.tracing
            else trace.NoOpTracer()
        )
        self.registry = CollectorRegistry()
        readers: list[MetricReader] = [PrometheusMetricReader(registry=self.registry)]
        if otlp:  # the exporters read the other OTEL_EXPORTER_OTLP_* variables themselves
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                OTLPMetricExporter,
            )

            readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
        self.provider = MeterProvider(
            metric_readers=readers,
            resource=_resource(),
        )
        meter = self.provider.get_meter("streamer", __version__)
        self.consumed = Tally(
            meter, "messaging.client.consumed.messages", description="Messages fetched from Kafka"
        )
        self.routed = Tally(
            meter, "streamer.events.routed", description="Alert events made by the rules, per route"
        )
        self.dropped = Tally(
            meter, "streamer.events.dropped", description="Events the rules dropped on purpose"
        )
        self.muted = Tally(
            meter,
            "streamer.events.muted",
            description="Events a route did not send because a time interval muted it (or it "
            "was outside its active intervals), per route and interval",
        )
        self.silenced = Tally(
            meter,
            "streamer.events.silenced",
            description="Alert events a silence kept quiet before they were sent, per silence "
            "id and route (a resolve is never silenced)",
        )
        self.silenced_messages = Tally(
            meter,
            "streamer.messages.silenced",
            description="Messages that ended silenced: every alert event they made was kept "
            "quiet by a silence",
        )
        self.inhibited = Tally(
            meter,
            "streamer.events.inhibited",
            description="Firing alert events an inhibit rule kept quiet before they were sent "
            "(a firing source with the same equal labels), per rule and route",
        )
        self.dead_lettered = Tally(
            meter, "streamer.events.dead_lettered", description="Dead letters written, per reason"
        )
        self.attempts = Tally(
            meter,
            "streamer.delivery.attempts",
            description="Delivery attempts, per destination and outcome",
        )
        self.request_duration = meter.create_histogram(
            "http.client.request.duration",
            unit="s",
            description="Duration of requests to incident.io",
        )
        self.delivered = Tally(
            meter,
            "streamer.events.delivered",
            description="Alert events incident.io accepted (202), per destination",
        )
        self.retries = Tally(
            meter,
            "streamer.delivery.retries",
            description="Attempts that failed and are retried after a backoff (5xx, timeouts, "
            "connection errors), per destination",
        )
        self.config_reloads = Tally(
            meter,
            "streamer.config.reloads",
            description="Configuration reloads, by result (applied, rejected)",
        )
        self.superseded = Tally(
            meter,
            "streamer.events.superseded",
            description="Waiting events a newer event of their key replaced (never sent), "
            "per destination",
        )
        self.rate_limit_waits = Tally(
            meter,
            "streamer.rate_limit.waits",
            description="Deliveries held back by the rate limiter, per destination",
        )
        self.process_duration = meter.create_histogram(
            "messaging.process.duration",
            unit="s",
            description="From fetching an event to its outcome (delivered, dead-lettered, "
            "superseded, or revoked: let go unfinished); events the rules drop are counted in "
            "streamer.events.dropped, not timed",
        )
        self.rate_limit_wait = meter.create_histogram(
            "streamer.rate_limit.wait",
            unit="s",
            description="Time deliveries waited for the rate limiter, per destination",
        )
        self.latency = meter.create_histogram(
            "streamer.delivery.latency",
            unit="s",
            description="From the event's time to incident.io's 202",
        )
        self._gauges: dict[str, Callable[[], Iterable[tuple[float, dict[str, Any]]]]] = {}
        # `/pending`: the oldest waiting keys per destination, and why (streamer/pending.py)
        self.pending: Callable[[], Mapping[str, Any]] = dict
        for name, description in (
            ("streamer.events.in_flight", "Events fetched but not terminal"),
            ("streamer.partitions.paused", "Partitions paused (backpressure, registry outage)"),
            ("streamer.destinations.held", "Destinations held after 401/403/404"),
            ("streamer.commit.watermark_gap", "Per partition: fetched offsets not yet committable"),
            ("streamer.consumer.lag", "Per partition: messages behind the log end (librdkafka)"),
            (
                "streamer.destination.oldest_waiting_age",
                "Per destination: seconds its longest-waiting key has waited to be sent",
            ),
            (
                "streamer.partition.oldest_waiting_age",
                "Per partition: seconds its longest-waiting key has waited to be sent",
            ),
            (
                "streamer.routes.muted",
                "Per route: 1 while a time interval keeps it quiet (labels: interval, by)",
            ),
            ("streamer.silences.active", "Per silence id: 1 while it is active"),
            (
                "streamer.silences.readable",
                "0 while the silences topic cannot be read (silences read keep applying)",
            ),
            (
                "streamer.inhibition.sources_firing",
                "Per inhibit rule: its source alerts firing right now, as this replica reads "
                "the firing topic",
            ),
            (
                "streamer.inhibition.readable",
                "1 while the firing topic reads; 0: nothing is inhibited (fail open)",
            ),
            (
                "streamer.inhibition.held",
                "Inhibited targets held to be delivered once nothing inhibits them",
            ),
            (
                "streamer.destination.stalled_seconds",
                "Per destination: seconds its keys have waited with nothing started and no "
                "hold or 429 to explain it, once past the stall threshold (else 0); `reason` "
                "says why its oldest key waits",
            ),
        ):
            meter.create_observable_gauge(
                name, callbacks=[self._observer(name)], description=description
            )

    def _observer(self, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            source = self._gauges.get(name)
            return [Observation(v, a) for v, a in source()] if source else []

        return observe

    def gauge(
        self, name: str, source: Callable[[], Iterable[tuple[float, dict[str, Any]]]]
    ) -> None:
        """Where an observable gauge reads its values (the engine registers its state)."""
        self._gauges[name] = source

    def scrape(self) -> bytes:
        return bytes(generate_latest(self.registry))

    def shutdown(self) -> None:
        """Flushes what OTLP exporters still hold (at process exit)."""
        self.provider.shutdown()
        self.tracer_provider.shutdown()
