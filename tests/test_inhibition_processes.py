"""Inhibition across replicas (issue 24, "Must show"): `streamer run` as two processes on a
real broker, the source alert on a partition one replica owns, its targets on a partition the
other owns. The firing state crosses between them only through the firing topic."""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import Producer

from streamer.inhibition import fingerprint
from tests.pipeline import Pipeline, ServiceProcess

pytestmark = pytest.mark.integration

T0 = int(datetime(2026, 12, 7, 12, 0, tzinfo=UTC).timestamp() * 1000)


def alert_event(name: str, status: str, n: int, **labels: str) -> dict[str, Any]:
    all_labels = {"alertname": name, **labels}
    return {
        "event_id": str(uuid.uuid4()),
        "event_time": T0 + n,
        "source_system": "ALERTMANAGER",
        "severity": "WARNING",
        "labels": {"team": "a"},
        "alert": {
            "status": status,
            "labels": all_labels,
            "annotations": {"summary": f"{name} {n}"},
            "starts_at": T0,
            "ends_at": None,
            "generator_url": None,
            "fingerprint": "-".join(f"{k}={v}" for k, v in sorted(all_labels.items())),
        },
    }


def owners(processes: list[ServiceProcess], topic: str) -> dict[int, int]:
    """Partition -> the index of the process that owns it now, from their logs' assigned and
    revoked lines in time order (assignments are incremental: cooperative-sticky)."""
    changes = []
    for i, process in enumerate(processes):
        for line in process.log().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            message = str(entry.get("message", ""))
            kind = message.split(" ", 1)[0]
            if kind in ("assigned", "revoked"):
                found = re.findall(rf"{re.escape(topic)}\[(\d+)\]", message.split(" (")[0])
                changes.append((entry["time"], kind, i, [int(p) for p in found]))
    owned: dict[int, int] = {}
    for _, kind, i, partitions in sorted(changes):
        for partition in partitions:
            if kind == "assigned":
                owned[partition] = i
            elif owned.get(partition) == i:
                del owned[partition]
    return owned


def pending(process: ServiceProcess) -> dict[str, Any]:
    found = re.search(r"metrics: (http://\S+)/metrics", process.log())
    assert found, process.log()[-2000:]
    with urllib.request.urlopen(f"{found.group(1)}/pending", timeout=5) as answer:
        return json.loads(answer.read())


def metrics(process: ServiceProcess) -> str:
    found = re.search(r"metrics: (http://\S+)/metrics", process.log())
    assert found, process.log()[-2000:]
    with urllib.request.urlopen(f"{found.group(1)}/metrics", timeout=5) as answer:
        return str(answer.read().decode())


