"""Bounded memory: resident memory with a large backlog and a slow incident.io.

Run: `make bench-memory` (or `python bench/memory.py [--events N] [--seconds S]`).
Produces N events (default one million) to a topic, then runs the engine against the
incident.io double answering every request 50 ms late, and samples this process's
resident memory once a second for S seconds. Bounded means: RSS levels off at the
engine's `max_unfinished` events plus librdkafka's prefetch queue, however large the
backlog; it does not grow with N. Reported: RSS before the engine starts, and the
median and maximum while it runs, next to how much of the backlog it consumed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import yaml
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from streamer.config import load_config
from streamer.engine import Engine
from streamer.testing import AlertSource, FakeIncidentIo
from streamer.testing.infra import local_infrastructure

SCHEMA = Path(__file__).resolve().parent.parent / "schemas" / "monitoring_event.v2.avsc"


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def produce(bootstrap_servers: str, topic: str, events: int) -> None:
    producer = Producer(
        {
            "bootstrap.servers": bootstrap_servers,
            "linger.ms": 50,
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    template = {
        "event_id": "",
        "event_time": int(time.time() * 1000),
        "source_system": "ICINGA",
        "severity": "CRITICAL",
        "labels": {"team": "t"},
        "check": {"host": "", "check": "disk", "state": "CRITICAL", "output": "x" * 100},
    }
    for i in range(events):
        template["event_id"] = str(i)
        template["check"]["host"] = f"host-{i % 5000}"  # type: ignore[index]
        while True:
            try:
                producer.produce(topic, key=str(i % 5000), value=json.dumps(template))
                break
            except BufferError:
                producer.poll(0.1)
    producer.flush(300)


def main() -> None:
    if sys.argv[1:2] == ["--produce"]:
        produce(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()
    os.environ["BENCH_TOKEN"] = "bench-token"
    with (
        local_infrastructure() as infra,
        tempfile.TemporaryDirectory() as tmp,
        FakeIncidentIo(
            [AlertSource("SRC", "bench-token", events_per_minute=10**9)],
            requests_per_minute_per_token=10**9,
        ) as fake,
    ):
        topic = f"memory-{uuid.uuid4().hex[:6]}"
        admin = AdminClient({"bootstrap.servers": infra.bootstrap_servers})
        admin.create_topics([NewTopic(topic, num_partitions=4)])[topic].result(30)
        # Produced by a child process: a producer's buffers would stay in this process's
        # memory (malloc keeps them) and hide the engine's own footprint.
        start = time.monotonic()
        subprocess.run(
            [
                sys.executable,
                __file__,
                "--produce",
                infra.bootstrap_servers,
                topic,
                str(args.events),
            ],
            check=True,
        )
        print(f"produced {args.events:,} events in {time.monotonic() - start:.0f} s")
        config = {
            "kafka": {
                "bootstrap_servers": infra.bootstrap_servers,
                "group_id": topic,
                "dead_letter_topic": f"{topic}-dlq",
            },
            "reader_schema": str(SCHEMA),
            "topics": [{"name": topic, "format": "json"}],
            "destinations": {
                "t": {
                    "alert_source_config_id": "SRC",
                    "url": fake.url,
                    "token": {"env": "BENCH_TOKEN"},
                    "events_per_minute": 10**9,
                }
            },
            "delivery": {"requests_per_minute_per_api_key": 10**9},
            "routes": [{"name": "all", "destination": "t"}],
        }
        path = Path(tmp) / "streamer.yaml"
        path.write_text(yaml.safe_dump(config))
        fake.delay(0.05)  # a slow sink: every answer 50 ms late
        before = rss_mib()
        engine = Engine(load_config(path))
        stop = threading.Event()
        thread = threading.Thread(target=engine.run, args=(stop,), daemon=True)
        thread.start()
        samples = []
        for _ in range(int(args.seconds)):
            time.sleep(1)
            samples.append(rss_mib())
        stop.set()
        thread.join(120)
    print(
        f"RSS before the engine {before:.0f} MiB; while running (max_unfinished "
        f"{engine.settings.max_unfinished}): median {statistics.median(samples):.0f} MiB, "
        f"max {max(samples):.0f} MiB; last 10 s max {max(samples[-10:]):.0f} MiB"
    )
    print(
        f"consumed {engine.stats.consumed:,} of {args.events:,}; delivered "
        f"{engine.stats.delivered:,}; paused at the cap {engine.stats.pauses} times"
    )


if __name__ == "__main__":
    main()
