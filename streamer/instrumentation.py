"""What the engine reports: counters for the summary screen, spans, and gauges.

Nothing here decides anything. Spans exist only when something exports them (the
`process` span of a message ends when its last job is terminal, with the outcome); the
per-event counters are dict tallies (`telemetry.Tally`), so the firehose path costs a
dictionary update, not an SDK call.

Every message counts once (the demo's reconciliation adds them up): a message dropped by
the rules in the `dropped` tally only (never timed: the firehose path stays a dict
update), and every other one in the process-duration histogram, when its last job ends
(`delivered`, `dead-lettered`, `superseded`) or when its partition is let go unfinished
(`revoked`: its next owner reads it again).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from streamer.backpressure import Backpressure
from streamer.dead_letters import SourceMessage
from streamer.destinations import Destinations
from streamer.ledger import DeliveryLedger, Job, Partition
from streamer.telemetry import Telemetry

log = logging.getLogger(__name__)

_PROPAGATOR = TraceContextTextMapPropagator()


@dataclass(frozen=True)
class Stats:
    """The numbers of the summary screen and of tests: a snapshot read from the metrics
    (`stats_of`), so there is one counting path, not two."""

    consumed: int = 0
    routed: int = 0
    dropped: int = 0
    silenced: int = 0  # messages whose every alert event a silence kept quiet
    delivered: int = 0
    retried: int = 0
    rate_limited: int = 0  # 429s received
    rate_limit_waits: int = 0  # deliveries our own limiter held back
    dead_lettered: int = 0
    superseded: int = 0  # waiting events a newer one of their key replaced (never sent)
    held_destinations: int = 0
    pauses: int = 0  # times consumption paused at the in-flight cap
    committed: Mapping[Partition, int] = field(default_factory=dict)


def stats_of(
    telemetry: Telemetry,
    *,
    held_destinations: int = 0,
    pauses: int = 0,
    committed: Mapping[Partition, int] | None = None,
) -> Stats:
    """The counters as they stand now, plus what the cores know (holds, pauses, commits)."""
    return Stats(
        consumed=telemetry.consumed.total(),
        routed=telemetry.routed.total(),
        dropped=telemetry.dropped.total(),
        silenced=telemetry.silenced_messages.total(),
        delivered=telemetry.delivered.total(),
        retried=telemetry.retries.total(),
        rate_limited=telemetry.attempts.total(lambda a: a.get("http.response.status_code") == 429),
        rate_limit_waits=telemetry.rate_limit_waits.total(),
        dead_lettered=telemetry.dead_lettered.total(),
        superseded=telemetry.superseded.total(),
        held_destinations=held_destinations,
        pauses=pauses,
        committed=dict(committed or {}),
    )


def partition_attributes(p: Partition) -> dict[str, Any]:
    return {"messaging.destination.name": p[0], "messaging.destination.partition.id": str(p[1])}


class MessageSpans:
    """Each unfinished message's `process` span, and when it was fetched."""

    def __init__(self, telemetry: Telemetry, group_id: str, clock: Callable[[], float]) -> None:
        self.telemetry, self.group_id, self.clock = telemetry, group_id, clock
        # (partition, offset) -> (span, jobs not terminal yet, fetched at)
        self._open: dict[tuple[Partition, int], tuple[Span, int, float]] = {}

    def start(self, source: SourceMessage) -> Span:
        """The `process` span of one message, linked to the producer's trace if it sent one."""
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
                "messaging.consumer.group.name": self.group_id,
            },
        )

    def routed(self, partition: Partition, offset: int, span: Span, jobs: int) -> None:
        """A message with `jobs` jobs; with none it was dropped and is terminal now."""
        if jobs:
            self._open[(partition, offset)] = (span, jobs, self.clock())
        else:  # dropped events are counted, not timed: they take no time past routing
            span.set_attribute("streamer.outcome", "dropped")
            span.end()

    def parent(self, partition: Partition, offset: int) -> Span | None:
        entry = self._open.get((partition, offset))
        return entry[0] if entry else None

    def job_ended(self, partition: Partition, offset: int, outcome: str) -> None:
        if outcome == "revoked":
            # a fenced job, its partition let go: `let_go` ended its message already, and
            # the entry at its offset, if any, is a later read of it (the partition taken
            # back) that this job must not end
            return
        key = (partition, offset)
        entry = self._open.get(key)
        if entry is None:
            return
        span, left, fetched_at = entry
        if left > 1:
            self._open[key] = (span, left - 1, fetched_at)
            return
        del self._open[key]
        self._end(span, fetched_at, outcome)

    def let_go(self, partitions: Collection[Partition]) -> None:
        """The partitions left (revoked, lost, shut down): each of their messages not yet
        terminal ends here, once, as `revoked`: its next owner reads it again. Its jobs
        still out (an answer in flight, a superseded job whose stand-in was let go, a job
        queued behind its key) end nothing later. So every message that entered with jobs
        has exactly one outcome in the process-duration histogram, and nothing stays open
        for a partition that is gone."""
        gone = set(partitions)
        for key in [key for key in self._open if key[0] in gone]:
            span, _, fetched_at = self._open.pop(key)
            self._end(span, fetched_at, "revoked")

    def _end(self, span: Span, fetched_at: float, outcome: str) -> None:
        span.set_attribute("streamer.outcome", outcome)
        span.end()
        self.telemetry.process_duration.record(
            self.clock() - fetched_at, {"streamer.outcome": outcome}
        )


