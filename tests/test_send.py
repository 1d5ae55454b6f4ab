"""The producers' kit: `streamer send` and the README's "Writing events" producer.

What a producer team relies on: a message is keyed by the alerting thing (so its firing and
resolved share a partition), framed as the topic's format says, and read by the service as
sent; the README's producer snippet works as printed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import Consumer, TopicPartition

from streamer.decoding import EventDecoder, load_schema
from streamer.send import identity_key
from tests.pipeline import SCHEMA, TOKENS, Pipeline, check_event

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "events"


def streamer(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "streamer", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **TOKENS, **(env or {})},
        cwd=ROOT,
    )


def config_file(tmp_path: Path, topics: list[dict[str, Any]], **extra: Any) -> Path:
    config = {
        "kafka": {"bootstrap_servers": "127.0.0.1:1"},  # never reached by a dry run
        "reader_schema": str(SCHEMA),
        "topics": topics,
        "destinations": {
            "a": {"alert_source_config_id": "SRC_A", "token": {"env": "TEST_TOKEN_A"}}
        },
        "routes": [{"name": "all", "destination": "a"}],
        **extra,
    }
    path = tmp_path / "streamer.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def key(event: dict[str, Any] | Path) -> bytes:
    """The key `send` gives an event (as the reader schema reads it)."""
    raw = event.read_bytes() if isinstance(event, Path) else json.dumps(event).encode()
    return identity_key(EventDecoder("json", load_schema(SCHEMA)).decode(raw))


def test_the_key_is_the_alerting_thing_as_the_default_deduplication_key() -> None:
    alert = json.loads((EXAMPLES / "alert-firing.json").read_text())
    assert key(alert) == alert["alert"]["fingerprint"].encode()
    check = check_event("db-1", "CRITICAL")
    assert key(check) == b"db-1//disk"  # no service: host//check
    check["check"]["service"] = "postgres"
    assert key(check) == b"db-1/postgres/disk"
    # the firing and the resolved of one thing share the key, whatever else differs
    assert key(EXAMPLES / "alert-resolved.json") == key(alert)
    assert key(EXAMPLES / "check-ok.json") == key(EXAMPLES / "check-critical.json")


@pytest.mark.parametrize(
    ("topic", "framing"),
    [
        ({"name": "t", "format": "json"}, [r"\[0:\d+\] +7b 22 .* a JSON object"]),
        (
            {"name": "t", "format": "single-object"},
            [r"\[0:2\] +c3 01 ", r"\[2:10\] +\w\w( \w\w){7} +CRC-64-AVRO", r"\[10:\d+\] .* Avro"],
        ),
        (
            {
                "name": "t",
                "format": "raw",
                "writer_schema": str(SCHEMA.parent / "monitoring_event.v1.avsc"),
            },
            [r"\[0:\d+\] .* Avro, written with .*monitoring_event.v1.avsc"],
        ),
    ],
)
def test_dry_run_prints_the_framing_the_service_reads(
    tmp_path: Path, topic: dict[str, Any], framing: list[str]
) -> None:
    config = config_file(tmp_path, [topic])
    result = streamer(
        "send",
        "--config",
        config,
        "--topic",
        "t",
        "--event",
        EXAMPLES / "check-critical.json",
        "--dry-run",
    )
    assert result.returncode == 0, result.stderr
    assert f"format {topic['format']}" in result.stdout
    assert "key      b'db-1/postgres/disk_usage'" in result.stdout
    for pattern in framing:
        assert re.search(pattern, result.stdout), (pattern, result.stdout)
    assert "decodes  as streamer reads t: OK (nothing was sent)" in result.stdout


def test_send_refuses_what_the_service_would_not_read(tmp_path: Path) -> None:
    config = config_file(tmp_path, [{"name": "t", "format": "json"}])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"event_id": "x", "check": {"host": "h"}}))
    result = streamer("send", "--config", config, "--topic", "t", "--event", bad, "--dry-run")
    assert result.returncode == 1
    assert "not an event under the reader schema" in result.stderr
    other = streamer(
        "send", "--config", config, "--topic", "nope", "--event", EXAMPLES / "check-ok.json"
    )
    assert other.returncode == 1 and "no topic nope (its topics: t)" in other.stderr
    confluent = config_file(tmp_path, [{"name": "t", "format": "confluent"}])
    missing = streamer(
        "send", "--config", confluent, "--topic", "t", "--event", EXAMPLES / "check-ok.json"
    )
    assert missing.returncode == 1 and "needs schema_registry" in missing.stderr


def confluent_pipeline(pipeline: Pipeline) -> None:
    """The pipeline's topic in the confluent format, through the real registry."""
    config = yaml.safe_load(pipeline.config_path.read_text())
    config["topics"] = [{"name": pipeline.topic, "format": "confluent"}]
    config["schema_registry"] = {"url": pipeline.infra.schema_registry_url}
    pipeline.config_path.write_text(yaml.safe_dump(config, sort_keys=False))


