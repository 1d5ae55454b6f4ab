"""Waiting costs nothing: CPU while deliveries wait on a rate limit (issue 26).

Run: `make bench-waiting` (or `python bench/waiting.py [--sources N] [--per-source N]
[--existing-topics]`; ~2 min). A backlog of distinct keys (hundreds waiting per alert source) is produced up
front, then the service (in this process; the incident.io double in its own) drains it
into SOURCES alert sources limited to 120 events a minute each, `coalesce: none`. Most of
the time everything waits for the next window.

Reported, from the service's CPU time sampled every second (this process's, every thread,
less the bench's own main thread, which asks the double for its count every second; the
backlog's producer is gone before the service starts), from the first accepted alert on
(start-up is neither delivering nor waiting):
- CPU per delivered alert (that CPU over the alerts the double accepted);
- CPU per second of wall time while waiting (the seconds in which nothing was accepted);
- the same alerts sent by a raw loop in the same run (httpx, one request per alert at the
  same rate, `time.sleep` until each window): its CPU per alert, and the ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import os
import tempfile
import time
from pathlib import Path

import httpx
import yaml
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from delivery import TOKEN, FakeProcess, event, make_topic, pipeline_config, run_engine

from streamer.testing.infra import local_infrastructure

PER_MINUTE = 120
SILENCES, FIRING = "streamer.silences", "streamer.firing"  # the defaults' topics


def drain(
    infra, folder: Path, sources: int, per_source: int, existing: bool = False
) -> dict[str, float]:
    teams = [f"t{n}" for n in range(sources)]
    with FakeProcess(*(f"SRC-{t}" for t in teams), per_minute=PER_MINUTE) as fake:
        topic = make_topic(infra)
        if existing:  # as in production: the topics the service reads in full are there
            admin = AdminClient({"bootstrap.servers": infra.bootstrap_servers})
            created = admin.create_topics(
                [
                    NewTopic(f"{topic}-dlq", num_partitions=3),
                    NewTopic(SILENCES, num_partitions=1, config={"cleanup.policy": "compact"}),
                    NewTopic(FIRING, num_partitions=1, config={"cleanup.policy": "compact"}),
                ]
            )
            for future in created.values():
                with contextlib.suppress(KafkaException):  # there already (an earlier run)
                    future.result(30)
        producer = Producer({"bootstrap.servers": infra.bootstrap_servers})
        now = int(time.time() * 1000)
        for i in range(per_source * sources):
            producer.produce(topic, key=str(i), value=event(i, teams[i % sources], now))
        producer.flush(60)
        del producer  # its librdkafka threads are the bench's, not the service's
        gc.collect()
        config = pipeline_config(infra, folder, fake, topic, teams, PER_MINUTE)
        # the service's own commit interval (1 s), not bench/delivery.py's faster one
        settings = yaml.safe_load(config.read_text())
        del settings["delivery"]["commit_interval_seconds"]
        config.write_text(yaml.safe_dump(settings))
        total = per_source * sources
        started = time.monotonic()
        _, stop, thread = run_engine(config)
        samples: list[tuple[float, float, int]] = []  # (wall, cpu, accepted)
        try:
            while True:
                time.sleep(1.0)
                count = fake.count()
                # the service's CPU: every thread's but this one (it only asks the count)
                service = time.process_time() - time.thread_time()
                samples.append((time.monotonic(), service, count))
                if count >= total:
                    break
                if time.monotonic() - started > 15 * 60:
                    raise SystemExit("the drain did not finish in 15 minutes")
        finally:
            stop.set()
            thread.join(30)
        # from the first accepted alert on: the start-up (loading the configuration,
        # joining the group, the first claims) is neither delivering nor waiting
        first = next(i for i, (_, _, n) in enumerate(samples) if n > 0)
        samples = samples[first:]
        cpu = samples[-1][1] - samples[0][1]
        wall = samples[-1][0] - started
        waiting_cpu = waiting_s = 0.0
        for (w0, c0, n0), (w1, c1, n1) in itertools.pairwise(samples):
            if n1 == n0:  # nothing accepted in that second: everything waited
                waiting_cpu += c1 - c0
                waiting_s += w1 - w0
        accepted = samples[-1][2]
        rejected = sum(1 for a in fake.answers if a.status == 429)
        return {
            "accepted": accepted,
            "429s": rejected,
            "wall_s": wall,
            "cpu_s": cpu,
            "ms_per_alert": 1000 * cpu / max(1, accepted),
            "waiting_s": waiting_s,
            "ms_per_waiting_s": 1000 * waiting_cpu / max(1e-9, waiting_s),
        }


def raw(sources: int, per_source: int) -> dict[str, float]:
    """The same alerts by a raw loop: each source's window filled at once, then a sleep."""
    teams = [f"t{n}" for n in range(sources)]
    with FakeProcess(*(f"SRC-{t}" for t in teams), per_minute=PER_MINUTE) as fake:
        started_cpu, started = time.process_time(), time.monotonic()
        sent = 0
        with httpx.Client(timeout=30) as client:
            window = 0
            while sent < per_source * sources:
                window_start = time.monotonic()
                for team in teams:
                    for i in range(min(PER_MINUTE, per_source - window * PER_MINUTE)):
                        body = {
                            "title": "raw",
                            "status": "firing",
                            "deduplication_key": f"{team}-{window}-{i}",
                        }
                        client.post(
                            fake.endpoint(f"SRC-{team}"),
                            json=body,
                            headers={"Authorization": f"Bearer {TOKEN}"},
                        ).raise_for_status()
                        sent += 1
                window += 1
                if sent < per_source * sources:
                    time.sleep(max(0.0, window_start + 60.5 - time.monotonic()))
        cpu, wall = time.process_time() - started_cpu, time.monotonic() - started
        return {"accepted": sent, "wall_s": wall, "cpu_s": cpu, "ms_per_alert": 1000 * cpu / sent}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sources", type=int, default=3, help="alert sources (default 3)")
    parser.add_argument(
        "--per-source", type=int, default=240, help="backlog per source (default 240)"
    )
    parser.add_argument(
        "--existing-topics",
        action="store_true",
        help="create the dead-letter, silences and firing topics first (as in production; "
        "by default they do not exist, and the service looks for them every 2 s)",
    )
    args = parser.parse_args()
    os.environ["BENCH_TOKEN"] = TOKEN  # what the double expects (bench/delivery.py's)
    with local_infrastructure() as infra, tempfile.TemporaryDirectory() as tmp:
        ours = drain(infra, Path(tmp), args.sources, args.per_source, args.existing_topics)
        baseline = raw(args.sources, args.per_source)
    print(
        f"streamer: {ours['accepted']:.0f} alerts ({ours['429s']:.0f} 429s) in "
        f"{ours['wall_s']:.0f} s, {ours['cpu_s']:.2f} CPU s: "
        f"{ours['ms_per_alert']:.2f} ms per delivered alert; "
        f"{ours['ms_per_waiting_s']:.2f} ms of CPU per second of waiting "
        f"({ours['waiting_s']:.0f} s waiting)"
    )
    print(
        f"raw loop: {baseline['accepted']:.0f} alerts in {baseline['wall_s']:.0f} s, "
        f"{baseline['cpu_s']:.2f} CPU s: {baseline['ms_per_alert']:.2f} ms per alert"
    )
    ratio = ours["ms_per_alert"] / baseline["ms_per_alert"]
    print(f"ratio (CPU per alert, streamer / raw): {ratio:.2f}")


if __name__ == "__main__":
    main()
