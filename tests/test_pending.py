"""What waits and why: the report behind /pending and the gauges, the watermark log line."""

from __future__ import annotations

import json
import urllib.request

from streamer.metrics_server import serve
from streamer.pending import PendingKey, WatermarkWatch, pending_report
from streamer.telemetry import Telemetry

P0, P1 = ("events", 0), ("events", 1)


def waiting(key: str, offset: int, since: float, partition=P0, reason="window") -> PendingKey:
    return PendingKey("a", key, partition, offset, since, "queued", reason, False)


def test_the_report_lists_the_longest_waiting_keys_and_who_holds_each_watermark() -> None:
    keys = [waiting(f"k{i}", 10 + i, since=float(i)) for i in range(30)]
    keys.append(waiting("other", 3, since=50.0, partition=P1))
    report = pending_report(
        100.0, keys, destinations={"a": False, "b": True}, commit_offsets={P0: 10, P1: 2}
    )
    assert [k.deduplication_key for k in report.oldest["a"]][:3] == ["k0", "k1", "k2"]
    assert len(report.oldest["a"]) == 20 and report.waiting == {"a": 31, "b": 0}
    assert report.holders == {P0: keys[0]}  # P1's commit offset is not a waiting key's
    assert report.oldest_by_partition == {P0: 0.0, P1: 50.0}
    body = report.as_json(101.0)
    assert body["destinations"]["b"] == {
        "waiting_keys": 0,
        "held": True,
        "stalled_seconds": 0.0,
        "oldest": [],
    }
    first = body["destinations"]["a"]["oldest"][0]
    assert first == {
        "deduplication_key": "k0",
        "partition": "events[0]",
        "offset": 10,
        "waiting_seconds": 101.0,
        "state": "queued",
        "reason": "window",
        "urgent": False,
    }


def test_a_watermark_holder_is_reported_once_past_the_threshold_then_on_change() -> None:
    watch = WatermarkWatch(threshold=60.0)
    stuck = waiting("db-1//disk", 7, since=0.0)
    assert watch.observe(0.0, {P0: stuck}) == []
    assert watch.observe(59.0, {P0: stuck}) == []
    assert watch.observe(60.0, {P0: stuck}) == [(stuck, 60.0)]
    assert watch.observe(90.0, {P0: stuck}) == []  # once
    for limit in ("ceiling", "note", "share", "window"):  # the limits take turns binding
        assert watch.observe(91.0, {P0: waiting("db-1//disk", 7, 0.0, reason=limit)}) == []
    held = waiting("db-1//disk", 7, since=0.0, reason="hold")
    assert watch.observe(95.0, {P0: held}) == [(held, 95.0)]  # the reason changed
    other = waiting("web-1//http", 8, since=0.0)
    assert watch.observe(100.0, {P0: other}) == []  # a new holder starts its own clock
    assert watch.observe(160.0, {P0: other}) == [(other, 60.0)]
    assert watch.observe(170.0, {}) == [] and watch.observe(171.0, {P0: other}) == []


def test_pending_is_served_read_only_on_the_metrics_port() -> None:
    telemetry = Telemetry()
    telemetry.pending = lambda: {"destinations": {"a": {"waiting_keys": 1}}}
    server, url = serve(telemetry, "127.0.0.1", 0)
    try:
        with urllib.request.urlopen(f"{url}/pending", timeout=5) as answer:
            assert answer.headers["Content-Type"] == "application/json"
            assert json.load(answer) == {"destinations": {"a": {"waiting_keys": 1}}}
    finally:
        server.shutdown()
