"""A silence added while deliveries wait: at its turn a muted delivery ends `silenced`,
takes no request and no slot of the rate limit, and the page behind it goes out at once.

Driven through the machine's one door (the `Harness` of tests/test_delivery_machine.py);
the shell's question (`quiet_with`) is `intake.silenced_at_turn` over a plain book."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from streamer.intake import quiet_at_turn
from streamer.silence_index import Silences, labels_of
from streamer.silences import Silence, parse_matchers
from tests.test_delivery_machine import P0, Harness, ScriptedIncidentIo


def event(h: Harness, key: str, kind: str, status: str = "firing") -> None:
    """A routed delivery with its labels, as intake makes it when silences are read."""
    job = h.event(key=key, status=status)
    assert job is not None
    job.work.labels = labels_of({"labels": {"kind": kind}})


def silence_storm(h: Harness) -> Silence:
    matchers, _ = parse_matchers(['kind="storm"'])
    at = datetime.fromtimestamp(h.clock(), UTC) - timedelta(minutes=1)
    silence = Silence.new(matchers, duration=timedelta(hours=1), at=at)
    book = Silences([silence])
    h.machine.quiet_with(lambda d, wall: quiet_at_turn(d, wall, h.telemetry, silences=book))
    return silence


def test_a_silence_added_while_a_storm_waits_lets_the_page_behind_it_go_at_once() -> None:
    h = Harness(ScriptedIncidentIo(), destination={"events_per_minute": 2})
    for n in range(6):
        event(h, f"storm-{n}", "storm")
    event(h, "page", "page")
    h.round()  # the limit lets 2 go; the rest of the storm and the page wait
    assert len(h.http.posted) == 2
    silence = silence_storm(h)
    h.round()  # no time passes: the limit is still spent, yet the page goes
    assert [p["n"] for p in h.http.posted] == [0, 1]  # nothing more yet: the window is full
    h.clock.advance(60)
    h.round()
    assert [p["n"] for p in h.http.posted] == [0, 1, 6]  # the page, not the storm
    assert h.telemetry.silenced.total(lambda a: a["silence"] == silence.id) == 4
    # every storm message is terminal: committed up to the end
    assert h.machine.unfinished(P0) == 0


def test_a_waiting_resolve_is_never_silenced() -> None:
    h = Harness(ScriptedIncidentIo(), destination={"events_per_minute": 1})
    event(h, "storm-0", "storm")
    event(h, "storm-1", "storm", status="resolved")
    h.round()
    silence_storm(h)
    h.clock.advance(60)
    h.round()
    assert [p["status"] for p in h.http.posted] == ["firing", "resolved"]


def test_without_labels_nothing_is_asked() -> None:
    h = Harness(ScriptedIncidentIo(), destination={"events_per_minute": 1})
    h.event(key="storm-0", status="firing")
    h.event(key="storm-1", status="firing")
    h.round()
    silence_storm(h)  # the deliveries carry no labels (no silences when routed)
    h.clock.advance(60)
    h.round()
    assert len(h.http.posted) == 2
