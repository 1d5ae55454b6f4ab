"""Rate limits through a rolling restart and a kill -9 loop: issue 13 at full length.

Run: `make bench-handover` (or `python bench/handover.py [--only rolling|kill9]
[--seconds-after S] ...`; `--help` lists the options; ~15 min). Real `streamer run`
processes on a real broker (`local_infrastructure`) deliver an alert storm to the
incident.io double, two alert sources of 1200 events per real minute each. The service
runs with its defaults but `coalesce: none` (every event is sent, so each can be counted)
and no per-API-key limit (the double has none either). The storm, over 500 hosts per
source on 6 partitions: a minute of each limit produced up front, then 1.5x the limits
while the scenario runs, so both sources always have a backlog; then it drains.

- `rolling`: 3 replicas (dynamic membership); after 40 s each in turn gets SIGTERM and is
  started again (it rejoins, then 20 s), then a 4th joins; 60 s more.
- `kill9`: 2 replicas with static membership (`kafka.group_instance_id_env`); after 40 s,
  one is killed with SIGKILL and started again under the same name every 10 s,
  alternately, 5 kills; 60 s more.

Reported per scenario: each source's busiest 60 s window (requests the double answered, 429s
included) against the limit, in the whole run and among the windows that lie wholly between
the first change and the storm's end (the busiest and the fewest: how much of the limit the
group used while members came and went with a backlog waiting); the 429s and the accepted
events accepted again, in total, from each change to the next (the last one's until the
storm stops) and while the backlog drains (demand shifts between members then); per change,
the stopped member's partitions (`owned`), how long it took to stop, when its successor
logged "assigned" and when an event of those partitions was next accepted (`resume_s`, from
the member's end, rate-limit waits included); whether every produced event was accepted
(nothing lost) and each host's order kept; who sent the requests of each source's busiest
window and of the window that ended with its first 429, and who drew the 429s (`senders.py`:
each process by the ports it held; "4-p1" is the log file's incarnation); the warnings and
errors in the processes' logs. Tables, then all of it as JSON on the last line of stdout;
every answer (time, source, status, sender) in `answers.jsonl` beside the logs.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from senders import Senders

from streamer.testing import AlertSource, FakeIncidentIo
from streamer.testing.infra import Infrastructure, local_infrastructure

SCHEMA = Path(__file__).resolve().parent.parent / "schemas" / "monitoring_event.v2.avsc"
TOKENS = {"BENCH_TOKEN_A": "bench-token-a", "BENCH_TOKEN_B": "bench-token-b"}
SOURCES = {"a": "SRC_A", "b": "SRC_B"}  # team label -> alert source
LIMIT, WINDOW, PARTITIONS = 1200, 60.0, 6
NAMING_PARTITIONS = ("assigned", "revoked", "lost")  # the engine's log lines that list them
STARTUP_LINES = ("streamer: consuming ", "metrics: ")  # printed, not logged: no level
MEMBER_ENV = "BENCH_MEMBER"  # static membership: the process's name, as POD_NAME would be
RUN = [sys.executable, "-m", "streamer", "run", "--metrics-port", "0"]
CONFIG = """
kafka:
  bootstrap_servers: "{bootstrap}"
  group_id: "{topic}"
  dead_letter_topic: "{topic}-dlq"
reader_schema: "{schema}"
topics: [{{name: "{topic}", format: json}}]
destinations:
  a: {{alert_source_config_id: SRC_A, token: {{env: BENCH_TOKEN_A}}, url: "{url}",
      events_per_minute: {limit}, coalesce: none}}
  b: {{alert_source_config_id: SRC_B, token: {{env: BENCH_TOKEN_B}}, url: "{url}",
      events_per_minute: {limit}, coalesce: none}}
delivery: {{requests_per_minute_per_api_key: 10000000}}
routes:
  - {{name: to-b, match: ["labels.team = b"], destination: b}}
  - {{name: to-a, destination: a}}
