"""Alert storm: how soon incident.io shows a storm's real state, and what it costs.

Run: `make bench-storm` (or `python bench/storm.py [--keys N] [--transitions T]
[--speedup S] [--only latest|none]`). From a full backlog (every event produced before the
service starts), KEYS alerting things each change state TRANSITIONS times
(CRITICAL/OK, severity WARNING), into one alert source limited to 120 events per window,
on the incident.io double that enforces the same limit. Measured for `coalesce: latest`
(the default) and for `coalesce: none` (every state sent: the raw baseline) in the same
run, each on a fresh topic and group:

- the time from the double's first request (the service joined its group) until it
  holds every key's final state, and the requests spent (202s and 429s);
- the time from producing a new firing critical event mid-storm (once the double has
  accepted KEYS/2 events) to its 202, with the default `priority: critical-first`.

Time is compressed: the double's window and the service's limiter window are 60/SPEEDUP
seconds (still 120 events per window, so 120 x SPEEDUP per real minute), and every
duration is reported both as measured and scaled back to incident.io's real minute
(measured x SPEEDUP). The engine's own fixed costs (poll timeouts, commit intervals) are
not compressed, so the scaled numbers are slightly pessimistic. Ratios are latest/none.
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
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from streamer.config import load_config
from streamer.engine import Engine
from streamer.testing import AlertSource, FakeIncidentIo
from streamer.testing.infra import Infrastructure, local_infrastructure

SCHEMA = Path(__file__).resolve().parent.parent / "schemas" / "monitoring_event.v2.avsc"
TOKEN = "bench-token"
PER_WINDOW = 120
PAGE = "new-page//disk"  # the deduplication key of the critical event that arrives mid-storm


def check(host: str, state: str, severity: str) -> bytes:
    return json.dumps(
        {
            "event_id": str(uuid.uuid4()),
            "event_time": int(time.time() * 1000),
            "source_system": "ICINGA",
            "severity": severity,
            "labels": {"team": "storm"},
            "check": {"host": host, "check": "disk", "state": state, "output": state},
        }
    ).encode()


def storm(keys: int, transitions: int) -> tuple[list[tuple[str, bytes]], dict[str, str]]:
    """Every key's transitions, interleaved in time (round after round); final statuses."""
    events = []
    for t in range(transitions):
        state = "CRITICAL" if t % 2 == 0 else "OK"
        for k in range(keys):
            events.append((f"storm-{k}//disk", check(f"storm-{k}", state, "WARNING")))
    final = "firing" if (transitions - 1) % 2 == 0 else "resolved"
    return events, {f"storm-{k}//disk": final for k in range(keys)}


def config(
    infra: Infrastructure, folder: Path, fake: FakeIncidentIo, topic: str, mode: str, window: float
) -> Path:
    path = folder / f"{topic}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "kafka": {
                    "bootstrap_servers": infra.bootstrap_servers,
                    "group_id": f"bench-{topic}",
                    "dead_letter_topic": f"{topic}-dlq",
                },
                "reader_schema": str(SCHEMA),
                "topics": [{"name": topic, "format": "json"}],
                "destinations": {
                    "storm": {
                        "alert_source_config_id": "SRC-storm",
                        "token": {"env": "BENCH_TOKEN"},
                        "url": fake.url,
                        "events_per_minute": PER_WINDOW,
                        "coalesce": mode,
                    }
                },
                "delivery": {
                    "requests_per_minute_per_api_key": 10_000_000,
                    "rate_limit_window_seconds": window,
                    "rate_limit_margin_seconds": 0.5 * window / 60,
                    "rate_limit_share": 1.0,
                    "commit_interval_seconds": 0.5,
                },
                "routes": [{"name": "storm", "destination": "storm"}],
            }
        )
    )
    return path


def final_states(fake: FakeIncidentIo) -> dict[str, str]:
    last: dict[str, str] = {}
    for e in fake.events:
        last[e.payload["deduplication_key"]] = e.payload["status"]
    return last


