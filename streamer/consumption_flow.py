"""Pausing, resuming and seeking partitions: the consumer side of backpressure.

`Backpressure` (pure) decides; this shell tells the consumer. Invariant: a partition is
resumed only after a seek to the next offset this service has not seen, because
librdkafka drops prefetched messages on pause; resuming without the seek would skip them.
A partition blocked for the schema registry is paused at the message that needed it and
sought back there, so that message is read again once the backoff is over.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from confluent_kafka import Consumer, TopicPartition

from streamer.backpressure import Backpressure
from streamer.failure_policy import Backoff
from streamer.ledger import DeliveryLedger, Partition

log = logging.getLogger("streamer.engine")


class ConsumptionFlow:
    def __init__(
        self,
        consumer: Consumer,
        ledger: DeliveryLedger,
        backpressure: Backpressure,
        clock: Callable[[], float],
        backoff: Backoff | None = None,
    ) -> None:
        self.consumer, self.ledger, self.backpressure = consumer, ledger, backpressure
        self.clock = clock
        self.backoff = backoff or Backoff()

    def apply_caps(self) -> None:
        """Pauses every partition at the caps (messages or bytes); resumes below them."""
        unfinished, size = self.ledger.unfinished(), self.ledger.unfinished_size()
        change = self.backpressure.check(unfinished, size)
        if change == "pause":
            self.consumer.pause([TopicPartition(*p) for p in self.ledger.partitions])
            log.info(
                "%d events (%d bytes) in flight (caps %d, %d): consumption paused",
                unfinished,
                size,
                self.backpressure.max_messages,
                self.backpressure.max_bytes,
            )
        elif change == "resume":
            self.resume(self.backpressure.resumable(self.ledger.partitions))
            log.info("%d events in flight: consumption resumed", unfinished)

    def resume(self, partitions: Iterable[Partition]) -> None:
        tps = []
        for p in partitions:
            next_offset = self.ledger.next_offset(p)
            tp = TopicPartition(p[0], p[1], next_offset if next_offset is not None else -1001)
            if next_offset is not None:
                self.consumer.seek(tp)
            tps.append(tp)
        if tps:
            self.consumer.resume(tps)

    def block_for_registry(
        self,
        partition: Partition,
        offset: int,
        reason: str,
        what: str = "schema registry unavailable",
    ) -> None:
        """The registry is down (or the previous owner's note could not be read yet): not
        the message's fault. Pause, seek back, retry later."""
        attempt = self.backpressure.registry_attempt(partition)  # grows while it stays down
        delay = self.backoff.delay(attempt) + 1.0
        self.backpressure.block_for_registry(partition, self.clock() + delay)
        tp = TopicPartition(partition[0], partition[1], offset)
        self.consumer.pause([tp])
        self.consumer.seek(tp)
        log.warning(
            "%s; %s[%d] paused at offset %d for %.1f s: %s",
            what,
            partition[0],
            partition[1],
            offset,
            delay,
            reason,
            extra={"topic": partition[0], "partition": partition[1], "offset": offset},
        )

    def unblock_due(self) -> None:
        """Resumes the partitions whose registry backoff is over (unless all are paused)."""
        due = self.backpressure.unblock_due(self.clock())
        if due and not self.backpressure.paused:
            self.consumer.resume([TopicPartition(*p) for p in due])
