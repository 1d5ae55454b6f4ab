"""What waits, for how long and why: `/pending`, the oldest-waiting gauges, and the log
line about a key that holds a partition's commit watermark.

Invariants: this decides nothing about delivery (it only reads); nothing it reports
carries a payload or a secret, only destination names, deduplication keys, partitions,
offsets, ages and reasons; and the metrics thread never walks the live queues: the poll
thread builds an immutable `PendingReport` about once a second, the metrics thread reads
the latest one. A key's age is how long the key has waited to be sent (a newer event that
supersedes its waiting one keeps the key's age: incident.io is that stale for it).

Reasons: `limit` (the destination's rate limit, or a 429's retry-after), `hold` (the
destination is held after 401/403/404 or a redirect), `backoff` (a retry after a 5xx or
a transport error), `turn` (a slot is free: it waits behind other keys or for a
worker), `hand-over` (its partition is being released; the next owner sends it).
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from streamer.coalescing import URGENT
from streamer.destinations import Destinations
from streamer.handover import HandOver
from streamer.instrumentation import partition_attributes
from streamer.ledger import DeliveryLedger, Job, Partition
from streamer.telemetry import Telemetry

log = logging.getLogger(__name__)

Reason = Literal["limit", "hold", "backoff", "turn", "hand-over"]


@dataclass(frozen=True)
class PendingKey:
    """One waiting key: its event that is next to be sent, and why it waits."""

    destination: str
    deduplication_key: str
    partition: Partition
    offset: int
    since: float  # monotonic: when the key began to wait
    state: Literal["queued", "retrying"]
    reason: Reason
    urgent: bool  # ranked first by the destination's priority (firing critical)

    def as_json(self, now: float) -> dict[str, Any]:
        return {
            "deduplication_key": self.deduplication_key,
            "partition": f"{self.partition[0]}[{self.partition[1]}]",
            "offset": self.offset,
            "waiting_seconds": round(max(0.0, now - self.since), 3),
            "state": self.state,
            "reason": self.reason,
            "urgent": self.urgent,
        }


@dataclass(frozen=True)
class PendingReport:
    at: float = 0.0  # monotonic
    oldest: Mapping[str, tuple[PendingKey, ...]] = field(default_factory=dict)  # oldest first
    waiting: Mapping[str, int] = field(default_factory=dict)  # keys waiting, per destination
    held: Mapping[str, bool] = field(default_factory=dict)
    oldest_by_partition: Mapping[Partition, float] = field(default_factory=dict)  # since
    holders: Mapping[Partition, PendingKey] = field(default_factory=dict)

    def as_json(self, now: float) -> dict[str, Any]:
        """The `/pending` body."""
        return {
            "as_of_seconds_ago": round(max(0.0, now - self.at), 3),
            "destinations": {
                name: {
                    "waiting_keys": self.waiting.get(name, 0),
                    "held": self.held.get(name, False),
                    "oldest": [k.as_json(now) for k in keys],
                }
                for name, keys in self.oldest.items()
            },
            "watermark_holders": [
                {"destination": k.destination, **k.as_json(now)} for k in self.holders.values()
            ],
        }


def pending_report(
    now: float,
    waiting: Iterable[PendingKey],
    *,
    destinations: Mapping[str, bool],
    commit_offsets: Mapping[Partition, int],
    limit: int = 20,
) -> PendingReport:
    """`destinations`: every destination's name and whether it is held; `commit_offsets`:
    the commit offset of each partition that has unfinished events. A waiting key whose
    event sits at its partition's commit offset holds that partition's watermark."""
    by_destination: dict[str, list[PendingKey]] = {name: [] for name in destinations}
    oldest_by_partition: dict[Partition, float] = {}
    holders: dict[Partition, PendingKey] = {}
    for key in waiting:
        by_destination.setdefault(key.destination, []).append(key)
        since = oldest_by_partition.get(key.partition)
        if since is None or key.since < since:
            oldest_by_partition[key.partition] = key.since
        if commit_offsets.get(key.partition) == key.offset:
            holders[key.partition] = key
    return PendingReport(
        at=now,
        oldest={
            name: tuple(heapq.nsmallest(limit, keys, key=lambda k: (k.since, k.offset)))
            for name, keys in by_destination.items()
        },
        waiting={name: len(keys) for name, keys in by_destination.items()},
        held=dict(destinations),
        oldest_by_partition=oldest_by_partition,
        holders=holders,
    )


class WatermarkWatch:
    """Which key has held a partition's commit watermark for longer than `threshold`
    seconds: reported once, then again only when the key or its reason changes."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        # partition -> ((destination, deduplication key), holding since, reason reported)
        self._seen: dict[Partition, tuple[tuple[str, str], float, str | None]] = {}

    def observe(
        self, now: float, holders: Mapping[Partition, PendingKey]
    ) -> list[tuple[PendingKey, float]]:
        """The holders to report now, each with how long it has held its watermark."""
        for partition in [p for p in self._seen if p not in holders]:
            del self._seen[partition]
        report = []
        for partition, key in holders.items():
            who = (key.destination, key.deduplication_key)
            seen = self._seen.get(partition)
            if seen is None or seen[0] != who:
                self._seen[partition] = (who, now, None)
                seen = self._seen[partition]
            _, since, reported = seen
            if now - since >= self.threshold and reported != key.reason:
                self._seen[partition] = (who, since, key.reason)
                report.append((key, now - since))
        return report


