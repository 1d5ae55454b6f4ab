"""Liveness (guarantee 10): no wait without a reason. The machine is driven through its
door (tests/test_delivery_machine.py's Harness); another member's note is made by a real
`GroupBudget` (as in tests/test_group_budget.py) and fed as the group's notes are."""

from __future__ import annotations

import logging
import re

import pytest
from pydantic import SecretStr

from streamer.config import DeliverySettings, Destination, TokenSource
from streamer.delivery_events import NotesRead
from streamer.destinations import Destinations
from streamer.handover import HandOver
from streamer.liveness import KeyLimit, explain, partition_wait
from streamer.rate_limit import RollingWindowLimiter, acquire
from tests.test_delivery_machine import Harness, ScriptedIncidentIo, answer
from tests.test_group_budget import member, start

P0, P1, P2 = ("events", 0), ("events", 1), ("events", 2)


def stall_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "streamer.liveness" and r.levelno == logging.WARNING
    ]


def stalled_gauge(h: Harness) -> dict[str, float]:
    """`streamer_destination_stalled_seconds` as scraped: reason label -> value."""
    found = {}
    for line in h.telemetry.scrape().decode().splitlines():
        if line.startswith("streamer_destination_stalled_seconds{"):
            reason = re.search(r'reason="([^"]*)"', line)
            found[reason.group(1) if reason else ""] = float(line.rsplit(" ", 1)[1])
    return found


def pending(h: Harness) -> dict:
    return h.machine._out.pending.report.as_json(h.clock())["destinations"]["a"]


def test_a_stale_note_holding_the_group_ceiling_is_named_warned_once_and_measured(caplog):
    """Another member (its clock an hour ahead) started the whole limit on P2 and left:
    its note fills the group's ceiling for a window after it is first seen. This member's
    key waits with nothing started and neither a hold nor a 429: past the threshold that
    is a stall: one warning naming the reason and the writer, `/pending` says the same,
    the gauge counts the seconds; when the note ages out the key starts."""
    caplog.set_level(logging.INFO, logger="streamer.liveness")
    h = Harness(ScriptedIncidentIo(), {"events_per_minute": 10}, stall_warning_seconds=30.0)
    gone, gone_ds, gone_ledger = member(limit=10, writer="gone-member")
    gone_ledger.assign(P2)
    for offset in range(10):
        assert start(gone_ds, gone_ledger, P2, offset, 1.0)
    note = gone.notes({P2: 0}, now=1.0, wall=h.clock() + 3600.0, final=False)[P2]
    group = {P0: (-1001, None), P1: (-1001, None), P2: (0, note)}

    def look(seconds: int) -> None:
        for _ in range(seconds):
            h.clock.advance(1.0)
            h.feed(NotesRead(group, group=True))  # the group's notes, read every view
            h.round()

    h.feed(NotesRead(group, group=True))
    h.event(key="db-1//disk")
    look(29)
    assert h.http.posted == [] and stall_lines(caplog) == []
    assert pending(h)["why"]["reason"] == "ceiling" and pending(h)["stalled_seconds"] == 0
    assert stalled_gauge(h) == {"": 0.0}

    look(11)  # 40 s: past the threshold, logged once, not at every look
    [line] = stall_lines(caplog)
    assert "destination a is stalled" in line and "ceiling" in line and "gone-member" in line
    why = pending(h)["why"]
    assert why["reason"] == "ceiling" and why["writers"] == ["gone-member"]
    assert "gone-member (10)" in why["detail"] and why["frees_in_seconds"] > 0
    assert pending(h)["stalled_seconds"] >= 39
    assert pending(h)["oldest"][0]["reason"] == "ceiling"
    assert stalled_gauge(h)["ceiling"] >= 39

    look(25)  # the note's starts left the window a minute after it was first seen
    assert len(h.http.posted) == 1 and len(stall_lines(caplog)) == 1
    assert stalled_gauge(h) == {"": 0.0}
    assert any("no longer stalled" in r.getMessage() for r in caplog.records)


