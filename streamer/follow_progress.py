"""How far a follower of a topic has read, against the topic's ends it was told about.

A follower (streamer/topic_follower.py) reads a topic in full; what its readers need is not
"have I read something" but "have I read *everything written before now*". Invariant:
`caught_up(since)` is true only once every record below high watermarks that were *asked
for* at or after `since` (by the same clock) has been handed over. A record acknowledged
before `since` is below those watermarks, so a reader that waits for `caught_up(since)`
has seen it. `FollowProgress` is that rule with plain values (tested in
tests/test_topic_follower.py); `read_to_now` is a reader's wait for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Protocol

from confluent_kafka import Message

log = logging.getLogger(__name__)

__all__ = ["PENDING_LOOKS", "FollowProgress", "FollowedTopic", "Follows", "Hub", "read_to_now"]

PENDING_LOOKS = 16  # watermark looks waiting to be reached; older ones are covered by newer
# after a failure to read a topic, first, then twice as long each time up to the most (a
# topic whose requests time out blocks the one thread for REQUEST_TIMEOUT at each look)
RETRY_SECONDS, MAX_RETRY_SECONDS = 2.0, 16.0
# a topic that does not exist is looked for this often while no reader waits for it (an
# asking client kept for it would wake for nothing; the first silence in a topic created
# after the start reaches a running replica within this)
MISSING_SECONDS = 10.0
# after a topic is added or a question asked, its reader polls briefly for this long
# (topic_follower.py: EAGER_POLL_SECONDS), so a question is answered within a round trip
EAGER_SECONDS = 3.0


class Follows(Protocol):
    """What a reader needs of a `TopicFollower` (tests pass a plain one)."""

    def caught_up(self, since: float) -> bool: ...
    def failing_since(self) -> float | None: ...
    def problem(self) -> str: ...
    def close(self) -> None: ...


def read_to_now(
    follower: Follows,
    clock: Callable[[], float],
    timeout: float,
    stop: threading.Event | None = None,
) -> bool:
    """Waits until `follower` has read every record written before now (True), or
    `timeout` s pass or `stop` is set (False)."""
    since = clock()
    deadline = since + timeout
    while not follower.caught_up(since):
        if clock() >= deadline or (stop is not None and stop.is_set()):
            return False
        time.sleep(0.05)
    return True


class FollowProgress:
    """How far a follower has read against the ends it was told about (plain values).

    `look(asked_at, highs)` records the high watermarks of a query sent at `asked_at`;
    `read(partition, next_offset)` records progress. Once every partition of a look has
    been read up to its watermark, everything acknowledged before `asked_at` has been
    read: `caught_up(since)` holds for every `since <= asked_at`. High watermarks only
    grow, so looks are reached in the order they were asked."""

    def __init__(self) -> None:
        self._next: dict[int, int] = {}
        self._looks: deque[tuple[float, dict[int, int]]] = deque(maxlen=PENDING_LOOKS)
        self.caught_up_at: float | None = None

    def start(self, partition: int, offset: int, *, again: bool = False) -> None:
        """Reading `partition` begins at `offset` (nothing below it is of interest).
        `again`: below what was read of it, its log being another (the topic deleted and
        created again): the looks waiting for the old log's ends are dropped."""
        if again:
            self._looks.clear()
        self._next[partition] = offset
        self._settle()

    def next(self, partition: int) -> int:
        """The next offset to read of `partition` (-1: not started)."""
        return self._next.get(partition, -1)

    def look(self, asked_at: float, highs: Mapping[int, int]) -> None:
        self._looks.append((asked_at, dict(highs)))
        self._settle()

    def read(self, partition: int, next_offset: int) -> None:
        if next_offset > self._next.get(partition, -1):
            self._next[partition] = next_offset
            self._settle()

    def caught_up(self, since: float) -> bool:
        return self.caught_up_at is not None and self.caught_up_at >= since

    def behind(self) -> int:
        """Records between what was read and the latest watermarks known (for logs)."""
        if not self._looks:
            return 0
        _, highs = self._looks[-1]
        return sum(max(0, high - self._next.get(p, 0)) for p, high in highs.items())

    def _settle(self) -> None:
        while self._looks:
            asked_at, highs = self._looks[0]
            if any(self._next.get(p, -1) < high for p, high in highs.items()):
                return
            self._looks.popleft()
            self.caught_up_at = max(asked_at, self.caught_up_at or asked_at)


