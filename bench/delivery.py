"""End-to-end delivery: throughput against a raw baseline, latency, rate-limit fidelity.

Run: `make bench-delivery` (or `python bench/delivery.py [--events N] [--latency-seconds S]
[--fidelity-seconds S] [--large-seconds S] [--only SECTION]`). Everything runs in one
process against the local (or external) broker and the incident.io double, so the ratios
compare like with like:

1. throughput: N events through the whole pipeline (consume, decode, route, POST, commit)
   to the double with no rate limit, next to a raw httpx loop POSTing the same payloads
   to the same double, one after the other on a keep-alive client. Ratio = pipeline/raw.
   Also the CPU seconds this process spends per delivered alert (all its threads, from
   the engine's start to the last delivery, so group join included) next to the raw
   loop's, and resident memory: right before, right after, and the process's peak.
2. latency: events produced at a steady 20/s; time from produce to the double's receipt
   (its 202), p50 and p99.
3. rate-limit fidelity: ten alert sources at 120 events/min each, with more events than
   that waiting; achieved rate per source over the run, relative to 120/min, and the
   number of 429s the double (enforcing the same limit) answered. The design target is
   >= 0.97 of the allowed rate with zero 429s over three minutes.
4. large deployment: 100 alert sources each sending at its full 120/min (200 events/s in
   all, round robin), the double enforcing 120/min per source; achieved rate relative to
   the allowed one, 429s, and produce-to-202 latency p50/p99 (target p99 < 50 ms). Each
   source is its own alert source; the per-API-key limit is lifted on both sides, as in
   3. A run longer than a minute measures the limiter's margin too: a source sending at
   exactly its limit is held back by `rate_limit_margin_seconds` more each minute.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import yaml
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from streamer.config import load_config
from streamer.engine import Engine
from streamer.testing import AlertSource, FakeIncidentIo
from streamer.testing.fake_incident_io import standalone
from streamer.testing.infra import Infrastructure, local_infrastructure

SCHEMA = Path(__file__).resolve().parent.parent / "schemas" / "monitoring_event.v2.avsc"
TOKEN = "bench-token"
WORKERS = 8


def event(i: int, team: str, produced_ms: int) -> bytes:
    return json.dumps(
        {
            "event_id": str(uuid.uuid4()),
            "event_time": produced_ms,
            "source_system": "ICINGA",
            "severity": "CRITICAL",
            "labels": {"team": team},
            "check": {
                "host": f"host-{i % 200}",
                "check": f"c{i}",
                "state": "CRITICAL",
                "output": "x",
            },
        }
    ).encode()


def pipeline_config(
    infra: Infrastructure,
    folder: Path,
    fake: Any,
    topic: str,
    teams: list[str],
    per_minute: int,
    topic_format: dict[str, str] | None = None,
) -> Path:
    config = {
        "kafka": {
            "bootstrap_servers": infra.bootstrap_servers,
            "group_id": f"bench-{topic}",
            "dead_letter_topic": f"{topic}-dlq",
        },
        "reader_schema": str(SCHEMA),
        "topics": [{"name": topic, **(topic_format or {"format": "json"})}],
        "destinations": {
            t: {
                "alert_source_config_id": f"SRC-{t}",
                "token": {"env": "BENCH_TOKEN"},
                "url": fake.url,
                "events_per_minute": per_minute,
            }
            for t in teams
        },
        "delivery": {
            "requests_per_minute_per_api_key": 10_000_000,
            "commit_interval_seconds": 0.5,
            "rate_limit_share": 1.0,
            "workers": WORKERS,
        },
        "routes": [
            {
                "name": t,
                "match": [f"labels.team = {t}"],
                "destination": t,
                "templates": {
                    "metadata": {"event_time_ms": "{{ (event_time.timestamp() * 1000) | int }}"}
                },
            }
            for t in teams
        ],
    }
    path = folder / f"{topic}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def make_topic(infra: Infrastructure, partitions: int = 4) -> str:
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": infra.bootstrap_servers})
    admin.create_topics([NewTopic(topic, num_partitions=partitions)])[topic].result(30)
    return topic


def run_engine(config: Path) -> tuple[Engine, threading.Event, threading.Thread]:
    engine = Engine(load_config(config))
    stop = threading.Event()
    thread = threading.Thread(target=engine.run, args=(stop,), daemon=True)
    thread.start()
    return engine, stop, thread


def wait(condition: Any, limit: float, every: float = 0.01) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit("benchmark did not finish in time")
        time.sleep(every)


def rss_mib() -> float:
    """This process's resident memory now."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class ProcessUsage:
    """CPU seconds of this process (every thread) and its resident memory over a span."""

    def __init__(self) -> None:
        self.rss_before = rss_mib()
        self._cpu = time.process_time()

    def stop(self) -> ProcessUsage:
        self.cpu_s = time.process_time() - self._cpu
        self.rss_after = rss_mib()
        # The peak since the process started (Linux: KiB). The kernel's resident counters
        # are per-thread caches folded in lazily: the peak can read a little under RSS now.
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        self.peak_rss = max(peak, self.rss_after)
        return self