_WHY: dict[str, str] = {
    "limit": "waiting for the destination's rate limit",
    "hold": "its destination is held (401/403/404 or a redirect)",
    "backoff": "retrying after failures (backoff)",
    "turn": "waiting for its turn",
    "hand-over": "its partition is being released",
}


class PendingView:
    """The latest report, rebuilt by the poll thread (`refresh`, about once a second), and
    what reads it from the metrics thread: the oldest-waiting gauges and `/pending`."""

    def __init__(self, telemetry: Telemetry, clock: Callable[[], float], threshold: float) -> None:
        self.clock = clock
        self.report = PendingReport(at=clock())
        self.watch = WatermarkWatch(threshold)
        telemetry.gauge("streamer.destination.oldest_waiting_age", self._by_destination)
        telemetry.gauge("streamer.partition.oldest_waiting_age", self._by_partition)
        telemetry.pending = lambda: self.report.as_json(self.clock())

    def due(self, now: float) -> bool:
        return now - self.report.at >= 1.0

    def refresh(
        self,
        now: float,
        destinations: Destinations,
        handover: HandOver,
        ledger: DeliveryLedger,
        retrying: Iterable[Job],
    ) -> None:
        """Rebuilds the report; logs a key that has held a watermark too long.
        `retrying`: the jobs waiting out a backoff (dead letters among them are skipped)."""
        self.report = pending_report(
            now,
            waiting_keys(now, destinations, handover, retrying),
            destinations={s.name: s.held_reason is not None for s in destinations},
            commit_offsets={
                p: o
                for p in ledger.partitions
                if ledger.unfinished(p) and (o := ledger.commit_offset(p)) is not None
            },
        )
        for key, held_for in self.watch.observe(now, self.report.holders):
            topic, number = key.partition
            log.warning(
                "%s[%d]: key %r of destination %s has held the commit watermark at offset "
                "%d for %.0f s: %s",
                topic,
                number,
                key.deduplication_key,
                key.destination,
                key.offset,
                held_for,
                _WHY[key.reason],
                extra={
                    "topic": topic,
                    "partition": number,
                    "offset": key.offset,
                    "destination": key.destination,
                    "deduplication_key": key.deduplication_key,
                    "reason": key.reason,
                },
            )

    def _by_destination(self) -> list[tuple[float, dict[str, Any]]]:
        report, now = self.report, self.clock()
        return [
            (max(0.0, now - keys[0].since) if keys else 0.0, {"destination": name})
            for name, keys in report.oldest.items()
        ]

    def _by_partition(self) -> list[tuple[float, dict[str, Any]]]:
        report, now = self.report, self.clock()
        return [
            (max(0.0, now - since), partition_attributes(p))
            for p, since in report.oldest_by_partition.items()
        ]


def waiting_keys(
    now: float, destinations: Destinations, handover: HandOver, retrying: Iterable[Job]
) -> Iterator[PendingKey]:
    """Every waiting key: queued for its destination, or waiting out a backoff."""
    for state in destinations:
        reason: Reason = "turn"
        if state.held_reason is not None:
            reason = "hold"
        elif state.earliest_start(now) > now:
            reason = "limit"
        for w in state.ready.waiting():
            job = w.job
            if job.key is None:
                continue
            yield PendingKey(
                state.name,
                job.key.deduplication_key,
                job.partition,
                job.offset,
                w.since,
                "queued",
                reason if handover.may_start(job.partition, now) else "hand-over",
                w.rank == URGENT,
            )
    for job in retrying:
        destination = getattr(job.work, "destination", None)
        if job.key is None or destination is None:
            continue  # a dead letter waiting to be written again
        place = getattr(job.work, "place", None)
        since = place.since if place is not None else None
        state = destinations[destination]
        yield PendingKey(
            state.name,
            job.key.deduplication_key,
            job.partition,
            job.offset,
            since if since is not None else now,
            "retrying",
            "backoff",
            state.rank(job) == URGENT,
        )
