"""The firehose: what an event the rules drop costs, end to end, against a raw loop.

Run: `make bench-firehose` (or `python bench/firehose.py [--events N] [--rounds R]
[--matching F]`). One topic of N registry-framed Avro events (4 partitions) is read by:

- raw: a plain Python loop, the floor for this work in Python: confluent-kafka consume,
  fastavro decode after the 5-byte Confluent header, one dict match, async commits;
- streamer: `streamer run` with 20 routes of which none matches (the drop path); and the
  same with a fraction F of the events (default 1%) matching a route delivered to an
  unlimited incident.io double (the mixed path).

Each runs as its own process pinned to one core (`taskset`), in alternating order over
the rounds, each with a fresh consumer group; the rate is taken from the group's
committed offsets polled from outside (the same instrument for all), from the first
commit to the last, so start-up and group join are not counted. CPU microseconds per
event and peak RSS come from /proc of the process. Reported: events/s, the ratio to raw
in the same round, CPU us per event and max RSS.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import fastavro
import yaml
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from delivery import SCHEMA, TOKEN, FakeProcess, make_topic

from streamer.decoding import load_schema
from streamer.testing.infra import Infrastructure, local_infrastructure

PARTITIONS = 4
ROUTES = 20
CLK_TCK = os.sysconf("SC_CLK_TCK")


def produce(infra: Infrastructure, topic: str, events: int, matching: float) -> None:
    """N Confluent-framed events; every 1/matching-th one is for team `hot` (routed)."""
    registry = SchemaRegistryClient({"url": infra.schema_registry_url})
    schema = load_schema(SCHEMA)
    schema_id = registry.register_schema(f"{topic}-value", Schema(json.dumps(schema), "AVRO"))
    parsed = fastavro.parse_schema(schema)
    header = b"\x00" + schema_id.to_bytes(4, "big")
    producer = Producer(
        {"bootstrap.servers": infra.bootstrap_servers, "linger.ms": 50, "batch.size": 1_000_000}
    )
    every = round(1 / matching) if matching else 0
    for i in range(events):
        team = "hot" if every and i % every == 0 else f"quiet-{i % 7}"
        body = io.BytesIO()
        fastavro.schemaless_writer(
            body,
            parsed,
            {
                "event_id": f"e-{i}",
                "event_time": 1_790_000_000_000 + i,
                "source_system": "ICINGA",
                "severity": "INFO",
                "labels": {"team": team, "env": "prod"},
                "alert": None,
                "check": {
                    "host": f"host-{i % 5000}",
                    "service": "app",
                    "check": "ping",
                    "state": "OK",
                    "output": "PING OK - rta 0.1 ms",
                },
                "runbook_url": None,
            },
        )
        while True:
            try:
                producer.produce(topic, key=f"host-{i % 5000}", value=header + body.getvalue())
                break
            except BufferError:
                producer.poll(0.1)
    producer.flush(120)


def streamer_config(infra: Infrastructure, folder: Path, fake: Any, topic: str) -> Path:
    """20 routes on labels.team, none of which matches the quiet teams; `hot` delivers."""
    routes = [
        {"name": f"team-{n}", "match": [f"labels.team = team-{n}"], "destination": "sink"}
        for n in range(ROUTES - 1)
    ]
    routes.append({"name": "hot", "match": ["labels.team = hot"], "destination": "sink"})
    config = {
        "kafka": {
            "bootstrap_servers": infra.bootstrap_servers,
            "group_id": f"firehose-{topic}-{time.monotonic_ns()}",
            "dead_letter_topic": f"{topic}-dlq",
        },
        "schema_registry": {"url": infra.schema_registry_url},
        "reader_schema": str(SCHEMA),
        "topics": [{"name": topic, "format": "confluent"}],
        "destinations": {
            "sink": {
                "alert_source_config_id": "SRC-sink",
                "token": {"env": "BENCH_TOKEN"},
                "url": fake.url,
                "events_per_minute": 10**9,
            }
        },
        "delivery": {"requests_per_minute_per_api_key": 10**9, "rate_limit_share": 1.0},
        "routes": routes,
    }
    path = folder / f"firehose-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


RAW_LOOP = r"""
import io, sys, fastavro, json
from confluent_kafka import Consumer
bootstrap, group, topic, schema_path = sys.argv[1:5]
schema = fastavro.parse_schema(json.load(open(schema_path)))
consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
    "auto.offset.reset": "earliest", "enable.auto.commit": False})
consumer.subscribe([topic])
matched = 0
while True:
    batch = consumer.consume(500, 1.0)
    for m in batch:
        if m.error():
            continue
        event = fastavro.schemaless_reader(io.BytesIO(m.value()[5:]), schema, schema)
        if event["labels"].get("team") == "team-3":
            matched += 1
    if batch:
        consumer.commit(asynchronous=True)