class FakeProcess:
    """The incident.io double in its own process (`streamer fake-incident-io`), as
    incident.io is: it competes with neither the pipeline nor the raw loop for the GIL."""

    def __init__(self, *sources: str, per_minute: int = 10**9) -> None:
        self._stack = ExitStack()
        arguments = [f"--source={s}:{TOKEN}:{per_minute}" for s in sources]
        self.process, self.url = self._stack.enter_context(
            standalone(*arguments, "--per-token-limit", "1000000000")
        )
        self._http = httpx.Client(timeout=30)

    def endpoint(self, source: str) -> str:
        return f"{self.url}/v2/alert_events/http/{source}"

    def count(self) -> int:
        """Events received so far (cheap: polling must not slow the double down)."""
        return int(self._http.get(f"{self.url}/_fake/counts").json()["events"])

    def delay(self, seconds: float) -> None:
        """Every answer `seconds` late (a slow incident.io)."""
        fault = {"kind": "latency", "seconds": seconds}
        self._http.post(f"{self.url}/_fake/faults", json=fault).raise_for_status()

    @property
    def events(self) -> list[Any]:
        """Accepted events: source_id, payload, received_at (epoch seconds)."""
        return self._recorded("events")

    @property
    def answers(self) -> list[Any]:
        """Every answer: source_id, status, at (epoch seconds)."""
        return self._recorded("answers")

    def _recorded(self, kind: str) -> list[Any]:
        body = self._http.get(f"{self.url}/_fake/{kind}").json()
        return [SimpleNamespace(**e) for e in body[kind]]

    def __enter__(self) -> FakeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()
        self._stack.close()


def throughput(infra: Infrastructure, folder: Path, n: int) -> None:
    with FakeProcess("SRC-t") as fake:
        topic = make_topic(infra)
        producer = Producer({"bootstrap.servers": infra.bootstrap_servers})
        now = int(time.time() * 1000)
        for i in range(n):
            producer.produce(topic, key=str(i % 200), value=event(i, "t", now))
        producer.flush(60)
        usage = ProcessUsage()
        engine, stop, thread = run_engine(pipeline_config(infra, folder, fake, topic, ["t"], 10**9))
        start = time.perf_counter()
        wait(lambda: fake.count() >= n, 600, every=0.2)
        startup_s = time.perf_counter() - start
        usage.stop()
        stop.set()
        thread.join(60)
        received = fake.events[:n]
        payloads = [e.payload for e in received]
        # Steady state: from the double's first receipt to its last (joining the group is
        # start-up, reported apart).
        pipeline_s = (received[-1].received_at - received[0].received_at) * n / (n - 1)
        with httpx.Client(timeout=10) as client:
            url = fake.endpoint("SRC-t")
            headers = {"Authorization": f"Bearer {TOKEN}"}
            raw_cpu = time.process_time()
            start = time.perf_counter()
            for payload in payloads:
                client.post(url, json=payload, headers=headers).raise_for_status()
            raw_s = time.perf_counter() - start
            raw_cpu = time.process_time() - raw_cpu
    ours, raw = n / pipeline_s, n / raw_s
    print(
        f"throughput  pipeline {ours:8,.0f} ev/s   raw httpx loop {raw:8,.0f} req/s   "
        f"ratio {ours / raw:.2f}   ({n} events, engine workers "
        f"{engine.settings.workers}; start to last delivery {startup_s:.1f} s)"
    )
    print(
        f"cpu         pipeline {usage.cpu_s / n * 1000:6.3f} ms/alert   raw httpx loop "
        f"{raw_cpu / n * 1000:6.3f} ms/request   ratio {usage.cpu_s / raw_cpu:.2f}   "
        f"(process CPU, all threads; {usage.cpu_s:.2f} s vs {raw_cpu:.2f} s)"
    )
    print(
        f"memory      RSS {usage.rss_before:.0f} MiB before the engine, "
        f"{usage.rss_after:.0f} MiB at its last delivery; peak {usage.peak_rss:.0f} MiB "
        f"(ru_maxrss, the whole run so far)"
    )


def steady(
    infra: Infrastructure,
    folder: Path,
    fake: FakeProcess,
    seconds: float,
    rate: float,
    teams: list[str],
    per_minute: int,
) -> tuple[int, float]:
    """Produces `rate` events/s for `seconds`, round robin over `teams`, to a running
    engine; waits until the double has accepted them all. (events, epoch produce start)"""
    topic = make_topic(infra)
    _, stop, thread = run_engine(pipeline_config(infra, folder, fake, topic, teams, per_minute))
    time.sleep(3)  # the group settles before the clock starts
    producer = Producer({"bootstrap.servers": infra.bootstrap_servers, "linger.ms": 0})
    n = int(seconds * rate)
    started_at = time.time()
    start = time.monotonic()
    for i in range(n):
        produced_ms = int(time.time() * 1000)
        producer.produce(topic, key=str(i), value=event(i, teams[i % len(teams)], produced_ms))
        producer.poll(0)
        time.sleep(max(0.0, start + (i + 1) / rate - time.monotonic()))
    producer.flush(10)
    wait(lambda: fake.count() >= n, 120 + seconds, every=0.2)
    stop.set()
    thread.join(60)
    return n, started_at


