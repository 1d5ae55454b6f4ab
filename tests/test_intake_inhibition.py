"""Inhibition at intake: a source writes its state whatever its routes; a target's firing is
not sent while a source fires, its resolve always is; counted and logged with the source."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from streamer.dead_letters import SourceMessage
from streamer.decoding import EventDecoder, load_schema
from streamer.firing_state import FiringState
from streamer.inhibition import FiringSource, fingerprint
from streamer.intake import Inhibited, Muted, works_of
from streamer.telemetry import Telemetry
from streamer.testing.events import as_json
from tests.rules_helpers import SCHEMA, alert, check, config_from

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
RULES = """
routes:
  - name: zone-pages
    matchers: ['alertname="ZoneDown"']
    destination: drop
  - name: payments
    match: ["labels.team = payments"]
    continue: true
    destination: a
  - name: everyone
    destination: b
inhibit_rules:
  - name: zone-down
    source_matchers: ['alertname="ZoneDown"']
    target_matchers: ['severity="warning"']
    equal: [zone]
"""
ZONE_DOWN = {"alertname": "ZoneDown", "zone": "eu-1"}
WARNING = {"alertname": "DiskSlow", "severity": "warning", "zone": "eu-1"}


class Follower:
    failing: float | None = None

    def caught_up(self, since: float) -> bool:
        return True

    def failing_since(self) -> float | None:
        return self.failing

    def problem(self) -> str:
        return "gone"

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def rules(tmp_path_factory):
    return config_from(tmp_path_factory.mktemp("inhibition"), RULES).rules


def board(follower: Follower | None = None) -> FiringState:
    return FiringState(
        "firing", None, lambda handle: follower or Follower(), wall_clock=NOW.timestamp
    )


def event(status: str = "FIRING", **labels: str) -> dict:
    data = alert()
    data["alert"] = {**data["alert"], "status": status, "labels": labels}
    return data


def through(rules, data, firing: FiringState, telemetry: Telemetry | None = None):
    source = SourceMessage("events", 0, 7, b"k", as_json(data), ())
    decoders = {"events": EventDecoder("json", load_schema(SCHEMA))}
    return works_of(source, decoders, rules, telemetry or Telemetry(), NOW, firing=firing)


def test_a_dropped_source_still_fires_and_its_targets_end_inhibited(rules, caplog) -> None:
    firing, telemetry = board(), Telemetry()
    assert through(rules, event(**ZONE_DOWN), firing) == []  # dropped by its route
    caplog.set_level("INFO")
    works = through(rules, event(**WARNING), firing, telemetry)
    assert works == [] and isinstance(works, Inhibited) and isinstance(works, Muted)
    assert telemetry.inhibited.total(lambda a: a["rule"] == "zone-down") == 2  # both routes
    assert telemetry.routed.total() == 0
    assert f"by inhibit rule zone-down by source {fingerprint(ZONE_DOWN)}" in caplog.text


def test_a_target_of_another_zone_or_severity_is_sent(rules) -> None:
    firing = board()
    through(rules, event(**ZONE_DOWN), firing)
    assert len(through(rules, event(**{**WARNING, "zone": "eu-2"}), firing)) == 2
    assert len(through(rules, event(**{**WARNING, "severity": "critical"}), firing)) == 2


def test_a_target_resolve_always_goes_through(rules) -> None:
    firing = board()
    through(rules, event(**ZONE_DOWN), firing)
    works = through(rules, event("RESOLVED", **WARNING), firing)
    assert {w.payload["status"] for _, w in works} == {"resolved"} and len(works) == 2


def test_once_the_source_resolves_its_targets_are_sent(rules) -> None:
    firing = board()
    through(rules, event(**ZONE_DOWN), firing)
    assert through(rules, event(**WARNING), firing) == []
    through(rules, event("RESOLVED", **ZONE_DOWN), firing)
    assert len(through(rules, event(**WARNING), firing)) == 2


def test_an_unreadable_firing_topic_inhibits_nothing(rules) -> None:
    follower = Follower()
    firing = board(follower)
    through(rules, event(**ZONE_DOWN), firing)
    follower.failing = 1.0
    assert len(through(rules, event(**WARNING), firing)) == 2


def test_checks_are_neither_sources_nor_targets(rules) -> None:
    firing = board()
    through(rules, event(**ZONE_DOWN), firing)
    assert len(through(rules, check(), firing)) == 2


def test_an_inhibited_target_is_held_and_a_newer_delivery_of_its_key_settles_it(rules) -> None:
    firing = board()
    through(rules, event(**ZONE_DOWN), firing)
    through(rules, event(**WARNING), firing)
    held = sorted(firing.held.targets(), key=lambda h: h.destination)
    assert [(h.destination, h.route, h.offset) for h in held] == [
        ("a", "payments", 7),
        ("b", "everyone", 7),
    ]
    assert held[0].alert_labels == WARNING and held[0].body["status"] == "firing"
    works = through(rules, event("RESOLVED", **WARNING), firing)  # its key's newer state
    assert len(works) == 2 and firing.held.targets() == []


def test_once_the_source_resolves_the_held_target_is_due(rules) -> None:
    firing = board()
    through(rules, event(**ZONE_DOWN), firing)
    through(rules, event(**WARNING), firing)
    firing.held.show(Telemetry(), None, lambda: rules.inhibit_rules)
    assert firing.held.due([("events", 0)], 0.0) == []  # still inhibited
    through(rules, event("RESOLVED", **ZONE_DOWN), firing)
    assert len(firing.held.due([("events", 0)], 0.2)) == 2


def test_a_source_that_stops_inhibiting_by_its_until_releases_its_targets(rules) -> None:
    wall = [NOW.timestamp()]
    firing = FiringState("firing", None, lambda handle: Follower(), wall_clock=lambda: wall[0])
    firing.take("zone", FiringSource(ZONE_DOWN, wall[0], wall[0] + 60))  # no resolve comes
    through(rules, event(**WARNING), firing)
    firing.held.show(Telemetry(), None, lambda: rules.inhibit_rules)
    assert firing.held.due([("events", 0)], 0.0) == []
    wall[0] += 61  # past its `until` (Alertmanager: the target is active again)
    assert len(firing.held.due([("events", 0)], 5.0)) == 2


def test_a_held_target_is_settled_even_once_the_rules_have_no_inhibit_rule(rules, tmp_path) -> None:
    firing = board()
    through(rules, event(**ZONE_DOWN), firing)
    through(rules, event(**WARNING), firing)
    assert len(firing.held.targets()) == 2
    reloaded = config_from(tmp_path, RULES.split("inhibit_rules:")[0]).rules
    assert len(through(reloaded, event("RESOLVED", **WARNING), firing)) == 2
    assert firing.held.targets() == []  # never released after the resolve sent since


def test_a_silenced_resend_of_a_held_key_is_held_in_its_place(rules) -> None:
    """Red team F11: a held key's next firing, silenced at routing, is its latest state: it
    replaces the held record (checked against silences again at release), never settles it."""
    from streamer.silence_index import Silences
    from streamer.silences import Silence, parse_matchers

    firing = board()
    through(rules, event(**ZONE_DOWN), firing)
    through(rules, event(**WARNING), firing)
    matchers, _ = parse_matchers(['alertname="DiskSlow"'])
    quiet = Silence.new(matchers, duration=timedelta(hours=1), at=NOW - timedelta(minutes=1))
    source = SourceMessage("events", 0, 9, b"k", as_json(event(**WARNING)), ())
    decoders = {"events": EventDecoder("json", load_schema(SCHEMA))}
    book = Silences([quiet])
    works_of(source, decoders, rules, Telemetry(), NOW, silences=book, firing=firing)
    assert sorted(h.offset for h in firing.held.targets()) == [9, 9]
