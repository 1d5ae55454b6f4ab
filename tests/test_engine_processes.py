"""`streamer run` as real processes: killed, stopped, scaled out and in, under load.

What an on-call engineer needs from these: no alert is lost, the alerts of one thing keep
their order, and after a crash the last word on every thing is its latest state.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest
import yaml

from streamer.testing import FakeIncidentIo
from tests.pipeline import Pipeline, ServiceProcess, check_event

pytestmark = pytest.mark.integration


def flapping(hosts: int, flips: int) -> list[dict]:
    return [
        check_event(f"host-{h}", "CRITICAL" if i % 2 == 0 else "OK", n=i)
        for i in range(flips)
        for h in range(hosts)
    ]


def delivered_ids(fake: FakeIncidentIo) -> list[str]:
    return [e.payload["metadata"]["event_id"] for e in fake.events]


def first_deliveries_per_key(fake: FakeIncidentIo) -> dict[str, list[str]]:
    """Per thing, its events in the order they first reached incident.io."""
    seen: set[str] = set()
    out: dict[str, list[str]] = {}
    for e in fake.events:
        event_id = e.payload["metadata"]["event_id"]
        if event_id not in seen:
            seen.add(event_id)
            out.setdefault(e.payload["deduplication_key"], []).append(event_id)
    return out


def produced_per_key(events: list[dict]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for e in events:
        out.setdefault(f"{e['check']['host']}//disk", []).append(e["event_id"])
    return out


def last_words(fake: FakeIncidentIo) -> dict[str, str]:
    """Per thing, the event incident.io heard last: what its alert shows now."""
    return {e.payload["deduplication_key"]: e.payload["metadata"]["event_id"] for e in fake.events}


def all_committed(pipeline: Pipeline) -> bool:
    return pipeline.committed() == pipeline.end_offsets()


SLOW = """
max_unfinished: 40
workers: 2
commit_every_messages: 10
"""


def restart_until_all_delivered(pipeline: Pipeline, log: Path, events: list[dict]) -> None:
    """A next owner runs until every event reached incident.io and every offset is
    committed, then stops cleanly."""
    process = ServiceProcess(pipeline, log)
    try:
        pipeline.wait_for(
            lambda: all_committed(pipeline) and set(delivered_ids(pipeline.fake)) >= ids(events),
            "the rest delivered and committed by the next owner",
        )
    finally:
        process.signal(signal.SIGTERM)
        assert process.wait() == 0, process.log()[-3000:]


def assert_nothing_lost_and_in_order(fake: FakeIncidentIo, events: list[dict]) -> None:
    assert set(delivered_ids(fake)) == ids(events)  # nothing lost
    assert first_deliveries_per_key(fake) == produced_per_key(events)  # per-key order
    # the last word on every thing is its latest state
    assert last_words(fake) == {k: v[-1] for k, v in produced_per_key(events).items()}


def ids(events: list[dict]) -> set[str]:
    return {e["event_id"] for e in events}


def first_owner_under_way(
    pipeline: Pipeline, log: Path, events: list[dict], delivered: int
) -> ServiceProcess:
    """`events` produced and a first `streamer run` delivering them, `delivered` so far."""
    pipeline.produce(events)
    process = ServiceProcess(pipeline, log)
    pipeline.wait_for(
        lambda: len(pipeline.fake.events) >= delivered, "deliveries under way", limit=60
    )
    return process


def test_sigkill_mid_stream_then_restart_loses_nothing(
    infrastructure, fake, tmp_path, monkeypatch
) -> None:
    events = flapping(hosts=20, flips=10)
    fake.delay(0.02)
    pipeline = Pipeline(infrastructure, fake, tmp_path, monkeypatch=monkeypatch, delivery=SLOW)
    first = first_owner_under_way(pipeline, tmp_path / "first.log", events, delivered=50)
    first.signal(signal.SIGKILL)
    assert first.wait() == -signal.SIGKILL
    restart_until_all_delivered(pipeline, tmp_path / "second.log", events)
    assert_nothing_lost_and_in_order(fake, events)
    # At most what was fetched but not committed when the process died comes again:
    # the in-flight cap plus the terminal events of one commit interval.
    delivered = delivered_ids(fake)
    assert len(delivered) - len(set(delivered)) <= 40 + 10


def test_sigterm_drains_commits_and_leaves_nothing_to_redo(
    infrastructure, fake, tmp_path, monkeypatch
) -> None:
    events = flapping(hosts=10, flips=12)
    fake.delay(0.05)
    pipeline = Pipeline(infrastructure, fake, tmp_path, monkeypatch=monkeypatch, delivery=SLOW)
    first = first_owner_under_way(pipeline, tmp_path / "first.log", events, delivered=30)
    first.signal(signal.SIGTERM)
    assert first.wait(timeout=30) == 0, first.log()[-3000:]
    assert len(fake.events) < len(events)  # it stopped mid-stream
    restart_until_all_delivered(pipeline, tmp_path / "second.log", events)
    assert_nothing_lost_and_in_order(fake, events)
    assert len(fake.events) == len(events)  # and nothing twice: the drain committed it all


def _set_limit(pipeline: Pipeline, per_minute: int, grace: float) -> None:
    config = yaml.safe_load(pipeline.config_path.read_text())
    config["destinations"]["a"]["events_per_minute"] = per_minute
    config["delivery"]["shutdown_grace_seconds"] = grace
    pipeline.config_path.write_text(yaml.safe_dump(config, sort_keys=False))


def test_sigterm_behind_a_rate_limit_does_not_wait_out_the_grace(
    infrastructure, fake, tmp_path, monkeypatch
) -> None:
    """An alert storm held back by incident.io's limit, then a rollout: what cannot start
    before the grace period ends is left to the next owner at once, not after the whole
    grace (which would hold every rollout and scale-in), and none of it is lost."""
    events = flapping(hosts=8, flips=5)
    pipeline = Pipeline(infrastructure, fake, tmp_path, monkeypatch=monkeypatch)
    grace = 60.0
    _set_limit(pipeline, per_minute=10, grace=grace)  # 10 now, the next only in a minute
    first = first_owner_under_way(pipeline, tmp_path / "first.log", events, delivered=10)
    started = time.monotonic()
    first.signal(signal.SIGTERM)
    assert first.wait(timeout=grace + 30) == 0, first.log()[-3000:]
    assert time.monotonic() - started < grace / 2, "it waited for the rate limit to reopen"
    assert "could not start before" in first.log()
    assert len(fake.events) == 10
    _set_limit(pipeline, per_minute=1_000_000, grace=10)
    restart_until_all_delivered(pipeline, tmp_path / "second.log", events)
    assert_nothing_lost_and_in_order(fake, events)


def test_three_processes_joining_and_leaving_under_load(
    infrastructure, fake, tmp_path, monkeypatch
) -> None:
    events = flapping(hosts=30, flips=20)
    fake.delay(0.005)
    pipeline = Pipeline(infrastructure, fake, tmp_path, monkeypatch=monkeypatch, partitions=6)

    def produce_steadily() -> None:
        for start in range(0, len(events), 30):
            pipeline.produce(events[start : start + 30])
            threading.Event().wait(0.1)

    producer = threading.Thread(target=produce_steadily)
    producer.start()
    processes = [ServiceProcess(pipeline, tmp_path / "p1.log")]
    try:
        pipeline.wait_for(lambda: len(fake.events) >= 100, "the first process delivering")
        processes += [ServiceProcess(pipeline, tmp_path / f"p{i}.log") for i in (2, 3)]
        pipeline.wait_for(lambda: all(p.joined() for p in processes), "three members joined")
        processes[1].signal(signal.SIGTERM)  # one leaves while the load goes on
        assert processes[1].wait() == 0, processes[1].log()[-3000:]
        producer.join()
        pipeline.wait_for(lambda: all_committed(pipeline), "everything committed")
    finally:
        producer.join()
        for process in processes:
            if process.process.poll() is None:
                process.signal(signal.SIGTERM)
                assert process.wait() == 0, process.log()[-3000:]
    assert_nothing_lost_and_in_order(fake, events)
    # A handover can redeliver what the old owner could not commit before letting go (the
    # broker refuses commits from a generation that has moved on): a few, never many.
    delivered = delivered_ids(fake)
    assert len(delivered) - len(set(delivered)) <= 60, len(delivered) - len(set(delivered))
    logs = "".join(p.log() for p in processes)
    assert "revoked" in logs and "assigned" in logs
