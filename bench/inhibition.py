"""Inhibition: a zone down, its critical alert, and 1,000 warnings it inhibits.

Run: `make bench-inhibition` (or `python bench/inhibition.py [--warnings N] [--speedup S]`).
A `ZoneDown` critical fires for zone eu-1, then WARNINGS warning alerts of services in that
zone fire (one alert source, 120 events per window, on the incident.io double that enforces
the same limit). Measured with the inhibit rule (`source_matchers: [alertname="ZoneDown"]`,
`target_matchers: [severity="warning"]`, `equal: [zone]`) and without it (every warning
sent: the raw baseline), in the same run, each on a fresh topic, group and firing topic: the
requests incident.io received (202s and 429s) until every message is committed, and the time
from the first request until then. Time is compressed as in bench/storm.py (window 60/SPEEDUP
seconds, durations also scaled back to incident.io's minute). Three runs:

- `critical first`: the critical, then (once it is accepted) the warnings: the source is
  known when they are routed;
- `critical last`: the warnings, then (once the first of them is accepted) the critical:
  the warnings already queued behind the limit are inhibited at their turn;
- `no rule`: the critical, then the warnings, every one sent (the raw baseline).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from streamer.config import load_config
from streamer.engine import Engine
from streamer.testing import AlertSource, FakeIncidentIo
from streamer.testing.infra import Infrastructure, local_infrastructure

SCHEMA = Path(__file__).resolve().parent.parent / "schemas" / "monitoring_event.v2.avsc"
TOKEN = "bench-token"
PER_WINDOW = 120
RULE = {
    "name": "zone-down",
    "source_matchers": ['alertname="ZoneDown"'],
    "target_matchers": ['severity="warning"'],
    "equal": ["zone"],
}


def alert(name: str, severity: str) -> tuple[str, bytes]:
    labels = {"alertname": name, "severity": severity, "zone": "eu-1"}
    now = int(time.time() * 1000)
    event = {
        "event_id": str(uuid.uuid4()),
        "event_time": now,
        "source_system": "ALERTMANAGER",
        "severity": severity.upper(),
        "labels": {"team": "bench"},
        "alert": {
            "status": "FIRING",
            "labels": labels,
            "annotations": {"summary": name},
            "starts_at": now,
            "ends_at": None,
            "generator_url": None,
            "fingerprint": name,
        },
    }
    return name, json.dumps(event).encode()


def config(
    infra: Infrastructure,
    folder: Path,
    fake: FakeIncidentIo,
    topic: str,
    inhibit: bool,
    window: float,
) -> Path:
    path = folder / f"{topic}.yaml"
    settings: dict[str, Any] = {
        "kafka": {
            "bootstrap_servers": infra.bootstrap_servers,
            "group_id": f"bench-{topic}",
            "dead_letter_topic": f"{topic}-dlq",
            "firing_topic": f"{topic}-firing",
        },
        "reader_schema": str(SCHEMA),
        "topics": [{"name": topic, "format": "json"}],
        "destinations": {
            "zone": {
                "alert_source_config_id": "SRC-zone",
                "token": {"env": "BENCH_TOKEN"},
                "url": fake.url,
                "events_per_minute": PER_WINDOW,
            }
        },
        "delivery": {
            "requests_per_minute_per_api_key": 10_000_000,
            "rate_limit_window_seconds": window,
            "rate_limit_margin_seconds": 0.5 * window / 60,
            "rate_limit_share": 1.0,
            "commit_interval_seconds": 0.5,
        },
        "routes": [{"name": "zone", "destination": "zone"}],
    }
    if inhibit:
        settings["inhibit_rules"] = [RULE]
    path.write_text(yaml.safe_dump(settings))
    return path


def committed_all(infra: Infrastructure, topic: str, group: str, partitions: int) -> bool:
    consumer = Consumer({"bootstrap.servers": infra.bootstrap_servers, "group.id": group})
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        done = consumer.committed(tps, timeout=10)
        ends = [consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in tps]
        return all(max(c.offset, 0) == end for c, end in zip(done, ends, strict=True))
    finally:
        consumer.close()


def run(
    infra: Infrastructure, folder: Path, args: Any, inhibit: bool, critical_first: bool
) -> dict[str, float]:
    window = 60.0 / args.speedup
    source = AlertSource("SRC-zone", TOKEN, events_per_minute=PER_WINDOW)
    with FakeIncidentIo(
        [source], window_seconds=window, requests_per_minute_per_token=10**9
    ) as fake:
        topic = f"zone-{uuid.uuid4().hex[:8]}"
        admin = AdminClient({"bootstrap.servers": infra.bootstrap_servers})
        admin.create_topics([NewTopic(topic, num_partitions=3)])[topic].result(30)
        producer = Producer({"bootstrap.servers": infra.bootstrap_servers, "linger.ms": 20})
        engine = Engine(load_config(config(infra, folder, fake, topic, inhibit, window)))
        stop = threading.Event()
        thread = threading.Thread(target=engine.run, args=(stop,), daemon=True)
        thread.start()
        deadline = time.time() + args.limit_seconds

        def produce_critical() -> None:
            key, value = alert("ZoneDown", "critical")
            producer.produce(topic, key=key, value=value)
            assert producer.flush(30) == 0

        def produce_warnings() -> None:
            for n in range(args.warnings):
                key, value = alert(f"Warning{n}", "warning")
                producer.produce(topic, key=key, value=value)
                producer.poll(0)
            assert producer.flush(60) == 0

        def first_accepted() -> None:
            while not fake.events:
                if time.time() > deadline:
                    raise SystemExit("nothing accepted in time")
                time.sleep(0.05)

        try:
            first, then = (
                (produce_critical, produce_warnings)
                if critical_first
                else (produce_warnings, produce_critical)
            )
            first()
            first_accepted()
            then()
            while not committed_all(infra, topic, f"bench-{topic}", 3):
                if time.time() > deadline:
                    raise SystemExit(f"inhibit={inhibit}: not committed in {args.limit_seconds} s")
                time.sleep(0.2)
            done_at = time.time()
            answers = fake.answers
        finally:
            stop.set()
            thread.join(60)
    first = min(a.at for a in answers)
    return {
        "requests": len(answers),
        "accepted": sum(1 for a in answers if a.status == 202),
        "rate_limited": sum(1 for a in answers if a.status == 429),
        "seconds": done_at - first,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warnings", type=int, default=1000)
    parser.add_argument("--speedup", type=float, default=30.0)
    parser.add_argument("--limit-seconds", type=float, default=900)
    args = parser.parse_args()
    os.environ["BENCH_TOKEN"] = TOKEN
    runs = {
        "critical first": (True, True),
        "critical last": (True, False),
        "no rule": (False, True),
    }
    with local_infrastructure() as infra, tempfile.TemporaryDirectory() as tmp:
        results = {name: run(infra, Path(tmp), args, *how) for name, how in runs.items()}
    s = args.speedup
    print(
        f"inhibition: 1 ZoneDown critical + {args.warnings} warnings of its zone, one alert "
        f"source at {PER_WINDOW}/min, time compressed x{s:g} (window {60 / s:.2f} s)"
    )
    print(f"{'run':<15} {'requests':>9} {'202':>6} {'429':>5} {'to all committed':>26}")
    for name, r in results.items():
        print(
            f"{name:<15} {r['requests']:>9} {r['accepted']:>6} "
            f"{r['rate_limited']:>5} {r['seconds']:>7.1f} s = "
            f"{r['seconds'] * s / 60:>6.1f} min real"
        )
    without = results["no rule"]["requests"]
    for name in ("critical first", "critical last"):
        ratio = results[name]["requests"] / without
        print(
            f"{name}/no rule: {ratio:.4f} of the requests ({1 - ratio:.1%} fewer; target: at "
            "least 90% fewer)"
        )


if __name__ == "__main__":
    main()
