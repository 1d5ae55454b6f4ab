"""What the delivery machine asks of the broker, done: commits with their notes, notes
read back, pauses, seeks and resumes (docs/design.md, "The delivery machine").

A shell: it decides nothing. Each effect is performed on the consumer and its result goes
back to the machine as an event through `feed`: a synchronous commit's answer at once, an
asynchronous one from librdkafka's commit callback (`on_commit`, on the poll thread, in the
order the commits were sent), notes read as `NotesRead`. A commit that cannot be sent, or
notes that cannot be read (no coordinator mid-rebalance), are logged and left to the next
try: the machine sends and asks again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaError, TopicPartition

from streamer.delivery_events import (
    Commit,
    CommitAnswered,
    CommitNotSent,
    Event,
    NotesRead,
    Pause,
    PauseAt,
    ReadNotes,
    Resume,
)
from streamer.ledger import Partition

log = logging.getLogger(__name__)

OFFSET_INVALID = -1001  # librdkafka's "no offset": resume where the consumer stands

BrokerEffect = Commit | ReadNotes | Pause | PauseAt | Resume


class BrokerEffects:
    def __init__(
        self,
        consumer: Consumer,
        feed: Callable[[Event], None],
        every_partition: Callable[[], list[Partition]],
    ) -> None:
        """`every_partition()`: each partition of every configured topic (a group view)."""
        self.consumer, self.feed, self.every_partition = consumer, feed, every_partition

    def perform(self, effect: BrokerEffect) -> None:
        consumer = self.consumer
        match effect:
            case Commit():
                self._commit(effect)
            case ReadNotes():
                self._read_notes(effect)
            case Pause():
                consumer.pause([TopicPartition(*p) for p in effect.partitions])
            case PauseAt():
                tp = TopicPartition(*effect.partition, effect.offset)
                consumer.pause([tp])
                consumer.seek(tp)
            case Resume():
                tps = []
                for p, offset in effect.partitions.items():
                    tp = TopicPartition(p[0], p[1], OFFSET_INVALID if offset is None else offset)
                    if offset is not None:
                        consumer.seek(tp)
                    tps.append(tp)
                consumer.resume(tps)

    def _commit(self, effect: Commit) -> None:
        tps = [TopicPartition(p[0], p[1], o, note) for p, (o, note) in effect.offsets.items()]
        offsets = {p: o for p, (o, _) in effect.offsets.items()}
        try:
            if effect.sync:  # on revoke and shutdown: wait for the broker's answer
                answer = self.consumer.commit(offsets=tps, asynchronous=False)
                self.feed(CommitAnswered(results(None, answer or []), sync=True))
            else:  # the answer comes through on_commit, from poll
                self.consumer.commit(offsets=tps, asynchronous=True)
        except Exception as e:  # e.g. no coordinator mid-rebalance: the next commit retries
            log.warning("commit failed, will retry: %s", e)
            self.feed(CommitNotSent(offsets, sync=effect.sync))

    def on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """The broker's answer to an asynchronous commit."""
        self.feed(CommitAnswered(results(error, partitions)))

    def _read_notes(self, effect: ReadNotes) -> None:
        if effect.group:
            tps, timeout = [TopicPartition(*p) for p in self.every_partition()], 2.0
        else:
            tps, timeout = [TopicPartition(*p) for p in effect.partitions], 10.0
        try:
            committed = self.consumer.committed(tps, timeout=timeout)
        except Exception as e:  # no coordinator: read again at the next view
            log.warning("could not read the committed notes (read again soon): %s", e)
            return
        self.feed(
            NotesRead(
                {
                    (tp.topic, tp.partition): (tp.offset, tp.metadata)
                    for tp in committed
                    if tp.error is None
                },
                failed=[(tp.topic, tp.partition) for tp in committed if tp.error is not None],
                group=effect.group,
            )
        )


def results(
    error: KafkaError | None, partitions: list[TopicPartition]
) -> dict[Partition, tuple[int, str | None]]:
    """The broker's answer, per partition: (offset, error text or None)."""
    return {
        (tp.topic, tp.partition): (
            tp.offset,
            None if error is None and tp.error is None else str(error or tp.error),
        )
        for tp in partitions
    }