def test_a_destination_waiting_only_for_its_own_limit_is_not_stalled(caplog):
    """A backlog behind a limit of one a minute: each start waits a window, never two."""
    h = Harness(ScriptedIncidentIo(), {"events_per_minute": 1})
    for n in range(4):
        h.event(key=f"k{n}")
    for _ in range(200):
        h.clock.advance(1.0)
        h.round()
    assert len(h.http.posted) == 4 and stall_lines(caplog) == []
    h.event(key="last")
    h.clock.advance(1.0)
    h.round()
    assert pending(h)["why"]["reason"] == "window" and stalled_gauge(h) == {"": 0.0}


def test_a_held_destination_waits_with_a_reason_and_is_not_a_stall(caplog):
    h = Harness(
        ScriptedIncidentIo(*[answer(401)] * 20), hold_retry_seconds=600.0, stall_warning_seconds=5
    )
    h.event(key="x")
    for _ in range(30):
        h.clock.advance(1.0)
        h.round()
    assert pending(h)["why"]["reason"] == "hold" and pending(h)["stalled_seconds"] == 0
    assert stall_lines(caplog) == []


def test_a_share_cut_below_the_limit_is_told_with_how_it_was_cut() -> None:
    h = Harness(ScriptedIncidentIo(), {"events_per_minute": 10})
    h.feed(NotesRead({P0: (-1001, None), P1: (-1001, None), P2: (-1001, None)}, group=True))
    for n in range(8):  # by partitions: 2 of 3 owned, 6 of 10
        h.event(key=f"k{n}")
    for _ in range(5):
        h.clock.advance(1.0)
        h.round()
    why = pending(h)["why"]
    assert len(h.http.posted) == 6 and why["reason"] == "share", why
    assert "share of 6 of 10 a minute (by partitions: 2 of 3 owned)" in why["detail"]


def test_the_limiter_says_what_binds_without_changing_anything() -> None:
    limiter = RollingWindowLimiter(3, 10.0, margin=0.0)
    assert limiter.why(0.0) is None
    for _ in range(3):
        assert acquire([limiter], 1.0) is None
    window = limiter.why(2.0)
    assert window is not None and (window.constraint, window.until, window.own) == (
        "window",
        11.0,
        3,
    )
    limiter.pause_until(30.0)
    assert limiter.why(2.0).constraint == "paused"  # frees last
    limiter = RollingWindowLimiter(10, 10.0, margin=0.0)
    limiter.set_ceiling(10, [([1.0] * 6, 0), ([], 4)], writers=["w-busy", "w-share"])
    ceiling = limiter.why(2.0)
    assert ceiling is not None and ceiling.constraint == "ceiling"
    assert ceiling.writers == (("w-busy", 6), ("w-share", 4)) and ceiling.until == 11.0
    assert limiter.why(2.0) == ceiling  # asking twice: the same answer
    assert limiter.next_start(2.0) == 11.0  # and the hot path agrees


def test_an_api_key_shared_by_destinations_is_named_when_it_binds() -> None:
    settings = DeliverySettings(rate_limit_margin_seconds=0.0, requests_per_minute_per_api_key=2)
    ds = Destinations(settings)
    spec = Destination(alert_source_config_id="SRC", token=TokenSource(env="T"))
    token = SecretStr("tok-3f9a1c")
    ds.configure({"a": spec, "b": spec}, {"a": token, "b": token})
    assert ds["a"].take_slot(1.0) and ds["a"].take_slot(1.0)
    [(limiter, limit, names)] = ds.limiters()
    key = KeyLimit(limiter, limit, tuple(names), limiter.why(2.0))
    wait = explain(ds["b"], 2.0, key_limit=key, workers_free=True)
    assert wait.reason == "api-key" and wait.until == 61.0
    assert "the API key's rate limit" in wait.detail and "shared by a, b" in wait.detail
    assert "tok-3f9a1c" not in repr(wait)  # never the token


def test_a_partition_not_claimed_or_being_released_says_so() -> None:
    handover = HandOver(request_timeout=10.0)
    handover.take([P0])
    handover.begin([P1], drain_deadline=20.0)  # last start: 9.75
    assert partition_wait(P0, 5.0, handover).reason == "note"
    assert partition_wait(P1, 5.0, handover) is None
    assert partition_wait(P1, 9.75, handover).reason == "hand-over"
    handover.claimed(P0)
    assert partition_wait(P0, 5.0, handover) is None