def value(scraped: str, name: str, **labels: str) -> float | None:
    """A sample's value from Prometheus text, by name and some of its labels."""
    for line in scraped.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_a_source_on_one_replica_inhibits_targets_on_another(
    infrastructure, fake, tmp_path: Path, monkeypatch
) -> None:
    pipeline = Pipeline(infrastructure, fake, tmp_path, monkeypatch=monkeypatch, partitions=2)
    config = yaml.safe_load(pipeline.config_path.read_text())
    config["kafka"]["firing_topic"] = f"firing-{uuid.uuid4().hex[:8]}"
    config["inhibit_rules"] = [
        {
            "name": "zone-down",
            "source_matchers": ['alertname="ZoneDown"'],
            "target_matchers": ['severity="warning"'],
            "equal": ["zone"],
        }
    ]
    pipeline.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    producer = Producer({"bootstrap.servers": infrastructure.bootstrap_servers})

    def produce(partition: int, events: list[dict[str, Any]]) -> None:
        for event in events:
            key = event["alert"]["fingerprint"].encode()
            producer.produce(pipeline.topic, json.dumps(event).encode(), key, partition)
        assert producer.flush(30) == 0

    processes = [ServiceProcess(pipeline, tmp_path / f"p{i}.log") for i in range(2)]
    try:
        pipeline.wait_for(
            lambda: sorted(owners(processes, pipeline.topic).values()) == [0, 1],
            "each replica owning one partition",
        )
        owned = owners(processes, pipeline.topic)
        source_partition, target_partition = 0, 1
        target_owner = processes[owned[target_partition]]
        assert owned[source_partition] != owned[target_partition]

        zone_down = alert_event("ZoneDown", "FIRING", 0, zone="eu-1", severity="critical")
        produce(source_partition, [zone_down])
        source_fp = fingerprint(zone_down["alert"]["labels"])
        # the target's replica knows the source fires only through the firing topic
        pipeline.wait_for(
            lambda: (
                [s["source"] for s in pending(target_owner).get("inhibiting", [])] == [source_fp]
            ),
            "the other replica reading the source as firing",
        )
        scraped = metrics(target_owner)
        assert value(scraped, "streamer_inhibition_sources_firing", rule="zone-down") == 1
        assert value(scraped, "streamer_inhibition_readable") == 1
        warnings = [
            alert_event(f"Warn{n}", "FIRING", n, zone="eu-1", severity="warning")
            for n in range(1, 21)
        ]
        elsewhere = [
            alert_event(f"Other{n}", "FIRING", n, zone="eu-2", severity="warning")
            for n in range(1, 6)
        ]
        produce(target_partition, warnings + elsewhere)
        pipeline.wait_for(pipeline_committed(pipeline), "every offset committed")
        titles = [e.payload["title"] for e in fake.events]
        assert "ZoneDown 0" in titles
        # (distinct keys: delivered concurrently, in any order)
        assert sorted(t for t in titles if t.startswith("Other")) == [
            f"Other{n} {n}" for n in range(1, 6)
        ]
        assert not [t for t in titles if t.startswith("Warn")]  # inhibited, committed
        assert f"by source {source_fp}" in target_owner.log()
        counted = value(
            metrics(target_owner), "streamer_events_inhibited_total", rule="zone-down", route="to-a"
        )
        assert counted == 20

        zone_up = alert_event("ZoneDown", "RESOLVED", 30, zone="eu-1", severity="critical")
        produce(source_partition, [zone_up])
        pipeline.wait_for(
            lambda: not pending(target_owner).get("inhibiting"),
            "the other replica reading the source as resolved",
        )
        again = alert_event("Warn1", "FIRING", 31, zone="eu-1", severity="warning")
        produce(target_partition, [again])
        pipeline.wait_for(
            lambda: "Warn1 31" in [e.payload["title"] for e in fake.events],
            "a target delivered once its source resolved",
        )
    finally:
        for process in processes:
            if process.process.poll() is None:
                process.signal(signal.SIGTERM)
        for process in processes:
            assert process.wait() == 0, process.log()[-3000:]


