"""Red team of silences and inhibition (issue 24): what a silence or an inhibit rule must
never do to an alert it does not mute, to a resolve, or to the replicas that read it.

Coalescing (`coalesce: latest`): a firing event that stands for an older resolve of its key
(`Job.stands_for`) and is silenced at its turn must not take the resolve with it: the
resolve is sent (a resolve is never silenced), then the firing ends silenced."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from streamer.intake import quiet_at_turn
from streamer.silence_index import Silences, labels_of
from streamer.silences import Silence, parse_matchers
from tests.test_delivery_machine import P0, Harness, ScriptedIncidentIo


def _event(h: Harness, key: str, kind: str, status: str = "firing") -> None:
    job = h.event(key=key, status=status)
    assert job is not None
    job.work.labels = labels_of({"labels": {"kind": kind}})


def _silence(h: Harness, kind: str) -> Silence:
    matchers, _ = parse_matchers([f'kind="{kind}"'])
    at = datetime.fromtimestamp(h.clock(), UTC) - timedelta(minutes=1)
    silence = Silence.new(matchers, duration=timedelta(hours=1), at=at)
    book = Silences([silence])
    h.machine.quiet_with(lambda d, wall: quiet_at_turn(d, wall, h.telemetry, silences=book))
    return silence


def test_a_resolve_a_silenced_firing_stood_for_is_still_sent() -> None:
    h = Harness(ScriptedIncidentIo(), destination={"events_per_minute": 1})
    _event(h, "k", "db")  # e0 firing: delivered
    h.round()
    _event(h, "k", "db", status="resolved")  # e1: waits for the limit
    _event(h, "k", "db")  # e2 firing again: stands for e1 (coalesce: latest)
    h.round()
    assert [p["n"] for p in h.http.posted] == [0]
    _silence(h, "db")  # added while they wait: e2 is muted at its turn
    for _ in range(3):
        h.clock.advance(60)
        h.round()
    # incident.io got the firing: it must get the resolve that followed it
    assert [(p["n"], p["status"]) for p in h.http.posted] == [(0, "firing"), (1, "resolved")]
    assert h.machine.unfinished(P0) == 0


def test_only_the_newest_resolve_is_sent_and_every_message_ends() -> None:
    h = Harness(ScriptedIncidentIo(), destination={"events_per_minute": 1})
    _event(h, "k", "db")  # e0 firing: delivered
    h.round()
    _event(h, "k", "db", status="resolved")  # e1
    _event(h, "k", "db")  # e2
    _event(h, "k", "db", status="resolved")  # e3: the newest resolve
    _event(h, "k", "db")  # e4
    _event(h, "k", "db")  # e5: stands for e1..e4
    h.round()
    _silence(h, "db")
    for _ in range(3):
        h.clock.advance(60)
        h.round()
    assert [(p["n"], p["status"]) for p in h.http.posted] == [(0, "firing"), (3, "resolved")]
    assert h.machine.unfinished(P0) == 0  # e1, e2 with e3; e4 with e5


def test_a_firing_standing_for_firings_only_ends_them_silenced() -> None:
    h = Harness(ScriptedIncidentIo(), destination={"events_per_minute": 1})
    _event(h, "k", "db")
    h.round()
    for _ in range(3):
        _event(h, "k", "db")
    h.round()
    _silence(h, "db")
    h.clock.advance(60)
    h.round()
    assert [p["n"] for p in h.http.posted] == [0]
    assert h.machine.unfinished(P0) == 0


def test_a_resolve_an_inhibited_firing_stood_for_is_still_sent() -> None:
    from tests.test_delivery_machine_inhibition import event as target
    from tests.test_delivery_machine_inhibition import zone_down_fires

    h = Harness(ScriptedIncidentIo(), destination={"events_per_minute": 1})
    target(h, "k", "warning")  # e0 firing: delivered
    h.round()
    target(h, "k", "warning", status="resolved")  # e1: waits for the limit
    target(h, "k", "warning")  # e2 firing again: stands for e1
    h.round()
    zone_down_fires(h)  # its source fires while they wait: e2 is inhibited at its turn
    for _ in range(3):
        h.clock.advance(60)
        h.round()
    assert [(p["n"], p["status"]) for p in h.http.posted] == [(0, "firing"), (1, "resolved")]
    assert h.machine.unfinished(P0) == 0