def run(infra: Infrastructure, folder: Path, args: Any, mode: str) -> dict[str, float]:
    window = 60.0 / args.speedup
    source = AlertSource("SRC-storm", TOKEN, events_per_minute=PER_WINDOW)
    with FakeIncidentIo(
        [source], window_seconds=window, requests_per_minute_per_token=10**9
    ) as fake:
        topic = f"storm-{uuid.uuid4().hex[:8]}"
        admin = AdminClient({"bootstrap.servers": infra.bootstrap_servers})
        admin.create_topics([NewTopic(topic, num_partitions=6)])[topic].result(30)
        producer = Producer({"bootstrap.servers": infra.bootstrap_servers, "linger.ms": 20})
        events, final = storm(args.keys, args.transitions)
        for key, value in events:
            producer.produce(topic, key=key, value=value)
            producer.poll(0)
        assert producer.flush(60) == 0, "the backlog was not acknowledged"
        engine = Engine(load_config(config(infra, folder, fake, topic, mode, window)))
        stop = threading.Event()
        thread = threading.Thread(target=engine.run, args=(stop,), daemon=True)
        started = time.time()
        thread.start()
        page_sent = page_at = 0.0
        done_at = 0.0
        deadline = started + args.limit_seconds
        try:
            while time.time() < deadline:
                time.sleep(0.05)
                accepted = fake.events
                if not page_sent and len(accepted) >= args.keys // 2:
                    producer.produce(
                        topic, key=PAGE, value=check("new-page", "CRITICAL", "CRITICAL")
                    )
                    producer.flush(10)
                    page_sent = time.time()
                if page_sent and not page_at:
                    for e in accepted:
                        if e.payload["deduplication_key"] == PAGE:
                            page_at = e.received_at
                states = final_states(fake)
                if not done_at and all(states.get(k) == v for k, v in final.items()):
                    done_at = time.time()
                if done_at and page_at:
                    break
            else:
                raise SystemExit(f"{mode}: not at the final state within {args.limit_seconds} s")
            answers = fake.answers
        finally:
            stop.set()
            thread.join(60)
    first = min(a.at for a in answers)  # the group joined: time from the first request
    return {
        "seconds": done_at - first,
        "accepted": sum(1 for a in answers if a.status == 202),
        "rate_limited": sum(1 for a in answers if a.status == 429),
        "requests": len(answers),
        "superseded": engine.stats.superseded,
        "page_seconds": page_at - page_sent,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--transitions", type=int, default=10)
    parser.add_argument(
        "--speedup",
        type=float,
        default=30.0,
        help="compress the rate-limit window (60 s / SPEEDUP) and so every duration "
        "(default: %(default)s; 1 is real time: ~83 minutes for `none`)",
    )
    parser.add_argument("--only", choices=["latest", "none"])
    parser.add_argument("--limit-seconds", type=float, default=1800)
    args = parser.parse_args()
    os.environ["BENCH_TOKEN"] = TOKEN
    modes = [args.only] if args.only else ["latest", "none"]
    results = {}
    with local_infrastructure() as infra, tempfile.TemporaryDirectory() as tmp:
        for mode in modes:
            results[mode] = run(infra, Path(tmp), args, mode)
    s = args.speedup
    events = args.keys * args.transitions
    print(
        f"storm: {args.keys} keys x {args.transitions} transitions = {events} events, one alert "
        f"source at {PER_WINDOW}/min, time compressed x{s:g} (window {60 / s:.2f} s)"
    )
    print(
        f"{'coalesce':<9} {'to final state':>24} {'requests':>9} {'202':>6} {'429':>5} "
        f"{'superseded':>10} {'new critical accepted':>30}"
    )
    for mode, r in results.items():
        print(
            f"{mode:<9} {r['seconds']:>7.1f} s = {r['seconds'] * s / 60:>6.1f} min real "
            f"{r['requests']:>9} {r['accepted']:>6} {r['rate_limited']:>5} {r['superseded']:>10} "
            f"{r['page_seconds']:>7.2f} s = {r['page_seconds'] * s:>7.1f} s real"
        )
    if len(results) == 2:
        latest, none = results["latest"], results["none"]
        print(
            f"latest/none: {latest['seconds'] / none['seconds']:.3f} of the time to the final "
            f"state ({none['seconds'] / latest['seconds']:.1f}x faster), "
            f"{latest['requests'] / none['requests']:.3f} of the requests; "
            f"floor: {args.keys} requests = {args.keys / PER_WINDOW:.1f} min real"
        )


if __name__ == "__main__":
    main()