def partitions_of(pipeline: Pipeline) -> dict[int, int]:
    """Messages per partition of the pipeline's topic."""
    consumer = Consumer({"bootstrap.servers": pipeline.infra.bootstrap_servers, "group.id": "c"})
    try:
        counts = {}
        for p in consumer.list_topics(pipeline.topic, timeout=10).topics[pipeline.topic].partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(pipeline.topic, p), 10)
            if high > low:
                counts[p] = high - low
        return counts
    finally:
        consumer.close()


@pytest.mark.integration
def test_send_produces_through_the_registry_and_the_service_delivers(
    infrastructure, fake, tmp_path, monkeypatch
) -> None:
    pipeline = Pipeline(infrastructure, fake, tmp_path, monkeypatch=monkeypatch)
    confluent_pipeline(pipeline)
    event = EXAMPLES / "alert-firing.json"
    dry = streamer(
        "send",
        "--config",
        pipeline.config_path,
        "--topic",
        pipeline.topic,
        "--event",
        event,
        "--dry-run",
    )
    assert dry.returncode == 1 and "a send without --dry-run registers it" in dry.stderr
    sent = streamer(
        "send",
        "--config",
        pipeline.config_path,
        "--topic",
        pipeline.topic,
        "--event",
        event,
        "--count",
        "3",
        "--rate",
        "20",
    )
    assert sent.returncode == 0, sent.stderr
    assert re.search(r"sent 3 of 3 to \S+ \(format confluent\) in [\d.]+ s", sent.stdout)
    assert "key '3f2a9c1e7b5d4a60'" in sent.stdout
    assert len(partitions_of(pipeline)) == 1, "one alerting thing, one partition"
    # now registered: the dry run shows the id the messages carry
    dry = streamer(
        "send",
        "--config",
        pipeline.config_path,
        "--topic",
        pipeline.topic,
        "--event",
        event,
        "--dry-run",
    )
    assert dry.returncode == 0, dry.stderr
    assert re.search(rf"\[1:5\] .* schema id \d+ \(subject {pipeline.topic}-value\)", dry.stdout)
    pipeline.deliver_all(3)
    keys = {e.payload["deduplication_key"] for e in fake.events}
    event_ids = {e.payload["metadata"]["event_id"] for e in fake.events}
    assert keys == {"3f2a9c1e7b5d4a60"} and len(event_ids) == 3  # a fresh id per copy


def readme_producer() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Writing events\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "one producer in Writing events"
    return blocks[0]


@pytest.mark.integration
def test_the_readme_producer_writes_what_the_service_delivers(
    infrastructure, fake, tmp_path, monkeypatch
) -> None:
    pipeline = Pipeline(infrastructure, fake, tmp_path, monkeypatch=monkeypatch)
    confluent_pipeline(pipeline)
    script = tmp_path / "producer.py"
    script.write_text(readme_producer())
    result = subprocess.run(
        [sys.executable, script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,  # the snippet reads schemas/ from the repository's root
        env={
            **os.environ,
            "TOPIC": pipeline.topic,
            "KAFKA_BOOTSTRAP_SERVERS": infrastructure.bootstrap_servers,
            "SCHEMA_REGISTRY_URL": infrastructure.schema_registry_url,
        },
    )
    assert result.returncode == 0, result.stderr
    pipeline.deliver_all(1)
    [delivered] = fake.events
    assert delivered.payload["deduplication_key"] == "db-1/postgres/disk"
    assert delivered.payload["status"] == "firing"
    assert delivered.payload["title"] == "disk on db-1 (postgres) is CRITICAL"