"""


class Member:
    """One `streamer run` process; its log, JSON lines, in a file."""

    def __init__(self, config: Path, log: Path, name: str) -> None:
        self.name, self.log, self.label = name, log, log.stem  # label: "4-p0", an incarnation
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [*RUN, "--metrics-host", "127.0.0.1", "--config", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **TOKENS, MEMBER_ENV: name},
            )

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                entry = None
            ok = isinstance(entry, dict) and "message" in entry
            out.append(entry if ok else {"level": "other", "message": line})
        return out

    def assigned_at(self) -> float | None:
        """When it first took part in a rebalance (it logs "assigned", maybe nothing)."""
        for entry in self.lines():
            if entry["message"].startswith("assigned ") and "time" in entry:
                return datetime.fromisoformat(entry["time"]).timestamp()
        return None

    def owned(self) -> set[int]:
        """Its partitions now, from its "assigned t[0], t[3]" / revoked / lost lines."""
        owned: set[int] = set()
        for entry in self.lines():
            word = entry["message"].partition(" ")[0]
            if entry.get("logger") != "streamer.engine" or word not in NAMING_PARTITIONS:
                continue
            numbers = {int(n) for n in re.findall(r"\[(\d+)\]", entry["message"])}
            owned = owned | numbers if word == "assigned" else owned - numbers
        return owned


@dataclass
class Change:
    what: str
    at: float
    successor: Member  # the process it started
    owned: set[int] = field(default_factory=set)  # the partitions of the member it stopped
    stop_seconds: float = 0.0
    exit_code: int | None = None


def stop(member: Member, number: int, what: str, start: Callable[[str], Member]) -> Change:
    """Signals `member`, waits for its end, and starts its successor under its name."""
    owned, at = member.owned(), time.time()
    member.process.send_signal(number)
    code = member.process.wait(120)
    return Change(what, at, start(member.name), owned, time.time() - at, code)


class Storm:
    """The load: a backlog up front, then a steady rate per source until stopped."""

    def __init__(self, bootstrap: str, topic: str, args: argparse.Namespace) -> None:
        self.topic, self.hosts = topic, args.hosts
        self.backlog, self.per_second = int(args.backlog_minutes * LIMIT), args.rate * LIMIT / 60
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
        self.produced: list[tuple[str, str]] = []  # (event_id, host), in production order
        self.partition_of: dict[str, int] = {}  # -1: the broker did not take it
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def produce(self, team: str, n: int) -> None:
        event_id, host = str(uuid.uuid4()), f"{team}-host-{n % self.hosts}"
        state = "CRITICAL" if (n // self.hosts) % 2 == 0 else "OK"
        check = {"host": host, "check": "disk", "state": state, "output": state}
        event = {"event_id": event_id, "event_time": int(time.time() * 1000), "check": check}
        event |= {"source_system": "ICINGA", "severity": "CRITICAL", "labels": {"team": team}}

        def delivered(err: Any, msg: Any, event_id: str = event_id) -> None:
            self.partition_of[event_id] = -1 if err else msg.partition()

        value = json.dumps(event).encode()
        self.producer.produce(self.topic, key=host.encode(), value=value, on_delivery=delivered)
        self.produced.append((event_id, host))

    def run(self) -> None:
        for n in range(self.backlog):
            for team in SOURCES:
                self.produce(team, n)
        self.producer.flush(60)
        started, n = time.time(), self.backlog
        while not self.stopping.wait(0.1):
            while n < self.backlog + (time.time() - started) * self.per_second:
                for team in SOURCES:
                    self.produce(team, n)
                n += 1
            self.producer.poll(0)
        self.producer.flush(60)


def wait_until(condition: Callable[[], Any], what: str, limit: float, must: bool = True) -> bool:
    deadline = time.time() + limit
    while not condition():
        if time.time() > deadline:
            if must:
                raise SystemExit(f"not within {limit:.0f} s: {what}")
            return False
        time.sleep(0.5)
    return True


def under_way(start: Callable[[str], Member], names: list[str], args: Any) -> list[Member]:
    """The members started, joined, and delivering for the warm-up."""
    members = [start(name) for name in names]
    wait_until(lambda: all(m.assigned_at() for m in members), f"{names} joined", 120)
    time.sleep(args.warmup)
    return members


def rolling(start: Callable[[str], Member], args: argparse.Namespace) -> list[Change]:
    members = under_way(start, [f"p{i}" for i in range(3)], args)
    changes = []
    for i in range(3):
        changes.append(stop(members[i], signal.SIGTERM, f"SIGTERM p{i}", start))
        members[i] = changes[-1].successor
        wait_until(members[i].assigned_at, f"p{i} rejoined", 120)
        time.sleep(args.between)
    changes.append(Change("p3 joins", time.time(), start("p3")))
    wait_until(changes[-1].successor.assigned_at, "p3 joined", 120)
    time.sleep(args.seconds_after)
    return changes


def kill9(start: Callable[[str], Member], args: argparse.Namespace) -> list[Change]:
    members = under_way(start, [f"member-{i}" for i in range(2)], args)
    changes = []
    for k in range(args.kills):
        i = k % 2  # restarted at once under its name: a container restarted in place
        changes.append(stop(members[i], signal.SIGKILL, f"SIGKILL member-{i}", start))
        members[i] = changes[-1].successor
        time.sleep(args.kill_every if k < args.kills - 1 else args.seconds_after)
    return changes


def busiest_window(times: list[float]) -> tuple[int, float]:
    """The most requests in any 60 s window, and when that window began."""
    counts = ((bisect.bisect_left(times, t + WINDOW) - i, t) for i, t in enumerate(times))
    return max(counts, default=(0, 0.0))


def during(times: list[float], start: float, end: float) -> tuple[int, int]:
    """The most and the fewest requests in a 60 s window that lies wholly in [start, end)
    (windows starting each second; (0, 0) when the span is shorter than a window)."""
    counts = [
        bisect.bisect_left(times, t + WINDOW) - bisect.bisect_left(times, t)
        for t in (start + s for s in range(int(end - start - WINDOW) + 1))
    ]
    return (max(counts), min(counts)) if counts else (0, 0)


def by_sender(answers: list[Any], senders: Senders, start: float, end: float) -> str:
    """Who sent the requests answered in [start, end): "2-p2 401, 5-p3 390, ..."."""
    counts = collections.Counter(
        senders.of(a.client_port, a.at) for a in answers if start <= a.at < end
    )
    return ", ".join(f"{label} {n}" for label, n in sorted(counts.items()))


def measure(
    fake: FakeIncidentIo,
    storm: Storm,
    changes: list[Change],
    began: float,
    senders: Senders,
    drain_began: float,
) -> dict[str, Any]:
    """`drain_began`: when the storm stopped; the last change's row ends there (what
    comes after is the drain's, reported apart: shares shift as backlogs empty)."""
    answers, events = fake.answers, sorted(fake.events, key=lambda e: e.received_at)
    sources, windows = {}, []
    for source in SOURCES.values():
        mine = [a for a in answers if a.source_id == source]
        times = sorted(a.at for a in mine)
        busiest, at = busiest_window(times)
        most, fewest = during(times, changes[0].at, drain_began)
        sources[source] = {
            "busiest_60s": busiest,
            "busiest_60s_in_changes": most,
            "fewest_60s_in_changes": fewest,
            "limit": LIMIT,
            "429s": sum(1 for a in mine if a.status == 429),
            "202s": sum(1 for a in mine if a.status == 202),
        }
        windows.append(
            {"source": source, "window": "busiest", "at_s": round(at - began, 1)}
            | {"by_sender": by_sender(mine, senders, at, at + WINDOW)}
        )
        for a in [a for a in mine if a.status == 429][:1]:  # the window the first 429 ended
            windows.append(
                {"source": source, "window": "first 429", "at_s": round(a.at - began, 1)}
                | {"by_sender": by_sender(mine, senders, a.at - WINDOW, a.at + 1e-6)}
            )
    too_many = [a.at for a in answers if a.status == 429]
    host_of, seen, repeats = dict(storm.produced), set(), []
    first_order, produced_order = collections.defaultdict(list), collections.defaultdict(list)
    accepted_in = []  # (when, partition) of every 202, in time order
    for e in events:
        event_id = e.payload["metadata"]["event_id"]
        accepted_in.append((e.received_at, storm.partition_of.get(event_id)))
        if event_id in seen:
            repeats.append(e.received_at)
        else:
            seen.add(event_id)
            first_order[host_of.get(event_id)].append(event_id)
    for event_id, host in storm.produced:
        produced_order[host].append(event_id)
    rows = []
    for k, c in enumerate(changes):
        end = changes[k + 1].at if k + 1 < len(changes) else drain_began
        gone = c.at + c.stop_seconds
        resumed = next((t for t, p in accepted_in if t > gone and p in c.owned), None)
        assigned = c.successor.assigned_at()
        rows.append(
            {
                "change": c.what,
                "at_s": round(c.at - began, 1),
                "owned": ",".join(map(str, sorted(c.owned))) or "-",
                "stop_s": round(c.stop_seconds, 1),
                "exit": c.exit_code,
                "assigned_s": assigned and round(assigned - c.at, 1),
                "resume_s": resumed and round(resumed - gone, 1),
                "429s": sum(1 for t in too_many if c.at <= t < end),
                "duplicates": sum(1 for t in repeats if c.at <= t < end),
            }
        )
    return {
        "produced": len(storm.produced),
        "not_taken_by_broker": sum(1 for p in storm.partition_of.values() if p < 0),
        "sources": sources,
        "changes": rows,
        "duplicates": len(repeats),
        "duplicates_before_changes": sum(1 for t in repeats if t < changes[0].at),
        "429s_before_changes": sum(1 for t in too_many if t < changes[0].at),
        "429s_while_draining": sum(1 for t in too_many if t >= drain_began),
        "duplicates_while_draining": sum(1 for t in repeats if t >= drain_began),
        "lost": len({event_id for event_id, _ in storm.produced} - seen),
        "order_kept": first_order == produced_order,
        "windows": windows,
        "429s_by_sender": by_sender([a for a in answers if a.status == 429], senders, 0, 1e12),
    }


