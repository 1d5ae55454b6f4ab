"""Dead letters go back to their source topic after a fix, filtered, and only once asked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime

import pytest
import yaml
from confluent_kafka import Consumer

from streamer.replay import REPLAYED_FROM, ReplayFilter
from streamer.testing import AlertSource, FakeIncidentIo
from tests.pipeline import TOKENS, Pipeline, check_event

T = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
LETTER = {"reason": "http-422", "dead_lettered_at": T.isoformat()}


@pytest.mark.parametrize(
    ("wanted", "matches"),
    [
        (ReplayFilter(), True),
        (ReplayFilter(reason="http-4"), True),
        (ReplayFilter(reason="decode:"), False),
        (ReplayFilter(key="db-1"), True),
        (ReplayFilter(key="db-2"), False),
        (ReplayFilter(since=T), True),  # since is inclusive
        (ReplayFilter(until=T), False),  # until is exclusive
        (ReplayFilter(since=datetime(2026, 11, 26, 10, tzinfo=UTC)), False),
    ],
)
def test_filters(wanted: ReplayFilter, matches: bool) -> None:
    assert wanted.matches(b"db-1", LETTER) is matches


def test_a_letter_without_a_time_never_matches_a_time_filter() -> None:
    assert not ReplayFilter(since=T).matches(b"k", {"reason": "x"})


def replay_cli(pipeline: Pipeline, *args: str, status: int = 0) -> dict:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "streamer",
            "dlq",
            "replay",
            "--config",
            str(pipeline.config_path),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **TOKENS},
    )
    assert result.returncode == status, result.stderr[-2000:]
    return json.loads(result.stdout)


@pytest.mark.integration
def test_a_dead_letter_replayed_after_the_fix_is_delivered(
    infrastructure, tmp_path, monkeypatch
) -> None:
    events = [check_event(f"host-{h}", "CRITICAL", n=h) for h in range(4)]
    with FakeIncidentIo(
        [AlertSource("SRC_A", TOKENS["TEST_TOKEN_A"]), AlertSource("SRC_B", TOKENS["TEST_TOKEN_B"])]
    ) as fake:
        fake.fail(422, count=1)  # incident.io refuses one payload (say, a field it rejects)
        pipeline = Pipeline(infrastructure, fake, tmp_path, monkeypatch=monkeypatch)
        pipeline.produce([*events, b"garbage"])
        pipeline.start()
        try:
            pipeline.wait_for(
                lambda: len(fake.events) == 3 and pipeline.engine.stats.dead_lettered == 2,
                "three delivered, two dead-lettered",
            )
            dry = replay_cli(pipeline, "--reason", "http-422", "--dry-run")
            assert (dry["matched"], dry["replayed"]) == (1, 0)
            assert dry["to_topics"] == {pipeline.topic: 1}
            report = replay_cli(pipeline, "--reason", "http-422")  # the fix is in: replay
            assert report["scanned"] == 2 and report["replayed"] == 1
            assert report["by_reason"] == {"http-422": 1}
            pipeline.wait_for(lambda: len(fake.events) == 4, "the replayed alert delivered")
        finally:
            pipeline.stop()
    delivered_hosts = sorted(e.payload["deduplication_key"] for e in fake.events)
    assert delivered_hosts == sorted(f"host-{h}//disk" for h in range(4))
    consumer = Consumer(
        {
            "bootstrap.servers": infrastructure.bootstrap_servers,
            "group.id": "replay-check",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([pipeline.topic])
    replayed = []
    for _ in range(40):
        message = consumer.poll(0.5)
        if message is not None and message.error() is None:
            headers = dict(message.headers() or [])
            if REPLAYED_FROM in headers:
                replayed.append(headers[REPLAYED_FROM].decode())
        if replayed:
            break
    consumer.close()
    assert replayed and replayed[0].startswith(f"{pipeline.dlq}[0]@")


@pytest.mark.integration
def test_deliver_sends_the_letters_route_straight_to_incident_io(
    infrastructure, tmp_path, monkeypatch
) -> None:
    """A fan-out event, refused by one destination: --deliver re-sends only that delivery,
    the other destination does not get it twice; what still fails is reported, exit 3."""
    with FakeIncidentIo(
        [AlertSource("SRC_A", TOKENS["TEST_TOKEN_A"]), AlertSource("SRC_B", TOKENS["TEST_TOKEN_B"])]
    ) as fake:
        fake.fail(422, count=1, source_id="SRC_B")
        pipeline = Pipeline(infrastructure, fake, tmp_path, monkeypatch=monkeypatch)
        config = yaml.safe_load(pipeline.config_path.read_text())
        config["routes"][0]["continue"] = True  # team b: to b, and on to a
        pipeline.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        pipeline.produce([check_event("db-1", "CRITICAL", team="b"), b"garbage"])
        pipeline.start()
        try:
            pipeline.wait_for(
                lambda: len(fake.events) == 1 and pipeline.engine.stats.dead_lettered == 2,
                "a delivered, b refused (422), the garbage dead-lettered",
            )
        finally:
            pipeline.stop()
        assert [e.source_id for e in fake.events] == ["SRC_A"]

        report = replay_cli(pipeline, "--deliver", "--reason", "http-422")
        assert report["delivered"] == 1 and report["failed"] == []
        assert report["to_destinations"] == {"b": 1}
        assert sorted(e.source_id for e in fake.events) == ["SRC_A", "SRC_B"]
        assert fake.events[-1].payload["deduplication_key"] == "db-1//disk"

        undecodable = replay_cli(pipeline, "--deliver", "--reason", "decode:", status=3)
        assert undecodable["delivered"] == 0
        [failure] = undecodable["failed"]
        assert failure["letter"].startswith(f"{pipeline.dlq}[0]@")
        assert failure["reason"].startswith("decode:")
        assert len(fake.events) == 2, "nothing more was sent"


def test_without_to_topic_only_topics_the_configuration_consumes_are_produced_to() -> None:
    from streamer.replay import target_topic

    known = {"events"}
    assert target_topic({"source_topic": "events"}, None, known) == ("events", None)
    assert target_topic({"source_topic": "payments.ledger"}, None, known) == (
        None,
        "payments.ledger",
    )
    assert target_topic({}, None, known) == (None, None)
    assert target_topic({"source_topic": "payments.ledger"}, "events-retry", known) == (
        "events-retry",
        None,
    )