def percentiles(events: list[Any]) -> tuple[float, float]:
    """p50 and p99 in ms from produce to the double's 202: event_time is the produce time
    (ms), received_at the double's wall clock."""
    samples = sorted(
        (e.received_at - int(e.payload["metadata"]["event_time_ms"]) / 1000) * 1000 for e in events
    )
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.99))]


def latency(infra: Infrastructure, folder: Path, seconds: float, rate: float = 20.0) -> None:
    with FakeProcess("SRC-t") as fake:
        n, _ = steady(infra, folder, fake, seconds, rate, ["t"], 10**9)
        p50, p99 = percentiles(fake.events)
    print(
        f"latency     produce -> incident.io at {rate:.0f} ev/s: p50 {p50:6.1f} ms   "
        f"p99 {p99:6.1f} ms   ({n} events)"
    )


def achieved(answers: list[Any], teams: list[str], allowed: float) -> tuple[float, float, int]:
    """Accepted events per source relative to `allowed`: (min, mean), and the 429s."""
    accepted = [
        sum(1 for a in answers if a.source_id == f"SRC-{t}" and a.status == 202) for t in teams
    ]
    too_many = sum(1 for a in answers if a.status == 429)
    return min(accepted) / allowed, statistics.mean(accepted) / allowed, too_many


def large(
    infra: Infrastructure,
    folder: Path,
    seconds: float,
    sources: int = 100,
    per_minute: int = 120,
) -> None:
    teams = [f"team{i}" for i in range(sources)]
    rate = sources * per_minute / 60
    with FakeProcess(*(f"SRC-{t}" for t in teams), per_minute=per_minute) as fake:
        n, started_at = steady(infra, folder, fake, seconds, rate, teams, per_minute)
        events, answers = fake.events, fake.answers
    # over the whole run: from the first produce to the last 202
    span = max(e.received_at for e in events) - started_at
    low, mean, too_many = achieved(answers, teams, per_minute * span / 60)
    p50, p99 = percentiles(events)
    print(
        f"large       {sources} sources at {per_minute}/min ({rate:.0f} ev/s) for "
        f"{seconds:.0f} s: achieved min {low:.3f}, mean {mean:.3f} of the allowed rate; "
        f"429s: {too_many}; produce -> 202 p50 {p50:6.1f} ms   p99 {p99:6.1f} ms   "
        f"({n} events)"
    )


def fidelity(
    infra: Infrastructure, folder: Path, seconds: float, sources: int = 10, per_minute: int = 120
) -> None:
    teams = [f"team{i}" for i in range(sources)]
    with FakeIncidentIo(
        [AlertSource(f"SRC-{t}", TOKEN, events_per_minute=per_minute) for t in teams],
        requests_per_minute_per_token=10**9,
    ) as fake:
        topic = make_topic(infra)
        backlog = int(per_minute * (seconds / 60 + 2))  # always more waiting than allowed
        producer = Producer({"bootstrap.servers": infra.bootstrap_servers})
        now = int(time.time() * 1000)
        for i in range(backlog):
            for t in teams:
                producer.produce(topic, key=f"{t}-{i}", value=event(i, t, now))
        producer.flush(60)
        _, stop, thread = run_engine(pipeline_config(infra, folder, fake, topic, teams, per_minute))
        wait(lambda: len(fake.answers) > 0, 60)
        start = fake.answers[0].at
        time.sleep(seconds)
        stop.set()
        thread.join(60)
        answers = [a for a in fake.answers if a.at < start + seconds]
    low, mean, too_many = achieved(answers, teams, per_minute * seconds / 60)
    print(
        f"rate limit  {sources} sources at {per_minute}/min for {seconds:.0f} s: achieved "
        f"min {low:.3f}, mean {mean:.3f} of the allowed rate; 429s: {too_many}"
    )


def main() -> None:
    global WORKERS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--latency-seconds", type=float, default=30)
    parser.add_argument("--fidelity-seconds", type=float, default=180)
    parser.add_argument(
        "--large-seconds",
        type=float,
        default=60,
        help="how long 100 sources send at their full 120/min (default: %(default)s)",
    )
    parser.add_argument("--only", choices=["throughput", "latency", "fidelity", "large"])
    parser.add_argument(
        "--workers",
        type=int,
        default=8,
        help="delivery workers (concurrent requests) for the pipeline",
    )
    args = parser.parse_args()
    WORKERS = args.workers
    import os

    os.environ["BENCH_TOKEN"] = TOKEN
    with local_infrastructure() as infra, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.only in (None, "throughput"):
            throughput(infra, folder, args.events)
        if args.only in (None, "latency"):
            latency(infra, folder, args.latency_seconds)
        if args.only in (None, "fidelity"):
            fidelity(infra, folder, args.fidelity_seconds)
        if args.only in (None, "large"):
            large(infra, folder, args.large_seconds)


if __name__ == "__main__":
    main()
