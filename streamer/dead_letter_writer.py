"""The dead-letter producer: a letter is terminal only once the broker acknowledged it.

Invariant: writing a dead letter never raises and never gives up. A letter too large for
the topic is cut to fit (`dead_letters.fitted`), and cut again, smaller, if the broker
still refuses its size; a full local queue or any other produce error is retried after a
pause. Until the acknowledgement arrives the message is not terminal, so its offset is
not committed: a crash meanwhile writes the letter again, never loses it.

Invariant: one letter per source offset, across a kill. A replica killed after the
acknowledgement but before the commit leaves the offset to the next owner, which reads
the message again; before producing, the writer asks the `DeadLetterIndex` (every
replica follows the dead-letter topic) whether a letter for that offset is there already,
and waits (not terminal) until the index has read every letter written before this replica
took the partition over (`taken`; milliseconds, once per take-over). A topic that cannot
be read is not checked after a bounded wait: a duplicate, never a loss
(`dead_letter_index.py`; tests/test_dead_letter_writer.py).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from streamer.config import Config
from streamer.dead_letter_index import DeadLetterIndex, SourceOffset, Verdict
from streamer.dead_letters import DeadLetter, fitted
from streamer.kafka_clients import follower_settings
from streamer.topic_follower import Followers

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 1_000_000  # librdkafka's message.max.bytes default
SMALLEST_LIMIT = 16_384
RECHECK_SECONDS = 0.02  # a letter waiting for the index asks again after this at first,
MAX_RECHECK_SECONDS = 1.0  # then ever less often (many may wait: each asks on the poll thread)
MAX_ASKING = 10_000  # letters remembered as waiting (one whose job was fenced never returns)


class DeadLetterWriter:
    def __init__(
        self,
        producer: Producer,
        topic: str,
        limit: int = DEFAULT_LIMIT,
        *,
        index: DeadLetterIndex | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`index`: the letters already in the topic (None: nothing is checked)."""
        self.producer, self.topic, self.limit = producer, topic, limit
        self.index, self.clock = index, clock
        # A previous owner's letters were all acknowledged before this replica took their
        # partition, so a look at the topic's ends taken after the take-over has them: the
        # index is asked "since the take-over", and once it read that far, letters of the
        # partition are written without waiting. A partition nobody said was taken is
        # asked since each letter's first question (slower: every letter waits for a look).
        self._taken_at: dict[tuple[str, int], float] = {}
        self._asking: OrderedDict[SourceOffset, float] = OrderedDict()

    @classmethod
    def of(
        cls, producer: Producer, config: Config, followers: Followers | None = None
    ) -> DeadLetterWriter:
        """The configured dead-letter topic, letters cut to the producer's message size,
        checked against the letters already there (a follower starts reading it now: one
        of `followers`, the service's shared reader, when given)."""
        kafka = config.file.kafka
        limit = int(kafka.properties.get("message.max.bytes", DEFAULT_LIMIT))
        index = DeadLetterIndex.following(
            follower_settings(config), kafka.dead_letter_topic, followers=followers
        )
        return cls(producer, kafka.dead_letter_topic, limit, index=index)

    def taken(self, partitions: Iterable[tuple[str, int]]) -> None:
        """These partitions were just assigned to this replica (the rebalance callback)."""
        now = self.clock()
        for partition in partitions:
            self._taken_at[partition] = now

    def close(self) -> None:
        if self.index is not None:
            self.index.close()

    def write(
        self,
        letter: DeadLetter,
        written: Callable[[], None],
        again_in: Callable[[float], None],
        context: Mapping[str, Any],
    ) -> None:
        """Produces `letter`; calls `written()` once acknowledged, or `again_in(seconds)`
        when it must be written again (from `producer.poll`, or at once). `context` is
        for the log line (where the event came from and was going)."""
        message = letter.message
        source = SourceOffset(
            message.topic,
            message.partition,
            message.offset,
            letter.route or "",
            letter.destination or "",
        )
        if self.index is not None and not self._may_write(source, written, again_in, context):
            return
        record = fitted(letter, self.limit)
        size = len(record.value or b"")

        def acknowledged(error: KafkaError | None, _: Message) -> None:
            if error is None:
                if self.index is not None:
                    self.index.add(source)
                log.error(
                    "dead-lettered %s[%d]@%d: %s %s",
                    message.topic,
                    message.partition,
                    message.offset,
                    letter.reason,
                    letter.detail[:500],
                    extra={
                        **context,
                        "reason": letter.reason,
                        "request_id": letter.request_id,
                        "http_status": letter.http_status,
                        "attempts": letter.attempts,
                    },
                )
                written()
            elif error.code() == KafkaError.MSG_SIZE_TOO_LARGE:
                again_in(self._shrink(size))
            else:
                log.warning("dead letter not written (%s); retrying", error.str())
                again_in(1.0)

        headers: Any = record.headers
        try:
            self.producer.produce(
                self.topic,
                value=record.value,
                key=record.key,
                headers=headers,
                on_delivery=acknowledged,
            )
        except BufferError:  # the local queue is full: wait for acknowledgements
            again_in(0.5)
        except KafkaException as e:
            error = e.args[0] if e.args else None
            if isinstance(error, KafkaError) and error.code() == KafkaError.MSG_SIZE_TOO_LARGE:
                again_in(self._shrink(size))
            else:
                log.warning("dead letter not produced (%s); retrying", e)
                again_in(1.0)

    def _may_write(
        self,
        source: SourceOffset,
        written: Callable[[], None],
        again_in: Callable[[float], None],
        context: Mapping[str, Any],
    ) -> bool:
        """Asks the index; True: produce the letter. Otherwise it is already written
        (`written()` is called) or must wait (`again_in`)."""
        assert self.index is not None
        now = self.clock()
        first_asked = self._asking.setdefault(source, now)
        while len(self._asking) > MAX_ASKING:  # forgotten: it asks anew, and waits longer
            self._asking.popitem(last=False)
        asked_since = self._taken_at.get((source.topic, source.partition), first_asked)
        verdict = self.index.verdict(source, asked_since)
        if verdict is Verdict.WAIT:  # soon at first (a look takes milliseconds), then slower
            again_in(min(MAX_RECHECK_SECONDS, max(RECHECK_SECONDS, (now - first_asked) / 2)))
            return False
        self._asking.pop(source, None)
        if verdict is Verdict.WRITTEN:
            log.info(
                "already dead-lettered %s[%d]@%d (its letter is in the topic, written "
                "before a kill or a failed commit): not written again",
                *source,
                extra=dict(context),
            )
            written()
            return False
        return True

    def _shrink(self, size: int) -> float:
        """The broker refused a letter of about `size` bytes: aim lower from now on.
        Returns how long to wait before writing it again (at once, unless already at the
        smallest size: then the refusal is something else, retried slowly)."""
        before = self.limit
        self.limit = max(SMALLEST_LIMIT, min(self.limit, size) // 2)
        log.warning("dead letters larger than the topic accepts: cut to %d bytes", self.limit)
        return 0.0 if self.limit < before else 1.0
