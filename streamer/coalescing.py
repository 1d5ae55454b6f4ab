"""Alert storms: a waiting key sends only its newest state, and urgent keys go first.

Invariants (property-tested in tests/test_coalescing.py):

1. **Superseded events are never sent.** For a destination that coalesces
   (`coalesce: latest`), an event of a key that is still waiting (not in flight) and has a
   newer event of the same key right behind it (same destination and deduplication key,
   same partition and assignment) is finished as `superseded`: terminal, never sent. So
   what is sent per key is a subsequence of its events in offset order ending with the
   newest; an event in flight is never recalled; keys, destinations and partitions never
   coalesce with each other (events of one key on two partitions keep the ledger's
   arrival order).
2. **The watermark never passes a waiting event, nor one whose stand-in may fail.**
   Superseding goes through the ledger (`DeliveryLedger.supersede`): a superseded event
   is terminal only when the event that stands for it is accepted, and moves the commit
   watermark then, as any terminal event; if its stand-in is dead-lettered (rejected by
   incident.io, or given up) the newest superseded event is sent itself. A message that
   fans out is terminal only when all its jobs are.
3. **Priority never reorders a key.** A destination's `WaitingQueue` holds at most one
   event per key (the ledger's active one), so choosing which key starts next (lowest
   rank, then the longest-waiting key, then arrival) cannot change any key's order. A
   key keeps its place (`since`) when a newer event supersedes its waiting one.

Pure: no I/O, no clock; callers pass times.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Collection, Container, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from streamer.ledger import DeliveryLedger, Job, OrderingKey, Partition

Coalesce = Literal["latest", "none"]
Priority = Literal["critical-first", "oldest-first"]

URGENT, NORMAL = 0, 1  # ranks: lower starts first


def rank_of(payload: Any, priority: Priority) -> int:
    """`critical-first`: a firing event whose `metadata.severity` is critical (any case)
    outranks the rest; `oldest-first`: every key has the same rank (arrival order)."""
    if priority != "critical-first" or not isinstance(payload, Mapping):
        return NORMAL
    metadata = payload.get("metadata")
    severity = metadata.get("severity") if isinstance(metadata, Mapping) else None
    firing = payload.get("status") == "firing"
    critical = isinstance(severity, str) and severity.lower() == "critical"
    return URGENT if firing and critical else NORMAL


def same_run(older: Job, newer: Job) -> bool:
    """Whether `newer` may supersede `older`: one key, one partition, one assignment, and
    a later offset (two routes of one message to the same key never supersede each other).
    A held target's release is never superseded: it is sent, then what came after it."""
    return (
        not older.held
        and older.key == newer.key
        and older.partition == newer.partition
        and older.epoch == newer.epoch
        and older.offset < newer.offset
    )


def superseded_in(queue: Sequence[Job], *, active_waiting: bool) -> list[Job]:
    """A key's jobs, its active one first: those a newer job replaces, oldest first. The
    active job counts only while it waits (an event in flight is never recalled)."""
    return [
        job
        for i, (job, after) in enumerate(itertools.pairwise(queue))
        if (i > 0 or active_waiting) and same_run(job, after)
    ]


@dataclass(frozen=True)
class Coalesced:
    superseded: list[Job]  # never sent unless their stand-in is dead-lettered, oldest first
    active: Job | None  # the job that replaced the active one (now active), if it did


NOTHING = Coalesced([], None)


def coalesce(ledger: DeliveryLedger, key: OrderingKey, *, waiting: Container[Job]) -> Coalesced:
    """Finishes the jobs of `key` that a newer one supersedes (see `superseded_in`); the
    key's active job counts as waiting when it is in `waiting` (not in flight)."""
    queue = ledger.queue_of(key)
    if len(queue) < 2:
        return NOTHING
    head = queue[0]
    if not ledger.owns(head):  # fenced: its partition's queued jobs are gone already
        return NOTHING
    doomed = superseded_in(queue, active_waiting=head in waiting)
    if not doomed:
        return NOTHING
    active = None
    for job in doomed:  # oldest first: each one's stand-in is the job right behind it
        for became in ledger.supersede(job, queue[queue.index(job) + 1]):
            active = became
    return Coalesced(doomed, active)


@dataclass(frozen=True)
class Waiting:
    """One key's place in a destination's queue."""

    job: Job
    rank: int
    since: float  # when the key began to wait (monotonic); kept when superseded
    seq: int  # arrival, the last tie-breaker

    @property
    def order(self) -> tuple[int, float, int]:
        return (self.rank, self.since, self.seq)


