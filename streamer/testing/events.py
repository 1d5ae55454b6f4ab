"""Realistic monitoring traffic, for the demo, benchmarks and tests.

`MonitoringTraffic` plays a small estate: a few services whose Prometheus alerts fire
and resolve, database hosts whose disk checks flap, the Alertmanager Watchdog, plenty
of informational noise that no route wants, and a little bad input (bytes that are not
an event). Each thing keeps its identity (fingerprint, host/check) across firing and
resolved, as real monitoring systems do, and states follow each other per thing.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

Kind = Literal["alert", "check", "bad"]


@dataclass(frozen=True)
class TrafficEvent:
    kind: Kind
    key: str  # the Kafka message key: the thing's identity
    event: dict[str, Any] | None  # None for bad input
    raw: bytes | None = None  # the bad input's bytes


def _millis(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def alert(
    *,
    alertname: str,
    service: str,
    team: str,
    severity: str,
    firing: bool,
    env: str = "prod",
    at: datetime | None = None,
    summary: str | None = None,
) -> dict[str, Any]:
    """An Alertmanager alert as the reader schema has it (timestamps as datetimes)."""
    at = at or datetime.now(UTC)
    fingerprint = uuid.uuid5(uuid.NAMESPACE_OID, f"{alertname}/{service}/{env}").hex[:16]
    return {
        "event_id": str(uuid.uuid4()),
        "event_time": at,
        "source_system": "ALERTMANAGER",
        "severity": severity,
        "labels": {"service": service, "team": team, "env": env},
        "alert": {
            "status": "FIRING" if firing else "RESOLVED",
            "labels": {"alertname": alertname, "service": service, "job": service},
            "annotations": {
                "summary": summary or f"{alertname} on {service}",
                "description": f"{alertname} for {service} in {env}",
            },
            "starts_at": at,
            "ends_at": None if firing else at,
            "generator_url": f"http://prometheus.local/graph?g0.expr={alertname}",
            "fingerprint": fingerprint,
        },
        "check": None,
        "runbook_url": None,
    }


def check(
    *, host: str, check_name: str, state: str, team: str = "database", at: datetime | None = None
) -> dict[str, Any]:
    at = at or datetime.now(UTC)
    return {
        "event_id": str(uuid.uuid4()),
        "event_time": at,
        "source_system": "ICINGA",
        "severity": "CRITICAL",
        "labels": {"team": team, "env": "prod"},
        "alert": None,
        "check": {
            "host": host,
            "service": "postgres",
            "check": check_name,
            "state": state,
            "output": f"{check_name.upper()} {state}",
        },
        "runbook_url": f"https://runbooks.local/{check_name}",
    }


def as_json(event: dict[str, Any]) -> bytes:
    """The JSON wire form: timestamps as epoch milliseconds."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, datetime):
            return _millis(value)
        return value

    return json.dumps(plain(event)).encode()


class MonitoringTraffic:
    """An endless, seeded stream of `TrafficEvent`s with realistic proportions."""

    SERVICES = (
        ("checkout", "payments"),
        ("payments-api", "payments"),
        ("search", "search"),
        ("ledger", "payments"),
    )
    ALERTS = (
        ("HighErrorRate", "CRITICAL"),
        ("LatencyHigh", "WARNING"),
        ("PodCrashLooping", "ERROR"),
    )
    HOSTS = ("db-1", "db-2", "db-3")

    def __init__(self, seed: int = 7, bad_input_ratio: float = 0.02) -> None:
        self.rng = random.Random(seed)
        self.bad_input_ratio = bad_input_ratio
        self.firing: dict[str, bool] = {}

    def __iter__(self) -> Iterator[TrafficEvent]:
        while True:
            yield self.next()

    def next(self) -> TrafficEvent:
        roll = self.rng.random()
        if roll < self.bad_input_ratio:
            return TrafficEvent("bad", "garbage", None, self.rng.randbytes(self.rng.randint(1, 40)))
        if roll < 0.08:
            return TrafficEvent(
                "alert",
                "watchdog",
                alert(
                    alertname="Watchdog",
                    service="alertmanager",
                    team="sre",
                    severity="INFO",
                    firing=True,
                ),
            )
        if roll < 0.45:  # informational noise: no route wants it
            service, team = self.rng.choice(self.SERVICES)
            return TrafficEvent(
                "alert",
                f"noise/{service}",
                alert(
                    alertname="DiskWillFillIn4Days",
                    service=service,
                    team="search",
                    severity="INFO",
                    firing=True,
                ),
            )
        if roll < 0.75:
            service, team = self.rng.choice(self.SERVICES)
            alertname, severity = self.rng.choice(self.ALERTS)
            thing = f"{alertname}/{service}"
            firing = not self.firing.get(thing, False)  # alternate: fire, then resolve
            self.firing[thing] = firing
            return TrafficEvent(
                "alert",
                thing,
                alert(
                    alertname=alertname,
                    service=service,
                    team=team,
                    severity=severity,
                    firing=firing,
                ),
            )
        host = self.rng.choice(self.HOSTS)
        thing = f"{host}/disk_usage"
        critical = not self.firing.get(thing, False)
        self.firing[thing] = critical
        return TrafficEvent(
            "check",
            thing,
            check(host=host, check_name="disk_usage", state="CRITICAL" if critical else "OK"),
        )
