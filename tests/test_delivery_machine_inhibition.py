"""A source that fires while its targets wait: at its turn an inhibited delivery ends
`inhibited`, takes no request and no slot of the rate limit, and what is not inhibited goes
out at once; a resolve always goes. Driven through the machine's one door (the `Harness` of
tests/test_delivery_machine.py); the shell's question is `intake.quiet_at_turn`."""

from __future__ import annotations

from streamer.firing_state import FiringState
from streamer.inhibition import FiringSource, InhibitRule
from streamer.intake import quiet_at_turn
from streamer.label_matchers import label_matcher
from tests.test_delivery_machine import P0, Harness, ScriptedIncidentIo

RULES = (
    InhibitRule(
        "zone-down",
        source=(label_matcher("alertname", "=", "ZoneDown"),),
        target=(label_matcher("severity", "=", "warning"),),
        equal=("zone",),
    ),
)
ZONE_DOWN = {"alertname": "ZoneDown", "zone": "eu-1"}


class Follower:
    def caught_up(self, since: float) -> bool:
        return True

    def failing_since(self) -> float | None:
        return None

    def problem(self) -> str:
        return ""

    def close(self) -> None:
        pass


def event(h: Harness, key: str, severity: str, status: str = "firing") -> None:
    """A routed delivery with its alert's labels, as intake makes it with inhibit rules."""
    job = h.event(key=key, status=status)
    assert job is not None
    job.work.alert_labels = {"alertname": key, "severity": severity, "zone": "eu-1"}


def zone_down_fires(h: Harness) -> None:
    firing = FiringState("firing", None, lambda handle: Follower(), wall_clock=h.clock)
    now = h.clock()
    firing.take("zone-down", FiringSource(ZONE_DOWN, now, now + 3600))
    h.machine.quiet_with(
        lambda d, wall: quiet_at_turn(d, wall, h.telemetry, firing=firing, rules=RULES)
    )


def test_a_source_firing_while_its_warnings_wait_lets_the_page_behind_them_go() -> None:
    h = Harness(ScriptedIncidentIo(), destination={"events_per_minute": 2})
    for n in range(6):
        event(h, f"warning-{n}", "warning")
    event(h, "page", "critical")
    h.round()  # the limit lets 2 go; the rest of the warnings and the page wait
    assert len(h.http.posted) == 2
    zone_down_fires(h)
    h.clock.advance(60)
    h.round()
    assert [p["n"] for p in h.http.posted] == [0, 1, 6]  # the page, not the warnings
    assert h.telemetry.inhibited.total(lambda a: a["stage"] == "waiting") == 4
    assert h.machine.unfinished(P0) == 0  # every warning terminal: committed to the end


def test_a_waiting_resolve_is_never_inhibited() -> None:
    h = Harness(ScriptedIncidentIo(), destination={"events_per_minute": 1})
    event(h, "warning-0", "warning")
    event(h, "warning-1", "warning", status="resolved")
    h.round()
    zone_down_fires(h)
    h.clock.advance(60)
    h.round()
    assert [p["status"] for p in h.http.posted] == ["firing", "resolved"]


def test_without_alert_labels_nothing_is_asked() -> None:
    h = Harness(ScriptedIncidentIo(), destination={"events_per_minute": 1})
    h.event(key="warning-0", status="firing")
    h.event(key="warning-1", status="firing")
    h.round()
    zone_down_fires(h)  # the deliveries carry no alert labels (no inhibit rules when routed)
    h.clock.advance(60)
    h.round()
    assert len(h.http.posted) == 2
