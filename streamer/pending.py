"""What waits, for how long and why: `/pending`, the oldest-waiting gauges, and the log
line about a key that holds a partition's commit watermark.

Invariants: this decides nothing about delivery (it only reads); nothing it reports
carries a payload or a secret, only destination names, deduplication keys, partitions,
offsets, ages, reasons, counts, limits and other members' writer ids; and the metrics
thread never walks the live queues: the poll thread builds an immutable `PendingReport`
(`PendingView.due`: about once a second while something reads it, every `QUIET_SECONDS`
while nothing does), the metrics thread reads the latest one. A key's age is how long the
key has waited to be sent (a newer event that supersedes its waiting one keeps the key's
age: incident.io is that stale for it).

Reasons (`liveness.py` says which one holds a key, in words): `turn`, `window`, `share`,
`ceiling` (naming the other members that fill it), `note`, `api-key`, `hold`, `paused` (a
429), `backoff`, `hand-over`. Each destination's entry also says why its oldest key waits
and, when it is stalled (waited past a threshold with nothing started and no hold or 429
to explain it), for how long: logged once, and the gauge
`streamer.destination.stalled_seconds` (the alert StreamerDeliveryStalled).
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from streamer.coalescing import URGENT
from streamer.destinations import Destinations, DestinationState
from streamer.handover import HandOver
from streamer.instrumentation import partition_attributes
from streamer.ledger import DeliveryLedger, Job, Partition
from streamer.liveness import (
    KeyLimit,
    Reason,
    StallWatch,
    Wait,
    explain,
    partition_wait,
    stalled_since,
)
from streamer.telemetry import Telemetry

log = logging.getLogger(__name__)

KEYS_PER_SECOND = 100  # waiting keys a refresh walks per second of its interval, at most
# While nothing reads the report (no scrape, no `/pending`), it serves the watermark log
# line and a stall's warning only: it is rebuilt walking at most this many keys a second,
# and at least every QUIET_SECONDS (those lines are then up to that late). A read asks for
# the reading pace from the poll thread's next wakeup on: the next read (a scrape later)
# sees what waits now, and hundreds of keys waiting with nobody looking cost little.
QUIET_KEYS_PER_SECOND = 20
QUIET_SECONDS = 30.0


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
    detail: str = ""  # the reason in words (liveness.Wait.detail)

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
    why: Mapping[str, Wait] = field(default_factory=dict)  # its oldest key's wait
    stalled: Mapping[str, tuple[float, Wait]] = field(default_factory=dict)  # since, why

    def stalled_for(self, name: str, now: float) -> float:
        """Seconds `name` has been stalled (nothing started, no hold or 429), or 0."""
        stall = self.stalled.get(name)
        return round(max(0.0, now - stall[0]), 3) if stall else 0.0

    def as_json(self, now: float) -> dict[str, Any]:
        """The `/pending` body."""
        return {
            "as_of_seconds_ago": round(max(0.0, now - self.at), 3),
            "destinations": {
                name: {
                    "waiting_keys": self.waiting.get(name, 0),
                    "held": self.held.get(name, False),
                    **({"why": why.as_json(now)} if (why := self.why.get(name)) else {}),
                    "stalled_seconds": self.stalled_for(name, now),
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
    why: Mapping[str, Wait] | None = None,
    stalled: Mapping[str, tuple[float, Wait]] | None = None,
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
        why=dict(why or {}),
        stalled=dict(stalled or {}),
    )


# What a watermark holder is reported again for: a change between these, not between the
# limits that take turns binding (a window, a share, the ceiling, a note's tail) at each look.
_KIND: Mapping[str, str] = {
    "window": "limit",
    "share": "limit",
    "ceiling": "limit",
    "note": "limit",
    "api-key": "limit",
    "paused": "limit",
}


class WatermarkWatch:
    """Which key has held a partition's commit watermark for longer than `threshold`
    seconds: reported once, then again only when the key or the kind of its reason (a
    limit, a hold, a backoff, its turn, a hand-over) changes."""

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
            kind = _KIND.get(key.reason, key.reason)
            if now - since >= self.threshold and reported != kind:
                self._seen[partition] = (who, since, kind)
                report.append((key, now - since))
        return report


class PendingView:
    """The latest report, rebuilt by the poll thread (`refresh`, when `due`), and what
    reads it from the metrics thread: the oldest-waiting gauges and `/pending`."""

    def __init__(
        self,
        telemetry: Telemetry,
        clock: Callable[[], float],
        threshold: float,
        *,
        stall_after: float = 120.0,
    ) -> None:
        self.clock = clock
        self.report = PendingReport(at=clock())
        self.watch = WatermarkWatch(threshold)
        self.stalls = StallWatch(stall_after)
        telemetry.gauge("streamer.destination.oldest_waiting_age", self._by_destination)
        telemetry.gauge("streamer.partition.oldest_waiting_age", self._by_partition)
        telemetry.gauge("streamer.destination.stalled_seconds", self._stalled)
        telemetry.pending = lambda: self.read().as_json(self.clock())
        self._read = True  # read since the last rebuild (set by the metrics thread)

    def read(self) -> PendingReport:
        """The latest report (any thread); the poll thread rebuilds it soon after."""
        self._read = True
        return self.report

    def due(self, now: float) -> bool:
        """Rebuilt every second while it is read; with many keys waiting, about every
        `KEYS_PER_SECOND`th of their number of seconds (1,000 waiting: every 10 s); while
        nothing reads it, five times less often, up to every `QUIET_SECONDS`. So waiting
        stays cheap: the ages it reports are worked out when read, only which keys wait
        and why can be that old (`/pending` says how old: `as_of_seconds_ago`)."""
        waiting = sum(self.report.waiting.values())
        every = max(1.0, waiting / KEYS_PER_SECOND)
        if not self._read:
            every = max(every, min(QUIET_SECONDS, waiting / QUIET_KEYS_PER_SECOND))
        return now - self.report.at >= every

    def refresh(
        self,
        now: float,
        destinations: Destinations,
        handover: HandOver,
        ledger: DeliveryLedger,
        retrying: Iterable[Job],
        *,
        workers_free: bool = True,
    ) -> None:
        """Rebuilds the report; logs a key that has held a watermark too long, and a
        destination that stalled. `retrying`: the jobs waiting out a backoff (dead letters
        among them are skipped); `workers_free`: a request could start now."""
        self._read = False
        look = Look(now, destinations, handover, workers_free=workers_free)
        keys = [*look.queued(), *retried(now, destinations, retrying)]
        self.report = pending_report(
            now,
            keys,
            destinations={s.name: s.held_reason is not None for s in destinations},
            commit_offsets={
                p: o
                for p in ledger.partitions
                if ledger.unfinished(p) and (o := ledger.commit_offset(p)) is not None
            },
            why=look.why,
            stalled=self.stalls.observe(now, look.waiting),
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
                f"{key.reason}: {key.detail}" if key.detail else key.reason,
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
        report, now = self.read(), self.clock()
        return [
            (max(0.0, now - keys[0].since) if keys else 0.0, {"destination": name})
            for name, keys in report.oldest.items()
        ]

    def _stalled(self) -> list[tuple[float, dict[str, Any]]]:
        """Per destination: seconds stalled and why (0, without a reason, while not)."""
        report, now = self.read(), self.clock()
        out: list[tuple[float, dict[str, Any]]] = []
        for name in report.held:
            stall = report.stalled.get(name)
            attributes = {"destination": name}
            if stall is not None:
                attributes["reason"] = stall[1].reason
            out.append((report.stalled_for(name, now), attributes))
        return out

    def _by_partition(self) -> list[tuple[float, dict[str, Any]]]:
        report, now = self.read(), self.clock()
        return [
            (max(0.0, now - since), partition_attributes(p))
            for p, since in report.oldest_by_partition.items()
        ]


class Look:
    """One look at every destination's queue (the refresh's): each waiting key and why it
    waits, each destination's oldest key's wait, and since when nothing started."""

    def __init__(
        self, now: float, destinations: Destinations, handover: HandOver, *, workers_free: bool
    ) -> None:
        self.now, self.destinations, self.handover = now, destinations, handover
        self.workers_free = workers_free
        self.why: dict[str, Wait] = {}
        # per destination with keys waiting and no hold or 429: (nothing started since,
        # its oldest key's wait, keys waiting)
        self.waiting: dict[str, tuple[float, Wait, int]] = {}
        self._key_limits: dict[int, KeyLimit] = {}

    def queued(self) -> Iterator[PendingKey]:
        now = self.now
        for state in self.destinations:
            if not state.ready:
                continue
            head = explain(
                state, now, key_limit=self._key_limit(state), workers_free=self.workers_free
            )
            partitions: dict[Partition, Wait | None] = {}
            oldest: tuple[float, Wait] | None = None
            count = 0
            for w in state.ready.waiting():
                job = w.job
                if job.key is None:
                    continue
                if job.partition not in partitions:
                    partitions[job.partition] = partition_wait(job.partition, now, self.handover)
                wait = head if state.held_reason else partitions[job.partition] or head
                count += 1
                if oldest is None or w.since < oldest[0]:
                    oldest = (w.since, wait)
                yield PendingKey(
                    state.name,
                    job.key.deduplication_key,
                    job.partition,
                    job.offset,
                    w.since,
                    "queued",
                    wait.reason,
                    w.rank == URGENT,
                    wait.detail,
                )
            if oldest is None:
                continue
            self.why[state.name] = oldest[1]
            since = stalled_since(state, oldest[0], now)
            if since is not None:
                self.waiting[state.name] = (since, oldest[1], count)

    def _key_limit(self, state: DestinationState) -> KeyLimit:
        """The destination's API-key limiter, with its `why` worked out once per look."""
        if not self._key_limits:
            for limiter, limit, names in self.destinations.limiters():
                binding = limiter.why(self.now)
                self._key_limits[id(limiter)] = KeyLimit(limiter, limit, tuple(names), binding)
        return self._key_limits[id(state.key_limiter)]


def retried(
    now: float, destinations: Destinations, retrying: Iterable[Job]
) -> Iterator[PendingKey]:
    """The keys waiting out a backoff."""
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
            f"retry {job.attempts} after a failure (5xx, timeout or connection error)",
        )
