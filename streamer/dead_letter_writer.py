"""The dead-letter producer: a letter is terminal only once the broker acknowledged it.

Invariant: writing a dead letter never raises and never gives up. A letter too large for
the topic is cut to fit (`dead_letters.fitted`), and cut again, smaller, if the broker
still refuses its size; a full local queue or any other produce error is retried after a
pause. Until the acknowledgement arrives the message is not terminal, so its offset is
not committed: a crash meanwhile writes the letter again, never loses it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from streamer.config import Config
from streamer.dead_letters import DeadLetter, fitted

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 1_000_000  # librdkafka's message.max.bytes default
SMALLEST_LIMIT = 16_384


class DeadLetterWriter:
    def __init__(self, producer: Producer, topic: str, limit: int = DEFAULT_LIMIT) -> None:
        self.producer, self.topic, self.limit = producer, topic, limit

    @classmethod
    def of(cls, producer: Producer, config: Config) -> DeadLetterWriter:
        """The configured dead-letter topic, letters cut to the producer's message size."""
        kafka = config.file.kafka
        limit = int(kafka.properties.get("message.max.bytes", DEFAULT_LIMIT))
        return cls(producer, kafka.dead_letter_topic, limit)

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
        record = fitted(letter, self.limit)
        size = len(record.value or b"")

        def acknowledged(error: KafkaError | None, _: Message) -> None:
            if error is None:
                message = letter.message
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

    def _shrink(self, size: int) -> float:
        """The broker refused a letter of about `size` bytes: aim lower from now on.
        Returns how long to wait before writing it again (at once, unless already at the
        smallest size: then the refusal is something else, retried slowly)."""
        before = self.limit
        self.limit = max(SMALLEST_LIMIT, min(self.limit, size) // 2)
        log.warning("dead letters larger than the topic accepts: cut to %d bytes", self.limit)
        return 0.0 if self.limit < before else 1.0
