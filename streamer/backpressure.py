"""Backpressure: which partitions to pause, and where to resume them.

Invariant (bounded memory): fetched-but-not-terminal messages stay under a cap in count
(`max_unfinished`) and in bytes (`max_unfinished_bytes`, the messages' key and value
sizes): at either cap every assigned partition pauses; consumption resumes when both are
back under 80% (a gap, so pause and resume do not alternate per message). Fetching
never asks for more messages than the count cap has room for.

A partition whose messages need a schema registry that does not answer is paused on its
own (not the message's fault: nothing is dead-lettered) and resumed after a backoff that
grows while the registry stays down.

librdkafka drops prefetched messages on pause, so a resumed partition is first sought to
the next offset this service has not seen (the caller does the seek; the ledger knows).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable
from typing import Literal

from streamer.delivery_events import Effect, Pause, PauseAt, Resume
from streamer.failure_policy import Backoff
from streamer.ledger import DeliveryLedger, Partition

log = logging.getLogger(__name__)

RESUME_BELOW = 0.8


class Backpressure:
    def __init__(
        self,
        *,
        max_messages: int,
        max_bytes: int,
        backoff: Backoff | None = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.max_messages, self.max_bytes = max_messages, max_bytes
        self.backoff, self.rng = backoff or Backoff(), rng
        self.paused = False  # every partition, for the caps
        self.pauses = 0
        self._registry_blocked: dict[Partition, float] = {}  # partition -> resume at
        self._registry_attempts: dict[Partition, int] = {}

    def room(self, messages: int, size: int) -> int:
        """How many more messages may be fetched now."""
        if size >= self.max_bytes:
            return 0
        return max(0, self.max_messages - messages)

    def check(self, messages: int, size: int) -> Literal["pause", "resume"] | None:
        """Whether the caps say to pause every partition, or to resume them, now."""
        if not self.paused and (messages >= self.max_messages or size >= self.max_bytes):
            self.paused = True
            self.pauses += 1
            return "pause"
        if (
            self.paused
            and messages <= self.max_messages * RESUME_BELOW
            and size <= self.max_bytes * RESUME_BELOW
        ):
            self.paused = False
            return "resume"
        return None

    # -- the schema registry -----------------------------------------------------------

    def block_for_registry(self, partition: Partition, until: float) -> None:
        self._registry_blocked[partition] = until

    def registry_attempt(self, partition: Partition) -> int:
        """Counts one more failed attempt for this partition; returns the count."""
        attempt = self._registry_attempts.get(partition, 0) + 1
        self._registry_attempts[partition] = attempt
        return attempt

    def registry_answered(self, partition: Partition) -> None:
        self._registry_attempts.pop(partition, None)

    def blocked(self, partition: Partition) -> bool:
        return partition in self._registry_blocked

    def blocked_until(self) -> list[float]:
        """When each blocked partition may be read again."""
        return list(self._registry_blocked.values())

    def blocked_count(self) -> int:
        return len(self._registry_blocked)

    def unblock_due(self, now: float) -> list[Partition]:
        """Partitions whose registry backoff is over; they may resume unless all are paused."""
        due = [p for p, at in self._registry_blocked.items() if at <= now]
        for p in due:
            del self._registry_blocked[p]
        return due

    def resumable(self, partitions: Iterable[Partition]) -> list[Partition]:
        """Of these, the ones no registry block keeps paused."""
        return [p for p in partitions if p not in self._registry_blocked]

    def forget(self, partitions: Iterable[Partition]) -> None:
        for p in partitions:
            self._registry_blocked.pop(p, None)
            self._registry_attempts.pop(p, None)

    # -- as effects (the delivery machine's) ---------------------------------------------

    def caps(self, ledger: DeliveryLedger) -> list[Effect]:
        """Every partition paused at the caps (messages or bytes), resumed below them."""
        unfinished, size = ledger.unfinished(), ledger.unfinished_size()
        change = self.check(unfinished, size)
        if change == "pause":
            log.info(
                "%d events (%d bytes) in flight (caps %d, %d): consumption paused",
                unfinished,
                size,
                self.max_messages,
                self.max_bytes,
            )
            return [Pause(ledger.partitions)]
        if change == "resume":
            log.info("%d events in flight: consumption resumed", unfinished)
            # librdkafka drops prefetched messages on pause: seek to the first one not seen
            resumed = {p: ledger.next_offset(p) for p in self.resumable(ledger.partitions)}
            return [Resume(resumed)] if resumed else []
        return []

    def block(self, partition: Partition, offset: int, now: float, reason: str) -> PauseAt:
        """Not the message's fault (the registry is down, or the previous owner's note is
        not read yet): pause there, read it again after a backoff that grows meanwhile."""
        attempt = self.registry_attempt(partition)
        delay = self.backoff.delay(attempt, self.rng) + 1.0
        self.block_for_registry(partition, now + delay)
        log.warning(
            "%s[%d] paused at offset %d for %.1f s: %s",
            partition[0],
            partition[1],
            offset,
            delay,
            reason,
            extra={"topic": partition[0], "partition": partition[1], "offset": offset},
        )
        return PauseAt(partition, offset)

    def unblocked(self, now: float) -> list[Effect]:
        """The partitions whose backoff is over, resumed (unless all are paused)."""
        due = self.unblock_due(now)
        return [Resume({p: None for p in due})] if due and not self.paused else []
