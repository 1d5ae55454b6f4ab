"""How often a delivery kept quiet on purpose is logged at info (streamer/intake.py).

A storm of 1,000 silenced (or inhibited) alerts would write 1,000 info lines saying the
same thing. Per reason (the outcome and what kept it quiet: a silence's id, an inhibit
rule's name) the first delivery of every `EVERY_SECONDS` is logged at info, and says how
many were logged at debug since the last info line; the rest are logged at debug. The
counters (`streamer.events.silenced`, `streamer.events.inhibited`) stay exact: this is
about log lines only.

One `QuietLog` per telemetry (so per engine, and per test): state never leaks between
engines in one process.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["EVERY_SECONDS", "QuietLog", "quiet_log_of"]

EVERY_SECONDS = 60.0
MAX_REASONS = 10_000  # past this many reasons, the oldest are forgotten (said again)


@dataclass
class _Said:
    at: float
    since: int = 0  # logged at debug since `at`


class QuietLog:
    def __init__(
        self, every: float = EVERY_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.every, self.clock = every, clock
        self._said: dict[tuple[str, str], _Said] = {}

    def level(self, outcome: str, by: str) -> tuple[int, int]:
        """The level to log this one at, and (at info) how many went to debug before it."""
        now, reason = self.clock(), (outcome, by)
        said = self._said.get(reason)
        if said is not None and now - said.at < self.every:
            said.since += 1
            return logging.DEBUG, 0
        if said is None and len(self._said) >= MAX_REASONS:
            del self._said[next(iter(self._said))]
        self._said[reason] = _Said(now)
        return logging.INFO, said.since if said is not None else 0

    def say(
        self,
        logger: logging.Logger,
        reason: tuple[str, str],
        message: str,
        *args: Any,
        extra: Mapping[str, Any],
    ) -> None:
        """Logs `message % args` for `reason` (the outcome, and what kept it quiet) at the
        level `level` gives; an info line says how many went to debug before it."""
        level, more = self.level(*reason)
        if more:
            message += " (and %d more like it logged at debug in the last %.0f s)"
            args = (*args, more, self.every)
        logger.log(level, message, *args, extra=extra, stacklevel=2)


_LOGS: weakref.WeakKeyDictionary[object, QuietLog] = weakref.WeakKeyDictionary()


def quiet_log_of(owner: object) -> QuietLog:
    """The `QuietLog` of `owner` (a `Telemetry`), made at its first use."""
    found = _LOGS.get(owner)
    if found is None:
        found = _LOGS[owner] = QuietLog()
    return found
