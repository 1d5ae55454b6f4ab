"""Simulated time: one queue of things due, and each member's own clocks.

Everything in a simulated run happens through `Scheduler.at`: one heap ordered by (time,
sequence), so two runs of one seed take the same steps in the same order. `now` is true
time (what incident.io and the broker see). A member reads its clocks through
`MemberClock`: a monotonic clock with its own origin (a process's `time.monotonic()`) and
a wall clock that runs `skew` seconds off true time (an hour either way is allowed).
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

EPOCH = 1_796_000_000.0  # true wall time at simulated time 0 (late 2026)


class Scheduler:
    def __init__(self) -> None:
        self.now = 0.0
        self._queue: list[tuple[float, int, Callable[..., Any], tuple[Any, ...]]] = []
        self._sequence = itertools.count()
        self.steps = 0

    def at(self, when: float, action: Callable[..., Any], *args: Any) -> None:
        heapq.heappush(self._queue, (max(when, self.now), next(self._sequence), action, args))

    def after(self, delay: float, action: Callable[..., Any], *args: Any) -> None:
        self.at(self.now + delay, action, *args)

    def next_time(self) -> float | None:
        return self._queue[0][0] if self._queue else None

    def step(self) -> bool:
        """Runs the next thing due; False when nothing is left."""
        if not self._queue:
            return False
        when, _, action, args = heapq.heappop(self._queue)
        self.now = when
        self.steps += 1
        action(*args)
        return True


@dataclass(frozen=True)
class MemberClock:
    """A process's clocks: `monotonic(t)` from its own origin, `wall(t)` skewed."""

    origin: float  # the monotonic clock's reading at true time 0
    skew: float  # seconds the wall clock runs ahead of true time (negative: behind)

    def monotonic(self, t: float) -> float:
        return self.origin + t

    def wall(self, t: float) -> float:
        return EPOCH + t + self.skew

    def true_time(self, monotonic: float) -> float:
        return monotonic - self.origin
