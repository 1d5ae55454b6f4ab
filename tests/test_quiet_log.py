"""A storm kept quiet logs one info line per reason a minute, not one per event; the
next info line says how many went to debug; counters stay exact (streamer/quiet_log.py)."""

from __future__ import annotations

import logging

from streamer.quiet_log import QuietLog, quiet_log_of
from streamer.telemetry import Telemetry
from tests.test_intake_inhibition import WARNING, ZONE_DOWN, board, event, rules, through

__all__ = ["rules"]  # the fixture


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_first_of_each_reason_a_minute_is_said_at_info() -> None:
    clock = Clock()
    said = QuietLog(60.0, clock)
    assert said.level("silenced", "s1") == (logging.INFO, 0)
    assert said.level("silenced", "s1") == (logging.DEBUG, 0)
    assert said.level("silenced", "s2") == (logging.INFO, 0)  # another silence
    assert said.level("inhibited", "s1") == (logging.INFO, 0)  # another outcome
    said.level("silenced", "s1")
    clock.now = 60.0
    assert said.level("silenced", "s1") == (logging.INFO, 2)  # and 2 went to debug


def test_a_storm_of_inhibited_targets_logs_one_info_line_and_counts_each(rules, caplog) -> None:
    firing, telemetry = board(), Telemetry()
    through(rules, event(**ZONE_DOWN), firing)
    caplog.set_level(logging.INFO, logger="streamer.intake")
    for n in range(100):
        through(rules, event(**{**WARNING, "n": str(n)}), firing, telemetry)
    infos = [r for r in caplog.records if r.levelno == logging.INFO and "inhibited" in r.message]
    assert len(infos) == 1
    assert telemetry.inhibited.total(lambda a: a["rule"] == "zone-down") == 200  # 2 routes
    assert quiet_log_of(telemetry) is quiet_log_of(telemetry)
    assert quiet_log_of(Telemetry()).level("inhibited", "zone-down")[0] == logging.INFO