def inhibiting_pipeline(infrastructure, fake, tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    pipeline = Pipeline(infrastructure, fake, tmp_path, monkeypatch=monkeypatch, partitions=2)
    config = yaml.safe_load(pipeline.config_path.read_text())
    config["kafka"]["firing_topic"] = f"firing-{uuid.uuid4().hex[:8]}"
    config["inhibit_rules"] = [
        {
            "name": "zone-down",
            "source_matchers": ['alertname="ZoneDown"'],
            "target_matchers": ['severity="warning"'],
            "equal": ["zone"],
        }
    ]
    pipeline.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    producer = Producer({"bootstrap.servers": infrastructure.bootstrap_servers})

    def produce(partition: int, events: list[dict[str, Any]]) -> None:
        for event in events:
            key = event["alert"]["fingerprint"].encode()
            producer.produce(pipeline.topic, json.dumps(event).encode(), key, partition)
        assert producer.flush(30) == 0

    return pipeline, produce


def titles(fake) -> list[str]:  # type: ignore[no-untyped-def]
    return [e.payload["title"] for e in fake.events]


def stop(processes: list[ServiceProcess]) -> None:
    for process in processes:
        if process.process.poll() is None:
            process.signal(signal.SIGTERM)
    for process in processes:
        assert process.wait() == 0, process.log()[-3000:]


def test_once_the_source_resolves_each_targets_latest_state_is_delivered_once(
    infrastructure, fake, tmp_path: Path, monkeypatch
) -> None:
    pipeline, produce = inhibiting_pipeline(infrastructure, fake, tmp_path, monkeypatch)
    processes = [ServiceProcess(pipeline, tmp_path / f"p{i}.log") for i in range(2)]
    try:
        pipeline.wait_for(
            lambda: sorted(owners(processes, pipeline.topic).values()) == [0, 1],
            "each replica owning one partition",
        )
        owned = owners(processes, pipeline.topic)
        target_owner = processes[owned[1]]
        assert owned[0] != owned[1]  # the source on one replica, its targets on the other
        produce(0, [alert_event("ZoneDown", "FIRING", 0, zone="eu-1", severity="critical")])
        pipeline.wait_for(
            lambda: bool(pending(target_owner).get("inhibiting")), "the source read as firing"
        )
        produce(
            1,
            [
                alert_event("Warn1", "FIRING", 1, zone="eu-1", severity="warning"),
                alert_event("Warn1", "FIRING", 2, zone="eu-1", severity="warning"),  # latest
                alert_event("Warn2", "FIRING", 3, zone="eu-1", severity="warning"),
                alert_event("Warn2", "RESOLVED", 4, zone="eu-1", severity="warning"),  # newer
            ],
        )
        pipeline.wait_for(pipeline_committed(pipeline), "every offset committed")
        assert [t for t in titles(fake) if t.startswith("Warn")] == ["Warn2 4"]  # the resolve
        assert pending(target_owner)["inhibition_held"] == 1
        assert value(metrics(target_owner), "streamer_inhibition_held") == 1

        resolved_at = time.monotonic()
        produce(0, [alert_event("ZoneDown", "RESOLVED", 5, zone="eu-1", severity="critical")])
        pipeline.wait_for(lambda: "Warn1 2" in titles(fake), "the held target delivered")
        took = time.monotonic() - resolved_at
        print(f"held target delivered {took:.2f} s after its source's resolve was produced")
        pipeline.wait_for(
            lambda: all(pending(p)["inhibition_held"] == 0 for p in processes),
            "its held record tombstoned",
        )
        sent = [t for t in titles(fake) if t.startswith("Warn")]
        assert sent == ["Warn2 4", "Warn1 2"], sent  # once; never Warn1 1, never Warn2 3
        assert took < 5, f"released {took:.1f} s after the source resolved"
    finally:
        stop(processes)


def test_the_next_owner_releases_what_a_replica_stopped_while_holding(
    infrastructure, fake, tmp_path: Path, monkeypatch
) -> None:
    pipeline, produce = inhibiting_pipeline(infrastructure, fake, tmp_path, monkeypatch)
    first = ServiceProcess(pipeline, tmp_path / "first.log")
    processes = [first]
    try:
        pipeline.wait_for(lambda: len(owners([first], pipeline.topic)) == 2, "it owns both")
        produce(0, [alert_event("ZoneDown", "FIRING", 0, zone="eu-1", severity="critical")])
        pipeline.wait_for(lambda: bool(pending(first).get("inhibiting")), "the source firing")
        produce(
            1,
            [
                alert_event("Warn1", "FIRING", 1, zone="eu-1", severity="warning"),
                alert_event("Warn1", "RESOLVED", 2, zone="eu-1", severity="warning"),  # newer
                alert_event("Warn2", "FIRING", 3, zone="eu-1", severity="warning"),
            ],
        )
        pipeline.wait_for(pipeline_committed(pipeline), "every offset committed")
        assert pending(first)["inhibition_held"] == 1
        stop([first])

        second = ServiceProcess(pipeline, tmp_path / "second.log")
        processes = [second]
        pipeline.wait_for(lambda: len(owners([second], pipeline.topic)) == 2, "it owns both")
        pipeline.wait_for(
            lambda: pending(second).get("inhibition_held") == 1, "the held target read"
        )
        assert "Warn2 3" not in titles(fake)  # still inhibited: the source fires
        produce(0, [alert_event("ZoneDown", "RESOLVED", 4, zone="eu-1", severity="critical")])
        pipeline.wait_for(lambda: "Warn2 3" in titles(fake), "the next owner releasing it")
        pipeline.wait_for(
            lambda: pending(second)["inhibition_held"] == 0, "its held record tombstoned"
        )
        sent = [t for t in titles(fake) if t.startswith("Warn")]
        assert sent == ["Warn1 2", "Warn2 3"], sent  # the stale Warn1 1 never
    finally:
        stop([p for p in processes if p.process.returncode is None])


def pipeline_committed(pipeline: Pipeline):  # type: ignore[no-untyped-def]
    return lambda: pipeline.committed() == pipeline.end_offsets()