"""


def committed(bootstrap: str, group: str, topic: str) -> int:
    """The group's committed offsets, summed; 0 while its coordinator is not known yet."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        return sum(max(tp.offset, 0) for tp in consumer.committed(tps, timeout=10))
    except KafkaException:
        return 0
    finally:
        consumer.close()


def proc_usage(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) and peak RSS (MiB) of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    peak = 0.0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    return cpu, peak


def measure(
    infra: Infrastructure, argv: list[str], group: str, topic: str, events: int, core: int
) -> dict[str, float]:
    """Runs one system until its group has committed every event; rate from the commits."""
    pinned = ["taskset", "-c", str(core)] if shutil.which("taskset") else []
    env = {**os.environ, "BENCH_TOKEN": TOKEN}
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen([*pinned, *argv], env=env, stdout=log, stderr=log)
        try:
            first: tuple[float, int, float] | None = None
            deadline = time.monotonic() + 600
            while True:
                time.sleep(0.25)
                done = committed(infra.bootstrap_servers, group, topic)
                now = time.monotonic()
                if first is None and done > 0:
                    first = (now, done, proc_usage(process.pid)[0])
                if done >= events:
                    cpu, peak = proc_usage(process.pid)
                    break
                if process.poll() is not None or now > deadline:
                    log.seek(0)
                    tail = log.read()[-3000:].decode(errors="replace")
                    raise SystemExit(f"{argv[:3]} stopped at {done} of {events}:\n{tail}")
            assert first is not None
            counted = done - first[1]
            seconds = now - first[0]
            return {
                "rate": counted / seconds,
                "cpu_us": (cpu - first[2]) / counted * 1e6,
                "rss": peak,
            }
        finally:
            process.terminate()
            process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--matching", type=float, default=0.01, help="fraction routed (mixed)")
    parser.add_argument("--core", type=int, default=1, help="the core each system runs on")
    parser.add_argument("--paths", default="raw,drop,mixed", help="which to run (default: all)")
    args = parser.parse_args()
    with (
        local_infrastructure(partitions=PARTITIONS) as infra,
        tempfile.TemporaryDirectory() as tmp,
        FakeProcess("SRC-sink") as fake,
    ):
        drop_topic, mixed_topic = make_topic(infra, PARTITIONS), make_topic(infra, PARTITIONS)
        start = time.monotonic()
        produce(infra, drop_topic, args.events, 0.0)
        produce(infra, mixed_topic, args.events, args.matching)
        print(f"produced 2 x {args.events:,} events in {time.monotonic() - start:.0f} s")
        raw_script = Path(tmp) / "raw_loop.py"
        raw_script.write_text(RAW_LOOP)
        results: dict[str, list[dict[str, float]]] = {"raw": [], "drop": [], "mixed": []}

        def run(name: str) -> dict[str, float]:
            topic = mixed_topic if name == "mixed" else drop_topic
            if name == "raw":
                group = f"raw-{time.monotonic_ns()}"
                argv = [sys.executable, str(raw_script), infra.bootstrap_servers, group, topic]
                argv.append(str(SCHEMA))
            else:
                config = streamer_config(infra, Path(tmp), fake, topic)
                group = yaml.safe_load(config.read_text())["kafka"]["group_id"]
                argv = [sys.executable, "-m", "streamer", "run", "--config", str(config)]
                argv += ["--metrics-port", "0", "--log-level", "warning"]
            result = measure(infra, argv, group, topic, args.events, args.core)
            print(
                f"  {name:6} {result['rate']:>9,.0f} ev/s  {result['cpu_us']:5.1f} us/event  "
                f"max RSS {result['rss']:.0f} MiB",
                flush=True,
            )
            return result

        for n in range(args.rounds):
            print(f"round {n + 1}")
            order = ["raw", "drop", "mixed"] if n % 2 == 0 else ["mixed", "drop", "raw"]
            for name in [name for name in order if name in args.paths.split(",")]:
                results[name].append(run(name))
        print()
        print("| path | events/s | ratio to raw (per round) | CPU us/event | max RSS MiB |")
        print("|---|---|---|---|---|")
        for name in [name for name in ("raw", "drop", "mixed") if results[name]]:
            rates = [r["rate"] for r in results[name]]
            ratios = [
                r["rate"] / raw["rate"]
                for r, raw in zip(results[name], results["raw"], strict=False)
            ]
            print(
                f"| {name} | {statistics.median(rates):,.0f} | "
                f"{', '.join(f'{x:.2f}' for x in ratios)} | "
                f"{statistics.median(r['cpu_us'] for r in results[name]):.1f} | "
                f"{max(r['rss'] for r in results[name]):.0f} |"
            )


if __name__ == "__main__":
    main()
