"""Rate limits that are never exceeded on purpose.

incident.io allows 120 events/minute per alert source and 1200 requests/minute per API
key, and does not say how it counts a minute. So the strictest reading: no more than
`limit` requests may *start* in any rolling window of `window` seconds. A token bucket
fails that (a full bucket plus its refill lets nearly 2x through in one window); a log
of the last `limit` start times keeps it exactly, in O(limit) memory.

A margin is added to the window because incident.io counts arrivals, not our starts:
two requests started exactly one window apart can arrive less than a window apart.

A 429 pauses the whole limiter until its retry-after, not just the one request. The
time comes from an injected clock (monotonic seconds); nothing here sleeps.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence


class RollingWindowLimiter:
    def __init__(self, limit: int, window: float = 60.0, *, margin: float = 0.5) -> None:
        if limit < 1:
            raise ValueError("a rate limit must allow at least one request per window")
        self.window = window + margin
        self._limit = limit
        self._starts: deque[float] = deque()
        self._paused_until = -math.inf

    @property
    def limit(self) -> int:
        return self._limit

    def set_limit(self, limit: int) -> None:
        """A new share of the limit (replicas joined or left); applies from now on."""
        self._limit = max(1, limit)

    def next_start(self, now: float) -> float:
        """When a request may start: `now` if it may start now."""
        while self._starts and self._starts[0] <= now - self.window:
            self._starts.popleft()
        at = max(now, self._paused_until)
        if len(self._starts) >= self._limit:
            # the start that must leave the window before one more fits
            at = max(at, self._starts[len(self._starts) - self._limit] + self.window)
        return at

    def record_start(self, now: float) -> None:
        self._starts.append(now)

    def pause_until(self, until: float) -> None:
        """A 429 said to wait: nothing starts before `until` (a later pause wins)."""
        self._paused_until = max(self._paused_until, until)

    @property
    def paused_until(self) -> float:
        return self._paused_until


def acquire(limiters: Sequence[RollingWindowLimiter], now: float) -> float | None:
    """Starts one request under every limiter at once, or says when to try again.

    All or nothing: a request counts against its alert source and its API key together,
    so taking one without the other would waste a slot.
    """
    ready_at = max(limiter.next_start(now) for limiter in limiters)
    if ready_at > now:
        return ready_at
    for limiter in limiters:
        limiter.record_start(now)
    return None


def share_of(limit: int, owned_partitions: int, total_partitions: int) -> int:
    """This replica's part of a limit shared by the consumer group, by partitions owned.

    Rounded down, so the replicas' shares never add up to more than the limit; at least
    one while anything is owned, so a replica with a partition can always make progress.
    The two meet only when some replica's exact share is below one request per window
    (more partitions than the limit, spread thinly): then the sum can exceed the limit,
    and a fixed split (fewer replicas, or `share:` in the configuration) is the answer.
    """
    if total_partitions <= 0 or owned_partitions <= 0:
        return 1
    return max(1, limit * owned_partitions // total_partitions)