class ConsumerLag:
    """Each partition's consumer lag, from librdkafka's statistics (its `stats_cb`)."""

    def __init__(self) -> None:
        self.by_partition: dict[Partition, int] = {}

    def on_statistics(self, text: str) -> None:
        try:
            topics = json.loads(text).get("topics", {})
            lag = {}
            for topic, data in topics.items():
                for pid, partition in data.get("partitions", {}).items():
                    value = partition.get("consumer_lag", -1)
                    if pid != "-1" and isinstance(value, int) and value >= 0:
                        lag[(topic, int(pid))] = value
            self.by_partition = lag
        except (ValueError, AttributeError, TypeError, RecursionError):
            log.debug("unreadable librdkafka statistics ignored")


def register_gauges(
    telemetry: Telemetry,
    ledger: DeliveryLedger,
    backpressure: Backpressure,
    destinations: Destinations,
    lag: ConsumerLag,
) -> None:
    """The gauges read at collection: in flight, paused, held, watermark gaps, lag."""
    t = telemetry
    t.gauge("streamer.events.in_flight", lambda: [(ledger.unfinished(), {})])
    t.gauge(
        "streamer.partitions.paused",
        lambda: [
            (
                len(ledger.partitions) if backpressure.paused else backpressure.blocked_count(),
                {},
            )
        ],
    )
    t.gauge("streamer.destinations.held", lambda: [(destinations.held(), {})])

    def gaps() -> list[tuple[float, dict[str, Any]]]:
        out = []
        for p in ledger.partitions:
            next_offset, committable = ledger.next_offset(p), ledger.commit_offset(p)
            if next_offset is not None and committable is not None:
                out.append((float(next_offset - committable), partition_attributes(p)))
        return out

    t.gauge("streamer.commit.watermark_gap", gaps)
    t.gauge(
        "streamer.consumer.lag",
        lambda: [
            (float(value), partition_attributes(p))
            for p, value in lag.by_partition.items()
            if p in ledger.partitions
        ],
    )


def log_context(job: Job) -> dict[str, Any]:
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


def count_consumed(telemetry: Telemetry, consumed: Mapping[str, int], group: str) -> None:
    """One batch's fetched messages, per topic (added once per batch, not per message)."""
    for topic, count in consumed.items():
        telemetry.consumed.add(
            count,
            {
                "messaging.system": "kafka",
                "messaging.destination.name": topic,
                "messaging.consumer.group.name": group,
            },
        )
