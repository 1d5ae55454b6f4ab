"""Configuration size: load time, peak memory and routing rate for 100 to 50,000 routes.

Run: `make bench-config` (or `python bench/config_scale.py [--sizes 100,1000,...]`).
Each size is a generated rules file of the shape routing trees take where they are
generated for hundreds of teams (Alertmanager imports, one route per team or service):

- 50% `matchers: ['team="team-N"', 'severity=~"critical|warning"']`, each with the same
  title template (generators repeat them) and the built-in defaults for the rest;
- 30% `match: {service: svc-N}`, built-in templates only;
- 10% `match_re: {alertname: "AppNDown|AppNSlow"}` (a literal alternation);
- 10% `match_re: {instance: "host-N\\..*"}` (a prefix and anything after it).

Each size loads in a fresh process (`load_config`, the same call a start or a reload
makes), so its peak RSS is its own; then it routes two streams of events: `matched`
(every event matches one route, picked at random, and is rendered) and `no-match` (no
route matches; the filter path most monitoring events take). Reported: load CPU seconds
(and wall seconds: the machine is shared), peak RSS of the process (and RSS after
imports, before the load), events per CPU second of each stream (best of 3 rounds of a
CPU second), and each as a ratio to the 100-route row of the same run. A size that
takes longer than --timeout is reported as such.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SCHEMA = Path(__file__).resolve().parent.parent / "schemas" / "monitoring_event.v2.avsc"
DESTINATIONS = 50
TITLE = "[{{ labels.env | default('prod') | upper }}] {{ alert.labels.alertname }} on {{ alert.labels.instance | default('?') }}"  # noqa: E501


KINDS = ("team",) * 5 + ("service",) * 3 + ("alertname", "instance")


def kind(i: int) -> str:
    return KINDS[i % 10]


def config_text(routes: int) -> str:
    destinations = min(routes, DESTINATIONS)
    lines = [
        f"reader_schema: {SCHEMA}",
        "topics: [{name: events, format: json}]",
        "destinations:",
        *(
            f"  d-{d}: {{alert_source_config_id: S{d}, token: {{env: T}}}}"
            for d in range(destinations)
        ),
        "routes:",
    ]
    for i in range(routes):
        lines += [f"  - name: r-{i}", f"    destination: d-{i % destinations}"]
        what = kind(i)
        if what == "team":
            lines += [
                f"    matchers: ['team=\"team-{i}\"', 'severity=~\"critical|warning\"']",
                f"    templates: {{title: {json.dumps(TITLE)}}}",
            ]
        elif what == "service":
            lines.append(f"    match: {{service: svc-{i}}}")
        elif what == "alertname":
            lines.append(f"    match_re: {{alertname: 'App{i}Down|App{i}Slow'}}")
        else:
            lines.append(f"    match_re: {{instance: 'host-{i}\\..*'}}")
    return "\n".join(lines) + "\n"


def event(i: int, labels: dict[str, str]) -> dict[str, Any]:
    t = datetime(2026, 12, 7, tzinfo=UTC)
    return {
        "event_id": f"e-{i}",
        "event_time": t,
        "source_system": "ALERTMANAGER",
        "severity": "CRITICAL",
        "labels": {"env": "prod"},
        "alert": {
            "status": "FIRING",
            "labels": {"alertname": "Other", "severity": "critical", **labels},
            "annotations": {"summary": "errors above 5%"},
            "starts_at": t,
            "ends_at": None,
            "generator_url": None,
            "fingerprint": f"fp-{i % 500}",
        },
        "check": None,
        "runbook_url": None,
    }


def matching_labels(i: int) -> dict[str, str]:
    """Labels that route `r-i` matches (and, by construction, no earlier route)."""
    what = kind(i)
    if what == "team":
        return {"team": f"team-{i}"}
    if what == "service":
        return {"service": f"svc-{i}"}
    if what == "alertname":
        return {"alertname": f"App{i}Slow"}
    return {"instance": f"host-{i}.example:9100"}


def rate(rules: Any, events: list[dict[str, Any]]) -> float:
    """Events per CPU second, best of 3 rounds of about one CPU second each."""
    best = 0.0
    for _ in range(3):
        done, start = 0, time.process_time()
        while time.process_time() - start < 1.0:
            for e in events[done % len(events) : done % len(events) + 100]:
                rules.evaluate(e)
            done += 100
        best = max(best, done / (time.process_time() - start))
    return best


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def one(path: Path, routes: int) -> dict[str, Any]:
    """Loads and routes in this process (a fresh one per size)."""
    from streamer.config import load_config

    before = rss_mib()
    start, cpu = time.perf_counter(), time.process_time()
    rules = load_config(path, check_secrets=False).rules
    load, load_cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    after = rss_mib()
    pick = random.Random(1)
    matched = [event(n, matching_labels(pick.randrange(routes))) for n in range(1000)]
    nobody = {"team": "nobody", "service": "none", "instance": "elsewhere:9100"}
    no_match = [event(n, nobody) for n in range(1000)]
    for e in matched[:50]:
        assert len(rules.evaluate(e).deliveries) == 1, e["alert"]["labels"]
    assert rules.evaluate(no_match[0]).dropped
    return {
        "routes": routes,
        "load_s": load,
        "load_cpu_s": load_cpu,
        "rss_before_mib": before,
        "rss_after_mib": after,
        "peak_mib": peak,
        "matched": rate(rules, matched),
        "no_match": rate(rules, no_match),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000,50000")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per size")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(one(args.file, args.one)))
        return
    rows: list[dict[str, Any]] = []
    print(
        f"{'routes':>7} {'load cpu s':>10} {'(wall)':>7} {'x100':>6} {'peak MiB':>9}"
        f" {'(imports)':>9} {'matched ev/s':>13} {'x100':>6} {'no-match ev/s':>14} {'x100':>6}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for routes in map(int, args.sizes.split(",")):
            path = Path(tmp) / f"streamer-{routes}.yaml"
            path.write_text(config_text(routes))
            command = [sys.executable, __file__, "--one", str(routes), "--file", str(path)]
            try:
                done = subprocess.run(
                    command, capture_output=True, text=True, timeout=args.timeout, check=True
                )
            except subprocess.TimeoutExpired:
                print(f"{routes:>7} more than {args.timeout:.0f} s (stopped)")
                continue
            except subprocess.CalledProcessError as e:
                print(f"{routes:>7} failed:\n{e.stderr}")
                continue
            row = json.loads(done.stdout)
            rows.append(row)
            base = rows[0]
            print(
                f"{routes:>7} {row['load_cpu_s']:>10.2f} {row['load_s']:>7.2f}"
                f" {row['load_cpu_s'] / base['load_cpu_s']:>6.1f}"
                f" {row['peak_mib']:>9.0f} {row['rss_before_mib']:>9.0f}"
                f" {row['matched']:>13,.0f} {row['matched'] / base['matched']:>6.2f}"
                f" {row['no_match']:>14,.0f} {row['no_match'] / base['no_match']:>6.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
