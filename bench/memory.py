"""Bounded memory: resident memory with a large backlog and a slow incident.io.

Run: `make bench-memory` (or `python bench/memory.py [--events N] [--event-bytes B]
[--seconds S]`). Produces N Avro events (default one million) of about B bytes each
(default 200) to a topic, then runs the engine against the incident.io double (in its
own process, so what it records is not counted) answering every request 50 ms late, and
samples this process's resident memory once a second for S seconds. A larger B pads a
label no template renders: the default description renders `check.output`, and past
20,000 characters that is a template error, so a padded output would measure
dead-lettering, not delivery.

Bounded means: RSS levels off at the engine's caps (`max_unfinished` messages,
`max_unfinished_bytes`) plus librdkafka's prefetch queue, however large the backlog and
however large each event; it does not grow with N. `make bench-memory` runs small events
(the message cap binds) and 100 KiB events (the byte cap binds: 15,000 of them, 1.5 GB,
waiting behind a 32 MiB cap; about 9,600 are delivered in the 60 s). Reported: RSS
before the engine starts, the median and maximum while it runs, a sample every 5 s (to
see it level off), and how much of the backlog it consumed.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import fastavro
from confluent_kafka import Producer

# a sibling script (bench/ is on sys.path when a bench runs): one double, one engine start
from delivery import SCHEMA, TOKEN, FakeProcess, make_topic, pipeline_config, rss_mib, run_engine

from streamer.decoding import load_schema
from streamer.testing.infra import local_infrastructure


def encoder(event_bytes: int) -> Any:
    """i -> an Avro (schemaless) event of about `event_bytes`, valid under SCHEMA."""
    schema = fastavro.parse_schema(load_schema(SCHEMA))
    template: dict[str, Any] = {
        "event_id": "",
        "event_time": int(time.time() * 1000),
        "source_system": "ICINGA",
        "severity": "CRITICAL",
        "labels": {"team": "t", "details": ""},
        "alert": None,
        "check": {"host": "", "service": None, "check": "disk", "state": "CRITICAL", "output": "x"},
        "runbook_url": None,
    }

    def encode(i: int) -> bytes:
        template["event_id"] = str(i)
        template["check"]["host"] = f"host-{i % 5000}"
        out = io.BytesIO()
        fastavro.schemaless_writer(out, schema, template)
        return out.getvalue()

    padding = max(0, event_bytes - len(encode(0)))
    template["labels"]["details"] = "x" * padding
    grown = len(encode(0)) - event_bytes  # the string's length prefix (a varint) grew too
    template["labels"]["details"] = "x" * max(0, padding - max(0, grown))
    return encode


def produce(bootstrap_servers: str, topic: str, events: int, event_bytes: int) -> None:
    producer = Producer(
        {
            "bootstrap.servers": bootstrap_servers,
            "linger.ms": 50,
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    encode = encoder(event_bytes)
    for i in range(events):
        value = encode(i)
        while True:
            try:
                producer.produce(topic, key=str(i % 5000), value=value)
                break
            except BufferError:
                producer.poll(0.1)
    producer.flush(300)


def main() -> None:
    if sys.argv[1:2] == ["--produce"]:
        produce(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument(
        "--event-bytes",
        type=int,
        default=200,
        help="size of each Avro message, padded in a label (default: %(default)s)",
    )
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()
    os.environ["BENCH_TOKEN"] = TOKEN
    with (
        local_infrastructure() as infra,
        tempfile.TemporaryDirectory() as tmp,
        FakeProcess("SRC-t") as fake,
    ):
        topic = make_topic(infra)
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
                str(args.event_bytes),
            ],
            check=True,
        )
        print(
            f"produced {args.events:,} events of {args.event_bytes:,} bytes in "
            f"{time.monotonic() - start:.0f} s"
        )
        config = pipeline_config(
            infra,
            Path(tmp),
            fake,
            topic,
            ["t"],
            10**9,
            topic_format={"format": "raw", "writer_schema": str(SCHEMA)},
        )
        fake.delay(0.05)  # a slow sink: every answer 50 ms late
        before = rss_mib()
        engine, stop, thread = run_engine(config)
        samples = []
        for _ in range(int(args.seconds)):
            time.sleep(1)
            samples.append(rss_mib())
        stop.set()
        thread.join(120)
    s = engine.settings
    print(
        f"RSS before the engine {before:.0f} MiB; while running (max_unfinished "
        f"{s.max_unfinished:,}, max_unfinished_bytes {s.max_unfinished_bytes / 2**20:.0f} MiB): "
        f"median {statistics.median(samples):.0f} MiB, max {max(samples):.0f} MiB; "
        f"last 10 s max {max(samples[-10:]):.0f} MiB"
    )
    print("RSS every 5 s (MiB): " + " ".join(f"{m:.0f}" for m in samples[4::5]))
    print(
        f"consumed {engine.stats.consumed:,} of {args.events:,}; delivered "
        f"{engine.stats.delivered:,}; paused at the cap {engine.stats.pauses} times"
    )


if __name__ == "__main__":
    main()
