"""Quiet on purpose: a silenced storm does not delay the page that matters (issue 24).

Run: `make bench-quiet` (or `python bench/quiet.py [--storm N] [--speedup S]`). A backlog of
STORM critical alerts (distinct alerting things, labels `kind=storm`) for one alert source
limited to 120 events per window is produced before the service starts, on the incident.io
double that enforces the same limit. Once the service has read the whole storm, one more
critical alert of the same source (`kind=page`) is produced, and the time from producing it
to its 202 is measured, in the same run:

- with a silence `kind="storm"` (written to the silences topic before the start): the storm
  ends `silenced` and takes no request; the page goes out at once;
- with the silence added mid-storm (once the service has read the storm and the double
  accepted its first alerts): the backlog still queued ends `silenced` at its turn, and the
  page goes out at once;
- without it (the raw baseline): the page waits behind the storm in the limiter (every
  alert is critical, so ranking does not help it).

Also reported: the requests incident.io received until the page was accepted. Time is
compressed as in bench/storm.py: the window is 60/SPEEDUP seconds (120 events per window);
the page's wait is reported as measured, and for the baseline also scaled back to
incident.io's real minute (x SPEEDUP). With the silence nothing waits on a window, so its
number needs no scaling.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from streamer.config import load_config
from streamer.engine import Engine
from streamer.silence_book import ensure_topic, publish
from streamer.silences import Silence, parse_matchers
from streamer.testing import AlertSource, FakeIncidentIo
from streamer.testing.infra import Infrastructure, local_infrastructure

SCHEMA = Path(__file__).resolve().parent.parent / "schemas" / "monitoring_event.v2.avsc"
TOKEN = "bench-token"
PER_WINDOW = 120
PAGE = "the-page//disk"


def check(host: str, kind: str) -> bytes:
    return json.dumps(
        {
            "event_id": str(uuid.uuid4()),
            "event_time": int(time.time() * 1000),
            "source_system": "ICINGA",
            "severity": "CRITICAL",
            "labels": {"team": "db", "kind": kind},
            "check": {"host": host, "check": "disk", "state": "CRITICAL", "output": "full"},
        }
    ).encode()


def config(
    infra: Infrastructure, folder: Path, fake: FakeIncidentIo, topic: str, window: float
) -> Path:
    path = folder / f"{topic}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "kafka": {
                    "bootstrap_servers": infra.bootstrap_servers,
                    "group_id": f"bench-{topic}",
                    "dead_letter_topic": f"{topic}-dlq",
                    "silence_topic": f"{topic}-silences",
                },
                "reader_schema": str(SCHEMA),
                "topics": [{"name": topic, "format": "json"}],
                "destinations": {
                    "db": {
                        "alert_source_config_id": "SRC-db",
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
                "routes": [{"name": "db", "destination": "db"}],
            }
        )
    )
    return path


def run(infra: Infrastructure, folder: Path, args: Any, silenced: str) -> dict[str, float]:
    """`silenced`: "before" the start, "mid-storm", or "no"."""
    window = 60.0 / args.speedup
    source = AlertSource("SRC-db", TOKEN, events_per_minute=PER_WINDOW)
    with FakeIncidentIo(
        [source], window_seconds=window, requests_per_minute_per_token=10**9
    ) as fake:
        topic = f"quiet-{uuid.uuid4().hex[:8]}"
        admin = AdminClient({"bootstrap.servers": infra.bootstrap_servers})
        admin.create_topics([NewTopic(topic, num_partitions=6)])[topic].result(30)
        kafka = {"bootstrap.servers": infra.bootstrap_servers}
        ensure_topic(kafka, f"{topic}-silences")
        matchers, _ = parse_matchers(['kind="storm"'])
        quiet = Silence.new(
            matchers, duration=timedelta(hours=1), at=datetime.now(UTC), comment="bench"
        )
        if silenced == "before":
            publish(kafka, f"{topic}-silences", [quiet])
        producer = Producer({**kafka, "linger.ms": 20})
        for k in range(args.storm):
            producer.produce(topic, key=f"storm-{k}", value=check(f"storm-{k}", "storm"))
            producer.poll(0)
        assert producer.flush(60) == 0, "the storm was not acknowledged"
        engine = Engine(load_config(config(infra, folder, fake, topic, window)))
        stop = threading.Event()
        thread = threading.Thread(target=engine.run, args=(stop,), daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 600
            while engine.stats.consumed < args.storm:  # the whole storm read
                if time.monotonic() > deadline:
                    raise SystemExit("the storm was not read in 10 minutes")
                time.sleep(0.01)
            if silenced == "mid-storm":
                while len(fake.events) < PER_WINDOW // 2:  # the storm is going out
                    time.sleep(0.01)
                publish(kafka, f"{topic}-silences", [quiet])
                while engine.silences.active(datetime.now(UTC)) == []:  # read
                    time.sleep(0.005)
            page_sent = time.monotonic()
            producer.produce(topic, key="the-page", value=check("the-page", "page"))
            producer.flush(30)
            while not any(e.payload["deduplication_key"] == PAGE for e in fake.events):
                if time.monotonic() > deadline:
                    raise SystemExit("the page was not accepted in 10 minutes")
                time.sleep(0.005)
            waited = time.monotonic() - page_sent
            requests = len(fake.answers)
            keys = [e.payload["deduplication_key"] for e in fake.events]
            sent_first = keys.index(PAGE)
        finally:
            stop.set()
            thread.join(60)
    return {
        "page_wait_s": round(waited, 3),
        # with the silence in force before, nothing waits on a window: no scaling
        "page_wait_scaled_s": round(waited * (1 if silenced == "before" else args.speedup), 1),
        "requests_until_page": requests,
        "storm_silenced": engine.telemetry.silenced.total(),
        "storm_sent_before_page": sent_first,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storm", type=int, default=1000, help="storm alerts (default 1000)")
    parser.add_argument(
        "--speedup", type=float, default=30.0, help="time compression (window 60/S s)"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    args = parser.parse_args()
    os.environ["BENCH_TOKEN"] = TOKEN
    with local_infrastructure() as infra, tempfile.TemporaryDirectory() as folder:
        results = {
            "silenced": run(infra, Path(folder), args, silenced="before"),
            "silenced_mid_storm": run(infra, Path(folder), args, silenced="mid-storm"),
            "unsilenced": run(infra, Path(folder), args, silenced="no"),
        }
    quiet, mid, loud = results["silenced"], results["silenced_mid_storm"], results["unsilenced"]
    ratio = quiet["page_wait_s"] / loud["page_wait_s"] if loud["page_wait_s"] else float("nan")
    print(
        f"storm of {args.storm} critical alerts on one alert source at {PER_WINDOW} per window "
        f"(window {60 / args.speedup:.1f} s, x{args.speedup:g}), then one page:"
    )
    print(
        f"  with the silence:    page accepted {quiet['page_wait_s']:.2f} s after produced, "
        f"{quiet['requests_until_page']} request(s), {quiet['storm_silenced']} silenced"
    )
    print(
        f"  silence mid-storm:   page accepted {mid['page_wait_s']:.2f} s after produced, "
        f"{mid['requests_until_page']} requests, {mid['storm_sent_before_page']} of the storm "
        f"sent first, {mid['storm_silenced']} silenced (it waits for the window the storm "
        f"spent: {mid['page_wait_scaled_s']:.0f} s at the real minute)"
    )
    print(
        f"  without (baseline):  page accepted {loud['page_wait_s']:.2f} s after produced "
        f"({loud['page_wait_scaled_s']:.0f} s at incident.io's real minute), "
        f"{loud['requests_until_page']} requests, {loud['storm_sent_before_page']} of the "
        "storm sent first"
    )
    print(f"  ratio silenced/baseline (measured): {ratio:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
