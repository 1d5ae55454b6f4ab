"""The firing state shared through the firing topic (streamer/firing_state.py): what a
source event writes, what a replica reads, and failing open. The real topic is in
tests/test_engine_processes.py (an inhibition across replicas)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from streamer.firing_state import FiringState
from streamer.inhibition import InhibitRule, fingerprint
from streamer.label_matchers import label_matcher

RULES = (
    InhibitRule(
        "zone-down",
        source=(label_matcher("alertname", "=", "ZoneDown"),),
        target=(label_matcher("severity", "=", "warning"),),
        equal=("zone",),
    ),
)
NOW = 1_800_000_000.0


class Follower:
    def __init__(self) -> None:
        self.caught, self.failing = True, None

    def caught_up(self, since: float) -> bool:
        return self.caught

    def failing_since(self) -> float | None:
        return self.failing

    def problem(self) -> str:
        return "broker gone"

    def close(self) -> None:
        pass


class Message:
    def __init__(self, key: bytes, value: bytes | None) -> None:
        self._key, self._value = key, value

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return 0


class Producer:
    def __init__(self) -> None:
        self.records: list[tuple[str, bytes, bytes | None]] = []
        self.waiting: list[Callable[..., None]] = []
        self.flushed = 0

    def produce(self, topic: str, *, key: bytes, value: bytes | None, on_delivery: Any) -> None:
        self.records.append((topic, key, value))
        self.waiting.append(lambda: on_delivery(None, Message(key, value)))

    def flush(self, timeout: float) -> int:
        self.flushed += 1
        for ack in self.waiting:
            ack()
        self.waiting.clear()
        return 0


def state(producer: Producer | None = None) -> tuple[FiringState, Follower]:
    follower = Follower()
    firing = FiringState(
        "streamer.firing",
        producer,
        lambda handle: follower,
        resolve_timeout=300,
        clock=lambda: 0.0,
        wall_clock=lambda: NOW,
    )
    return firing, follower


def alert(status: str = "FIRING", ends_at: datetime | None = None, **labels: str) -> dict[str, Any]:
    return {"alert": {"status": status, "labels": labels, "ends_at": ends_at}}


ZONE_DOWN = {"alertname": "ZoneDown", "zone": "eu-1"}
WARNING = {"alertname": "DiskSlow", "severity": "warning", "zone": "eu-1"}


def test_a_firing_source_is_written_keyed_by_its_fingerprint_with_its_expiry() -> None:
    producer = Producer()
    firing, _ = state(producer)
    assert firing.observe(alert(**ZONE_DOWN), RULES) == fingerprint(ZONE_DOWN)
    ((topic, key, value),) = producer.records
    assert topic == "streamer.firing" and key == fingerprint(ZONE_DOWN).encode()
    assert value is not None
    assert json.loads(value) == {"labels": ZONE_DOWN, "at": NOW, "until": NOW + 300}
    ends = datetime.fromtimestamp(NOW + 60, UTC)
    firing.observe(alert(ends_at=ends, **ZONE_DOWN), RULES)
    assert json.loads(producer.records[-1][2] or b"")["until"] == NOW + 60


def test_a_resolve_or_a_past_ends_at_is_a_tombstone_and_other_alerts_write_nothing() -> None:
    producer = Producer()
    firing, _ = state(producer)
    firing.observe(alert("RESOLVED", **ZONE_DOWN), RULES)
    past = datetime.fromtimestamp(NOW - 1, UTC)
    firing.observe(alert(ends_at=past, **ZONE_DOWN), RULES)
    assert [value for _, _, value in producer.records] == [None, None]
    assert firing.observe(alert(**WARNING), RULES) is None
    assert firing.observe({"check": {"status": "CRITICAL"}}, RULES) is None
    assert firing.observe(alert(**ZONE_DOWN), ()) is None  # no rules: nothing is a source
    assert len(producer.records) == 2


def test_what_the_topic_says_inhibits_and_a_tombstone_ends_it() -> None:
    writer, _ = state(Producer())
    reader, _ = state()
    writer.observe(alert(**ZONE_DOWN), RULES)
    assert writer.inhibition(RULES, WARNING) is not None  # its own record, at once
    assert reader.inhibition(RULES, WARNING) is None
    record = json.dumps({"labels": ZONE_DOWN, "at": NOW, "until": NOW + 300}).encode()
    reader._read(Message(fingerprint(ZONE_DOWN).encode(), record))  # type: ignore[arg-type]
    found = reader.inhibition(RULES, WARNING)
    assert found is not None and found.rule == "zone-down"
    assert found.source.fingerprint == fingerprint(ZONE_DOWN)
    assert reader.firing(RULES)[0]["source"] == fingerprint(ZONE_DOWN)
    reader._read(Message(fingerprint(ZONE_DOWN).encode(), None))  # type: ignore[arg-type]
    assert reader.inhibition(RULES, WARNING) is None


def test_a_record_that_is_not_one_is_skipped() -> None:
    reader, _ = state()
    reader._read(Message(b"x", b"not json"))  # type: ignore[arg-type]
    reader._read(Message(b"y", b'{"labels": {"a": 1}, "at": 0, "until": 1}'))  # type: ignore[arg-type]
    assert reader.firing(RULES) == []


def test_an_unreadable_topic_inhibits_nothing_fail_open() -> None:
    firing, follower = state(Producer())
    firing.observe(alert(**ZONE_DOWN), RULES)
    assert firing.inhibition(RULES, WARNING) is not None
    follower.failing = 12.0  # the follower cannot read the topic
    assert firing.inhibition(RULES, WARNING) is None
    follower.failing = None
    assert firing.inhibition(RULES, WARNING) is not None


def test_nothing_is_inhibited_before_the_topic_was_read_to_its_end_once() -> None:
    firing, follower = state(Producer())
    follower.caught = False
    firing.observe(alert(**ZONE_DOWN), RULES)
    assert firing.inhibition(RULES, WARNING) is None
    follower.caught = True
    assert firing.inhibition(RULES, WARNING) is not None
    follower.caught = False  # later looks behind: still read once, it applies
    assert firing.inhibition(RULES, WARNING) is not None


def test_records_are_acknowledged_before_a_commit() -> None:
    producer = Producer()
    firing, _ = state(producer)
    firing.before_commit()
    assert producer.flushed == 0  # nothing written: a commit waits for nothing
    firing.observe(alert(**ZONE_DOWN), RULES)
    firing.before_commit()
    assert producer.flushed == 1
    firing.before_commit()
    assert producer.flushed == 1


# -- the real topic ------------------------------------------------------------------------


@pytest.mark.integration
def test_a_replica_started_later_reads_what_fires_from_the_compacted_topic(
    infrastructure, tmp_path
) -> None:
    """The topic is created compacted; a writer's records, acknowledged before a commit,
    are what a replica started afterwards knows (a restart loses nothing)."""
    from confluent_kafka import Producer as KafkaProducer
    from confluent_kafka.admin import AdminClient, ConfigResource

    from tests.rules_helpers import config_from

    topic = f"firing-{uuid.uuid4().hex[:8]}"
    config = config_from(
        tmp_path,
        f"""
        kafka: {{bootstrap_servers: "{infrastructure.bootstrap_servers}", firing_topic: {topic}}}
        default: {{destination: a}}
        inhibit_rules:
          - name: zone-down
            source_matchers: ['alertname="ZoneDown"']
            target_matchers: ['severity="warning"']
            equal: [zone]
        """,
    )
    producer = KafkaProducer({"bootstrap.servers": infrastructure.bootstrap_servers})
    writer = FiringState.of(config, producer)
    try:
        assert writer.wait_read(30)
        writer.observe(alert(**ZONE_DOWN), RULES)
        other = {**ZONE_DOWN, "zone": "eu-2"}
        writer.observe(alert(**other), RULES)
        writer.observe(alert("RESOLVED", **other), RULES)  # a tombstone
        writer.before_commit()
        assert writer._unacked == 0
    finally:
        writer.close()
    admin = AdminClient({"bootstrap.servers": infrastructure.bootstrap_servers})
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    described = admin.describe_configs([resource])[resource].result(30)
    assert described["cleanup.policy"].value == "compact"
    later = FiringState.of(config, None)  # a replica (re)started: reads it from the start
    try:
        assert later.wait_read(30)
        assert [s["labels"] for s in later.firing(RULES)] == [ZONE_DOWN]
        assert later.inhibition(RULES, WARNING) is not None
        assert later.inhibition(RULES, {**WARNING, "zone": "eu-2"}) is None
    finally:
        later.close()
    # and `rules test --firing-from-topic` says a warning of that zone is inhibited, and by what
    data = {**alert_event(), "alert": {**alert_event()["alert"], "labels": WARNING}}
    (tmp_path / "warning.json").write_text(json.dumps(data))
    command = [sys.executable, "-m", "streamer", "rules", "test", "--config", str(config.path)]
    done = subprocess.run(
        [*command, "--firing-from-topic", "--event", str(tmp_path / "warning.json")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    (result,) = json.loads(done.stdout)
    assert result["deliveries"] == []
    assert result["inhibited"][0]["source"] == fingerprint(ZONE_DOWN)


def alert_event() -> dict[str, Any]:
    from tests.rules_helpers import alert as full_alert

    data = full_alert()
    data["event_time"] = 1795000000000
    data["alert"] = {**data["alert"], "starts_at": 1795000000000}
    return data


def test_a_full_producer_queue_never_raises_into_routing() -> None:
    class Full(Producer):
        def produce(self, topic: str, **kwargs: Any) -> None:
            raise BufferError("queue full")

    producer = Full()
    firing, _ = state(producer)
    assert firing.observe(alert(**ZONE_DOWN), RULES) == fingerprint(ZONE_DOWN)
    assert producer.flushed == 1  # waited for room once
    assert firing.inhibition(RULES, WARNING) is not None  # this replica knows it still