class Hub(Protocol):
    """What a `FollowedTopic` needs of the reader that reads it (topic_follower.Followers)."""

    lock: threading.Lock
    eager_until: float

    def clock(self) -> float: ...
    def leave(self, followed: FollowedTopic) -> None: ...


class FollowedTopic:
    """One topic read in full by a `Followers` (what its readers see: `Follows`)."""

    def __init__(
        self,
        hub: Hub,
        topic: str,
        handle: Callable[[Message], None],
        window_seconds: float | None,
    ) -> None:
        self.hub, self.topic, self.handle, self.window_seconds = hub, topic, handle, window_seconds
        # under the hub's lock
        self.progress = FollowProgress()
        self.wanted: float | None = None  # a reader waits for a look asked at or after this
        self.failing: float | None = None
        self.trouble: str | None = None
        # the hub's thread's alone
        self.assigned: set[int] = set()
        self.looked_at = -RETRY_SECONDS
        self.missing = False  # the topic did not exist at the last look
        self.retries = 0  # failed looks since it last read

    def look_due(self, now: float) -> tuple[bool, bool]:
        """Is a look at the topic due (the hub's lock held), and does a reader wait for it?"""
        asked = self.wanted is not None and self.wanted > self.looked_at
        if self.failing is not None:  # proving the failure over, less often the longer
            retry = min(MAX_RETRY_SECONDS, RETRY_SECONDS * 2 ** max(0, self.retries - 1))
            return now - self.looked_at >= retry, asked
        if self.missing:  # created since?
            return asked or now - self.looked_at >= MISSING_SECONDS, asked
        return asked or not self.assigned, asked  # a reader waits; or just added

    def caught_up(self, since: float) -> bool:
        """Has every record acknowledged before `since` been handled? When not yet, the
        topic's ends are looked at again (once per caller's `since`)."""
        with self.hub.lock:
            if self.progress.caught_up(since):
                return True
            self.wanted = since if self.wanted is None else max(self.wanted, since)
            self.hub.eager_until = max(self.hub.eager_until, self.hub.clock() + EAGER_SECONDS)
            return False

    def failing_since(self) -> float | None:
        """Since when the topic could not be read (None: it can, as far as is known)."""
        with self.hub.lock:
            return self.failing

    def problem(self) -> str:
        """What stands in the way, in words (for a log line)."""
        with self.hub.lock:
            if self.trouble is not None:
                return self.trouble
            return f"{self.progress.behind()} records left to read"

    def close(self) -> None:
        """No longer followed (its records are no longer handed over)."""
        self.hub.leave(self)

    def settled(self) -> None:
        """A look reached proves the topic reads: no longer failing (the hub's lock held)."""
        if self.failing is not None and self.progress.caught_up(self.failing):
            log.info("%s reads again", self.topic, extra={"topic": self.topic})
            self.failing, self.trouble, self.retries = None, None, 0

    def failed(self, now: float, problem: str) -> None:
        """Nothing could be read of it at `now`, because of `problem` (the hub's lock held)."""
        if self.failing is None:
            self.failing = now
            log.warning(
                "%s cannot be read (%s); trying again in %.0f s, then less often (%.0f s at most)",
                self.topic,
                problem,
                RETRY_SECONDS,
                MAX_RETRY_SECONDS,
                extra={"topic": self.topic},
            )
        self.trouble, self.retries = problem, self.retries + 1