def log_problems(members: list[Member]) -> dict[str, int]:
    """The most frequent warnings, errors and unstructured lines, numbers made N."""
    seen: collections.Counter[str] = collections.Counter()
    for member in members:
        for entry in member.lines():
            level, message = entry.get("level"), entry["message"]
            noted = level in ("warning", "error", "critical", "other")
            if noted and not message.startswith(STARTUP_LINES):
                seen[f"{level}: {re.sub(r'[0-9]+', 'N', message)[:110]}"] += 1
    return dict(seen.most_common(10))


def scenario(infra: Infrastructure, name: str, args: argparse.Namespace) -> dict[str, Any]:
    logs = Path(args.logs) / name
    logs.mkdir(parents=True, exist_ok=True)
    sources = [
        AlertSource(s, TOKENS[f"BENCH_TOKEN_{t.upper()}"], LIMIT) for t, s in SOURCES.items()
    ]
    with FakeIncidentIo(
        sources, window_seconds=WINDOW, requests_per_minute_per_token=10**9
    ) as fake:
        topic = f"handover-{name}-{uuid.uuid4().hex[:6]}"
        admin = AdminClient({"bootstrap.servers": infra.bootstrap_servers})
        for t, count in ((topic, PARTITIONS), (f"{topic}-dlq", 1)):
            admin.create_topics([NewTopic(t, num_partitions=count)])[t].result(30)
        values = {"bootstrap": infra.bootstrap_servers, "url": fake.url, "schema": SCHEMA}
        config = yaml.safe_load(CONFIG.format(topic=topic, limit=LIMIT, **values))
        if name == "kill9":
            config["kafka"]["group_instance_id_env"] = MEMBER_ENV
        if args.margin is not None:
            config["delivery"]["rate_limit_margin_seconds"] = args.margin
        path = logs / "streamer.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        every: list[Member] = []

        def start(member: str) -> Member:
            every.append(Member(path, logs / f"{len(every)}-{member}.log", member))
            return every[-1]

        storm = Storm(infra.bootstrap_servers, topic, args)
        senders = Senders(
            urlsplit(fake.url).port or 80,
            lambda: [(m.label, m.process.pid) for m in list(every) if m.process.poll() is None],
        )
        began = time.time()
        storm.thread.start()
        senders.start()
        try:
            changes = (rolling if name == "rolling" else kill9)(start, args)
            storm.stopping.set()
            drain_began = time.time()
            storm.thread.join()
            produced = {event_id for event_id, _ in storm.produced}
            drained = wait_until(
                lambda: produced <= {e.payload["metadata"]["event_id"] for e in fake.events},
                "every produced event accepted",
                args.drain_timeout,
                must=False,
            )
            ended = time.time()
        finally:
            storm.stopping.set()
            running = [m for m in every if m.process.poll() is None]
            for member in running:
                member.process.send_signal(signal.SIGTERM)
            codes = {m.name: m.process.wait(120) for m in running}
            senders.stop()
        result = measure(fake, storm, changes, began, senders, drain_began)
        with (logs / "answers.jsonl").open("w") as out:  # for a closer look afterwards
            for a in fake.answers:
                sender = senders.of(a.client_port, a.at)
                out.write(json.dumps([round(a.at - began, 3), a.source_id, a.status, sender]))
                out.write("\n")
    return result | {
        "seconds": round(ended - began, 1),
        "drained": drained,
        "drain_seconds": round(ended - changes[-1].at - args.seconds_after, 1),
        "seconds_after": args.seconds_after,
        "exit_codes_at_the_end": codes,
        "log_problems": log_problems(every),
        "logs": str(logs),
    }


