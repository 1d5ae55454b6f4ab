"""The conversation with the broker about offsets: commits, their notes, the group's notes.

A shell around `CommitSchedule` (what to commit, confirmed-only) and `GroupBudget` (the
rate-limit budget and offset map carried in commit metadata): it sends commits
(asynchronous in steady state, synchronous on revoke and shutdown), takes the broker's
answers, reads the previous owner's notes when a partition is assigned, and every view
interval reads the notes of the whole group. Notes are input from other processes: one
that cannot be used is logged and ignored, never raised into the poll loop.

A partition is claimed (`handover.py`) by its first confirmed commit; one whose previous
note could not be read (no coordinator at assignment) is neither committed nor claimed
until it is read: our note would overwrite what the previous owner spent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection

from confluent_kafka import Consumer, KafkaError, TopicPartition

from streamer.commits import CommitSchedule
from streamer.config import Config
from streamer.group_budget import GroupBudget
from streamer.handover import HandOver
from streamer.kafka_clients import PartitionCounts
from streamer.ledger import DeliveryLedger, Partition

log = logging.getLogger("streamer.engine")


class Committer:
    def __init__(
        self,
        *,
        commits: CommitSchedule,
        budget: GroupBudget,
        handover: HandOver,
        ledger: DeliveryLedger,
        config: Callable[[], Config],
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
    ) -> None:
        self.commits, self.budget, self.ledger = commits, budget, ledger
        self.handover = handover
        self._unread: set[Partition] = set()  # assigned, the previous note not read yet
        self.config, self.clock, self.wall_clock = config, clock, wall_clock
        self.consumer: Consumer | None = None  # set once made (it calls on_commit)
        self.partition_counts: PartitionCounts | None = None

    def attach(self, consumer: Consumer) -> None:
        self.consumer = consumer
        self.partition_counts = PartitionCounts(consumer)

    def commit_if_due(
        self, *, force: bool = False, partitions: Collection[Partition] | None = None
    ) -> None:
        now, wall = self.clock(), self.wall_clock()
        view = not force and self.budget.view_due(now)
        if view and self._unread:  # as long as a view: the poll thread waits for it
            self.take_over([TopicPartition(*p) for p in self._unread], timeout=2)
        watermarks = self.ledger.commit_offsets()
        for p in self._unread:
            watermarks.pop(p, None)
        offsets = self.commits.offsets_to_send(
            watermarks,
            now,
            force=force,
            only=partitions,
            notes=lambda due: self.budget.notes(due, now, wall, final=force),
            claims=self.handover.unclaimed(),
        )
        if view:
            self._observe_group(now, wall)
        if not offsets:
            return
        notes = self.commits.notes
        tps = [TopicPartition(p[0], p[1], o, notes.get(p, "")) for p, o in offsets.items()]
        # only a commit of every partition's note confirms the starts made before it
        complete = self.commits.complete
        try:
            if force:  # on revoke and shutdown: wait for the broker's answer
                answer = self._consumer().commit(offsets=tps, asynchronous=False)
                if self._answered(None, answer) and complete:
                    self.budget.confirmed(now)
            else:
                self.commits.sending(offsets)
                self.budget.sending(now if complete else None)
                try:
                    self._consumer().commit(offsets=tps, asynchronous=True)
                except Exception:
                    self.budget.not_sent()
                    raise
        except Exception as e:  # e.g. no coordinator mid-rebalance: the next commit retries
            self.commits.not_sent(offsets)
            log.warning("commit failed, will retry: %s", e)

    def _observe_group(self, now: float, wall: float) -> None:
        """Every partition's committed note (one request): what the group spent, where
        deliveries wait (`GroupBudget.observe`)."""
        tps = [
            TopicPartition(topic.name, i)
            for topic in self.config().file.topics
            for i in range(self._counts().total([topic.name]))
        ]
        try:
            committed = self._consumer().committed(tps, timeout=2)
        except Exception as e:  # the coordinator moves: the next view will do
            log.debug("could not read the group's notes: %s", e)
            return
        notes = {(tp.topic, tp.partition): (tp.offset, tp.metadata) for tp in committed}
        try:  # other members' notes are input from elsewhere: never let them stop us
            self.budget.observe(notes, now, wall, total_partitions=len(tps))
        except Exception:
            log.exception("the group's notes could not be read; shares stay as they were")

    def on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """The broker's answer to an asynchronous commit (librdkafka calls this on the poll
        thread, in the order the commits were sent)."""
        self.budget.answered(ok=self._answered(error, partitions))

    def _answered(self, error: KafkaError | None, partitions: list[TopicPartition]) -> bool:
        """Takes the broker's answer partition by partition; True if all were taken."""
        failed = []
        for tp in partitions:
            partition = (tp.topic, tp.partition)
            ok = error is None and tp.error is None
            owned = partition in self.ledger.partitions
            self.commits.answered(partition, tp.offset, ok=ok, owned=owned)
            if ok and owned:
                self.handover.claimed(partition)
            if not ok:
                failed.append(f"{tp.topic}[{tp.partition}]@{tp.offset}")
        if failed:
            log.warning(
                "commit of %s failed (%s); it is sent again at the next commit",
                ", ".join(failed),
                error or "per-partition errors",
            )
        return not failed

    def take_over(self, partitions: list[TopicPartition], timeout: float = 10) -> None:
        """What the previous owners spent, paused and finished: ours now (`GroupBudget`)."""
        unread = {(tp.topic, tp.partition) for tp in partitions}
        self._unread |= unread
        try:
            committed = self._consumer().committed(partitions, timeout=timeout)
        except Exception as e:  # no coordinator: read again at the next view, start nothing
            log.warning("could not read the previous owners' notes (read again soon): %s", e)
            return
        self._unread -= {(tp.topic, tp.partition) for tp in committed if tp.error is None}
        now, wall = self.clock(), self.wall_clock()
        for tp in committed:
            if tp.error is not None:
                log.warning(
                    "could not read the note of %s[%d]: %s", tp.topic, tp.partition, tp.error
                )
                continue
            if tp.offset >= 0:
                try:  # the previous owner's note is input from elsewhere: it cannot stop us
                    self.budget.take_over(
                        (tp.topic, tp.partition), tp.metadata, tp.offset, now, wall
                    )
                except Exception:
                    log.exception("the note of %s[%d] is ignored", tp.topic, tp.partition)

    def unread(self, partition: Partition) -> bool:
        """Assigned, but the previous owner's note could not be read yet."""
        return partition in self._unread

    def let_go(self, partitions: Collection[Partition]) -> None:
        self._unread.difference_update(partitions)

    def _consumer(self) -> Consumer:
        assert self.consumer is not None, "attach() the consumer first"
        return self.consumer

    def _counts(self) -> PartitionCounts:
        assert self.partition_counts is not None, "attach() the consumer first"
        return self.partition_counts

    def total_partitions(self) -> int:
        """The partitions of every configured topic (asked once per topic)."""
        return self._counts().total([t.name for t in self.config().file.topics])
