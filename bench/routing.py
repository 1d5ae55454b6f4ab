"""Routing + rendering throughput for a 50-route configuration, next to a raw baseline.

Run: `make bench-routing` (or `python bench/routing.py [--events N] [--rounds R]`).
The configuration has 50 team routes (a `labels.team =` matcher and a severity regex
each) with title/metadata templates, the shape of a real multi-team setup. Two paths:

- matched: every event matches one route (on average half the routes are tried first)
  and is rendered into a validated alert payload;
- no-match: the filter path, every route is tried and the event is dropped; most
  monitoring events take this path.

The raw baseline does the same matching with plain dict look-ups and, on the matched
path, builds the payload with f-strings: the least any router must do. Reported:
events/s of each (best of R alternated rounds) and the ratio streamer/raw.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from streamer.config import load_config

ROUTES = 50
SCHEMA = Path(__file__).resolve().parent.parent / "schemas" / "monitoring_event.v2.avsc"


def config_text() -> str:
    lines = [
        f"reader_schema: {SCHEMA}",
        "topics: [{name: events, format: json}]",
        "destinations:",
    ]
    lines += [
        f"  team-{i}: {{alert_source_config_id: S{i}, token: {{env: T}}}}" for i in range(ROUTES)
    ]
    lines.append("routes:")
    for i in range(ROUTES):
        lines += [
            f"  - name: team-{i}",
            f"    match: ['labels.team = team-{i}', 'severity =~ \"CRITICAL|ERROR\"']",
            f"    destination: team-{i}",
            "    templates:",
            "      title: \"[{{ labels.env | default('prod') | upper }}] "
            '{{ alert.annotations.summary | default(alert.labels.alertname) }}"',
            "      metadata: {team: '{{ labels.team }}', service: '{{ labels.service }}'}",
        ]
    return "\n".join(lines) + "\n"


def event(i: int, team: str) -> dict[str, Any]:
    t = datetime(2026, 11, 26, tzinfo=UTC)
    return {
        "event_id": f"e-{i}",
        "event_time": t,
        "source_system": "ALERTMANAGER",
        "severity": "CRITICAL",
        "labels": {"team": team, "service": f"svc-{i % 7}", "env": "prod"},
        "alert": {
            "status": "FIRING",
            "labels": {"alertname": "HighErrorRate"},
            "annotations": {"summary": "errors above 5%"},
            "starts_at": t,
            "ends_at": None,
            "generator_url": None,
            "fingerprint": f"fp-{i % 500}",
        },
        "check": None,
        "runbook_url": None,
    }


RAW_ROUTES = [(f"team-{i}", re.compile("(?:CRITICAL|ERROR)")) for i in range(ROUTES)]


def raw_route(ev: dict[str, Any]) -> list[dict[str, Any]]:
    for team, severity in RAW_ROUTES:
        if ev["labels"].get("team") == team and severity.fullmatch(ev["severity"]):
            a = ev["alert"]
            return [
                {
                    "title": f"[{ev['labels'].get('env', 'prod').upper()}] "
                    f"{a['annotations'].get('summary') or a['labels']['alertname']}",
                    "status": a["status"].lower(),
                    "deduplication_key": a["fingerprint"],
                    "metadata": {"team": ev["labels"]["team"], "service": ev["labels"]["service"]},
                }
            ]
    return []


def rate(loop: Callable[[], None], n: int) -> float:
    start = time.perf_counter()
    loop()
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "streamer.yaml"
        path.write_text(config_text())
        rules = load_config(path, check_secrets=False).rules
    print(f"{ROUTES} routes, {args.events} events per path, best of {args.rounds} rounds")
    for name, events in (
        ("matched (route + render)", [event(i, f"team-{i % ROUTES}") for i in range(args.events)]),
        ("no-match (filter)", [event(i, "nobody") for i in range(args.events)]),
    ):
        sample = events[:3]
        assert [len(rules.evaluate(e).deliveries) for e in sample] == [
            len(raw_route(e)) for e in sample
        ]

        def ours(events: list[dict[str, Any]] = events) -> None:
            for e in events:
                rules.evaluate(e)

        def raw(events: list[dict[str, Any]] = events) -> None:
            for e in events:
                raw_route(e)

        o = max(rate(ours, len(events)) for _ in range(args.rounds))
        r = max(rate(raw, len(events)) for _ in range(args.rounds))
        print(f"{name:<26} streamer {o:>10,.0f} ev/s   raw {r:>10,.0f} ev/s   ratio {o / r:.3f}")


if __name__ == "__main__":
    main()