class WaitingQueue:
    """The keys waiting for one destination, in the order they may start.

    At most one job per key (per-key order is the ledger's job). A heap with lazy deletion:
    a heap item is current only while its key's entry has the same order.
    """

    def __init__(self) -> None:
        self._entries: dict[OrderingKey | None, Waiting] = {}
        self._heap: list[tuple[int, float, int, OrderingKey | None]] = []
        self._seq = itertools.count()
        # keys waiting per partition (none: absent), kept as entries come and go, so the
        # notes' demand and each view ask it per partition, not per waiting delivery
        self._per_partition: dict[Partition, int] = {}

    def add(self, job: Job, *, rank: int, since: float = 0.0, place: Waiting | None = None) -> None:
        """Queues `job` (waiting since `since`), or back in its key's earlier `place`."""
        if job.key in self._entries:
            raise ValueError(f"{job.key} is waiting already: one job per key")
        if place is not None:
            if place.job.key != job.key:
                raise ValueError("a job goes back only to its own key's place")
            self._put(Waiting(job, rank, place.since, place.seq))
        else:
            self._put(Waiting(job, rank, since, next(self._seq)))

    def append(self, job: Job) -> None:
        """Adds at the normal rank, after every key waiting so far (as on a deque)."""
        self.add(job, rank=NORMAL, since=0.0)

    def replace(self, old: Job, new: Job, *, rank: int) -> None:
        """`new` (a newer job of the key) takes `old`'s place; the key keeps its `since`."""
        entry = self._entries[old.key]
        if entry.job is not old or new.key != old.key:
            raise ValueError("replace() of a job that is not waiting, or across keys")
        self._put(Waiting(new, rank, entry.since, entry.seq), reordered=rank != entry.rank)

    def first(self) -> Job | None:
        entry = self._first()
        return entry.job if entry else None

    def __getitem__(self, index: int) -> Job:
        """`queue[0]`: the first job, as on the deque this replaced (only index 0)."""
        entry = self._first() if index == 0 else None
        if entry is None:
            raise IndexError("only the first waiting job can be read by index")
        return entry.job

    def remove(self, job: Job) -> Waiting:
        entry = self._entries.get(job.key)
        if entry is None or entry.job is not job:
            raise ValueError("remove() of a job that is not waiting")
        del self._entries[job.key]
        self._uncount(job.partition)
        return entry

    def restore(self, entry: Waiting) -> None:
        """Puts a removed entry back in the same place (a job passed over for now)."""
        self._put(entry)

    def drop(self, partitions: Collection[Partition]) -> list[Job]:
        """Takes the jobs of these partitions out; returns them."""
        dropped = [w.job for w in self._entries.values() if w.job.partition in partitions]
        for job in dropped:
            del self._entries[job.key]
            self._uncount(job.partition)
        return dropped

    def per_partition(self) -> Mapping[Partition, int]:
        """How many keys wait per partition (only partitions with some); read-only."""
        return self._per_partition

    def waiting(self) -> Iterator[Waiting]:
        """Every entry, in no particular order."""
        return iter(list(self._entries.values()))

    def __contains__(self, job: object) -> bool:
        entry = self._entries.get(getattr(job, "key", None))
        return entry is not None and entry.job is job

    def __len__(self) -> int:
        return len(self._entries)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def _put(self, entry: Waiting, *, reordered: bool = True) -> None:
        if (before := self._entries.get(entry.job.key)) is not None:
            self._uncount(before.job.partition)
        self._entries[entry.job.key] = entry
        p = entry.job.partition
        self._per_partition[p] = self._per_partition.get(p, 0) + 1
        if not reordered:  # the same order: its heap item is current already
            return
        heapq.heappush(self._heap, (*entry.order, entry.job.key))
        if len(self._heap) > 2 * len(self._entries) + 64:  # stale items: rebuild
            self._heap = [(*w.order, k) for k, w in self._entries.items()]
            heapq.heapify(self._heap)

    def _uncount(self, partition: Partition) -> None:
        left = self._per_partition[partition] - 1
        if left:
            self._per_partition[partition] = left
        else:
            del self._per_partition[partition]

    def _first(self) -> Waiting | None:
        while self._heap:
            rank, since, seq, key = self._heap[0]
            entry = self._entries.get(key)
            if entry is not None and entry.order == (rank, since, seq):
                return entry
            heapq.heappop(self._heap)
        return None
