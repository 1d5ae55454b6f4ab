"""What has been fetched, what may be delivered next, and what may be committed.

The `DeliveryLedger` is the ordering and offset core of the service. It is pure: no
Kafka, no HTTP, no clock; the engine feeds it messages and results.

Invariants it keeps (each is property-tested in tests/test_ledger.py):

1. **No loss.** Per partition, the commit offset is the first offset whose message is
   not terminal (all its jobs finished), or one past the last message added when all are.
   It never passes a message that is not terminal.
2. **Per-key order, no overlap.** Jobs with the same `OrderingKey` (destination +
   deduplication key) become *active* one at a time, in the order they were added; the
   next becomes active only when the previous one finished. Jobs of other keys do not
   wait for each other. A job with no key (a dead letter of an undecodable message) is
   active at once. A waiting job may be superseded by the job of its key right behind it
   (`coalescing.py`): it never becomes active again unless that job fails to stand for it.
4. **An older event never ends before the one that stands for it.** A superseded job stays
   unfinished (its offset is not committed) until its stand-in ends: accepted, they are
   terminal together; dead-lettered (rejected, or given up), the newest job it stood for
   becomes its key's active job again and is sent (or dead-lettered) itself.
3. **Fencing.** Each assignment of a partition has an epoch. Revoking or losing a
   partition forgets its messages and queued jobs; a job of an old epoch that finishes
   later releases its key (so keys never stay stuck) but cannot move any watermark.
5. **A held target's release moves no watermark.** A job `add_held` makes (the latest
   inhibited state of a key, read back from the firing topic: streamer/held_targets.py)
   has no message of its own: it queues behind its key's jobs like any job and is fenced
   like any job, but its end terminates nothing but the jobs it stood for.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

from streamer.offset_ranges import EMPTY as NO_OFFSETS
from streamer.offset_ranges import OffsetRanges

Partition = tuple[str, int]  # (topic, partition)


@dataclass(frozen=True)
class OrderingKey:
    destination: str
    deduplication_key: str


@dataclass(eq=False)
class Job:
    """One delivery (or one dead letter) of one message. Identity, not value, equality."""

    partition: Partition
    offset: int
    key: OrderingKey | None
    work: Any
    epoch: int
    attempts: int = 0
    # older jobs of its key it stands for (oldest first): terminal when it is accepted
    stands_for: list[Job] = field(default_factory=list)
    # a held target's release: no message of its own (`offset` is its source's, for logs)
    held: bool = False


@dataclass
class _Message:
    offset: int
    unfinished: int
    size: int
    done: list[OrderingKey] = field(default_factory=list)  # its keyed jobs that ended


@dataclass
class _PartitionState:
    epoch: int
    next_offset: int | None  # one past the last message added; None before the first
    messages: deque[_Message] = field(default_factory=deque)  # in offset order
    by_offset: dict[int, _Message] = field(default_factory=dict)
    size: int = 0  # bytes of the messages not yet terminal


class DeliveryLedger:
    def __init__(self) -> None:
        self._partitions: dict[Partition, _PartitionState] = {}
        self._epochs = 0
        self._keys: dict[Hashable, deque[Job]] = {}  # head = the active job

    # -- assignment ---------------------------------------------------------------------

    def assign(self, partition: Partition) -> None:
        self._epochs += 1
        self._partitions[partition] = _PartitionState(self._epochs, None)

    def revoke(self, partition: Partition) -> None:
        """Forget the partition: its queued jobs are dropped, its active jobs fenced."""
        state = self._partitions.pop(partition, None)
        if state is None:
            return
        for key, queue in list(self._keys.items()):
            # The head may be running: keep it, so the key stays busy until it returns.
            kept = [queue[0]] + [j for j in list(queue)[1:] if j.partition != partition]
            self._keys[key] = deque(kept)

    lose = revoke  # on_lost: the same forgetting; the engine commits nothing for it

    @property
    def partitions(self) -> list[Partition]:
        return list(self._partitions)

    def holds(self, partition: Partition) -> bool:
        """Whether the partition is assigned here now."""
        return partition in self._partitions

    def owns(self, job: Job) -> bool:
        state = self._partitions.get(job.partition)
        return state is not None and state.epoch == job.epoch

    # -- messages and jobs ----------------------------------------------------------------

    def add(
        self,
        partition: Partition,
        offset: int,
        works: Iterable[tuple[OrderingKey | None, Any]],
        size: int = 0,
    ) -> list[Job]:
        """Records a fetched message and its jobs; returns the jobs active now.

        No works means the message is terminal at once (dropped by the rules on purpose).
        `size` (bytes) counts toward `unfinished_size` until the message is terminal.
        """
        state = self._partitions[partition]
        if state.next_offset is not None and offset < state.next_offset:
            raise ValueError(f"{partition} offset {offset} was already added")
        state.next_offset = offset + 1
        jobs = [Job(partition, offset, key, work, state.epoch) for key, work in works]
        if not jobs:
            return []
        message = _Message(offset, len(jobs), size)
        state.size += size
        state.messages.append(message)
        state.by_offset[offset] = message
        active = []
        for job in jobs:
            if job.key is None:
                active.append(job)
                continue
            queue = self._keys.setdefault(job.key, deque())
            queue.append(job)
            if len(queue) == 1:
                active.append(job)
        return active

    def read_from(self, partition: Partition, offset: int) -> None:
        """Nothing before `offset` (the committed offset this assignment reads from) will be
        added: an idle partition's commit offset is `offset`, so it can be committed (and
        claimed) before a message of its own arrives."""
        state = self._partitions[partition]
        if state.next_offset is None:
            state.next_offset = offset

    def add_held(
        self, partition: Partition, offset: int, key: OrderingKey, work: Any
    ) -> tuple[Job, bool]:
        """A held target's release (invariant 5): a job of `partition`'s current assignment
        behind `key`'s jobs, moving no watermark when it ends (`offset`: its source's); and
        whether it is its key's active job now."""
        job = Job(partition, offset, key, work, self._partitions[partition].epoch, held=True)
        queue = self._keys.setdefault(key, deque())
        queue.append(job)
        return job, len(queue) == 1

    def finish(self, job: Job, *, stood: bool = True, revive: Job | None = None) -> list[Job]:
        """A job reached a terminal state; returns the job of its key that is active now.

        `stood`: its outcome stands for the jobs it superseded (accepted): they are terminal
        too. Otherwise (its dead letter) the newest of them is its key's active job now.
        `revive`: one of the jobs it superseded whose own state must still be sent (a
        resolve a silenced firing stood for): the newer ones are terminal with `job`,
        `revive` is its key's active job again and stands for the older ones."""
        self._terminal(job)
        if job.key is None:
            return []
        queue = self._keys.get(job.key)
        if not queue or queue[0] is not job:
            raise ValueError("finish() of a job that is not its key's active job")
        queue.popleft()
        older, job.stands_for = job.stands_for, []
        if revive is not None and revive in older and self.owns(job):
            at = older.index(revive)  # identity: jobs compare by identity
            for superseded in older[at + 1 :]:
                self._terminal(superseded)
            revive.stands_for = older[:at]
            queue.appendleft(revive)
        elif stood:
            for superseded in older:
                self._terminal(superseded)
        elif older and self.owns(job):
            revived = older.pop()
            revived.stands_for = older
            queue.appendleft(revived)
        while queue and not self.owns(queue[0]):  # defensive: drop fenced leftovers
            queue.popleft()
        if not queue:
            del self._keys[job.key]
            return []
        return [queue[0]]

    def _terminal(self, job: Job) -> None:
        if self.owns(job) and not job.held:
            state = self._partitions[job.partition]
            message = state.by_offset[job.offset]
            message.unfinished -= 1
            if job.key is not None and message.unfinished:
                message.done.append(job.key)
            while state.messages and state.messages[0].unfinished == 0:
                done = state.messages.popleft()
                del state.by_offset[done.offset]
                state.size -= done.size

    # -- coalescing (streamer/coalescing.py decides which jobs) -----------------------------

    def queue_of(self, key: OrderingKey) -> tuple[Job, ...]:
        """A key's jobs in order, its active job first (a copy)."""
        return tuple(self._keys.get(key, ()))

    def supersede(self, older: Job, newer: Job) -> list[Job]:
        """`newer`, right behind `older` in its key's queue, stands for it from now on:
        `older` leaves the queue unfinished (invariant 4). Returns `[newer]` if `older` was
        the key's active job (so `newer` is now), else []."""
        queue = self._keys.get(older.key) if older.key is not None else None
        at = queue.index(older) if queue is not None and older in queue else -1
        if queue is None or at < 0 or at + 1 >= len(queue) or queue[at + 1] is not newer:
            raise ValueError("supersede() by a job that is not right behind it in its key")
        del queue[at]
        newer.stands_for = [*older.stands_for, older, *newer.stands_for]
        return [newer] if at == 0 else []

    # -- what may be committed ------------------------------------------------------------

    def commit_offset(self, partition: Partition) -> int | None:
        """The next offset to read once everything before it is terminal; None if unknown."""
        state = self._partitions.get(partition)
        if state is None:
            return None
        if state.messages:
            return state.messages[0].offset
        return state.next_offset

    def commit_offsets(self) -> dict[Partition, int]:
        offsets = {p: self.commit_offset(p) for p in self._partitions}
        return {p: o for p, o in offsets.items() if o is not None}

    def unfinished(self, partition: Partition | None = None) -> int:
        """Messages fetched but not terminal (all partitions, or one)."""
        if partition is not None:
            state = self._partitions.get(partition)
            return len(state.messages) if state else 0
        return sum(len(s.messages) for s in self._partitions.values())

    def unfinished_size(self) -> int:
        """Bytes of the messages fetched but not terminal (all partitions). A terminal
        message behind one that is not still counts: it is held until the watermark moves."""
        return sum(s.size for s in self._partitions.values())

    def next_offset(self, partition: Partition) -> int | None:
        """One past the last message added: where to seek back to after a pause."""
        state = self._partitions.get(partition)
        return state.next_offset if state else None

    def terminal_above_watermark(self, partition: Partition) -> OffsetRanges:
        """Offsets past the commit offset that are terminal already (the offset map a next
        owner skips): messages whose jobs all finished, and those dropped on purpose. As
        ranges between the unfinished messages: its cost is theirs, not the offsets'."""
        state = self._partitions.get(partition)
        if state is None or not state.messages or state.next_offset is None:
            return NO_OFFSETS
        ranges = []
        at = state.messages[0].offset
        for message in state.messages:
            if message.unfinished:
                if at < message.offset:
                    ranges.append((at, message.offset))
                at = message.offset + 1
        if at < state.next_offset:
            ranges.append((at, state.next_offset))
        return OffsetRanges(tuple(ranges))

    def partly_done(self, partition: Partition) -> dict[int, tuple[OrderingKey, ...]]:
        """Messages past the commit offset that fan out and are only partly terminal: the
        keys of their jobs that ended. A next owner delivers only the rest: sending a done
        job again could land an older state after a newer one of its key."""
        state = self._partitions.get(partition)
        if state is None:
            return {}
        return {m.offset: tuple(m.done) for m in state.messages if m.unfinished and m.done}