def table(rows: list[dict[str, Any]]) -> None:
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in rows[0]}
    for row in [{k: k for k in rows[0]}, *rows]:
        print("  ".join(str(row[k]).rjust(w) for k, w in widths.items()))


def report(name: str, r: dict[str, Any]) -> None:
    print(
        f"\n{name}: {r['produced']} events, {r['seconds']} s ({r['drain_seconds']} s of it "
        f"draining after the last change + {r['seconds_after']:g} s), logs in {r['logs']}"
    )
    table([{"source": source, **s} for source, s in r["sources"].items()])
    table(r["changes"])
    table(r["windows"])
    print(f"429s by sender: {r['429s_by_sender'] or '-'}")
    print(
        f"duplicates {r['duplicates']} ({r['duplicates_before_changes']} before any change), "
        f"429s before any change {r['429s_before_changes']}, while draining "
        f"{r['429s_while_draining']} (duplicates {r['duplicates_while_draining']}); "
        f"never accepted {r['lost']} (nothing lost: {'yes' if r['lost'] == 0 else 'NO'}); "
        f"per-host order kept: {'yes' if r['order_kept'] else 'NO'}; "
        f"exit codes at the end {r['exit_codes_at_the_end']}"
    )
    for line, count in r["log_problems"].items():
        print(f"  log x{count}: {line}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    option = parser.add_argument
    option("--only", choices=["rolling", "kill9"], help="one scenario (default: both)")
    option("--warmup", type=float, default=40, help="s of delivery before the first change")
    option("--between", type=float, default=20, help="rolling: s from a rejoin to the next")
    option("--kills", type=int, default=5, help="kill9: how many")
    option("--kill-every", type=float, default=10, help="kill9: s between kills")
    option("--seconds-after", type=float, default=60, help="s of load after the last change")
    option("--rate", type=float, default=1.5, help="steady load per source, in limits")
    option("--backlog-minutes", type=float, default=1.0, help="of each limit, up front")
    option("--hosts", type=int, default=500, help="distinct hosts (keys) per source")
    option("--drain-timeout", type=float, default=900, help="s to wait for the backlog")
    option("--logs", help="folder for the processes' logs and config (default: a new one)")
    option("--json", metavar="PATH", help="also write the results to PATH")
    option(
        "--margin", type=float, help="delivery.rate_limit_margin_seconds (default: the service's)"
    )
    for action in parser._actions:
        if action.default not in (None, argparse.SUPPRESS):
            action.help = f"{action.help} (default: %(default)s)"
    args = parser.parse_args()
    args.logs = args.logs or tempfile.mkdtemp(prefix="bench-handover-")
    results = {}
    with local_infrastructure() as infra:
        for name in [args.only] if args.only else ["rolling", "kill9"]:
            results[name] = scenario(infra, name, args)
            report(name, results[name])
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
