"""Building rules from a YAML snippet, the way operators write them."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from streamer.config import Config, load_config

SCHEMA = Path(__file__).parent.parent / "schemas" / "monitoring_event.v2.avsc"
HEADER = f"""\
reader_schema: {SCHEMA}
topics: [{{name: events, format: json}}]
destinations:
  a: {{alert_source_config_id: A, token: {{env: TOKEN_A}}}}
  b: {{alert_source_config_id: B, token: {{env: TOKEN_B}}}}
"""


def config_from(tmp_path: Path, body: str, *, check_secrets: bool = False) -> Config:
    path = tmp_path / "streamer.yaml"
    path.write_text(HEADER + textwrap.dedent(body))
    return load_config(path, check_secrets=check_secrets)


def alert(**changes: Any) -> dict[str, Any]:
    """A firing alert event as the decoder returns it; keyword args replace fields."""
    from datetime import UTC, datetime

    t = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
    event: dict[str, Any] = {
        "event_id": "e-1",
        "event_time": t,
        "source_system": "ALERTMANAGER",
        "severity": "CRITICAL",
        "labels": {"team": "payments", "service": "checkout"},
        "alert": {
            "status": "FIRING",
            "labels": {"alertname": "HighErrorRate", "instance": "checkout-1"},
            "annotations": {"summary": "Checkout errors"},
            "starts_at": t,
            "ends_at": None,
            "generator_url": None,
            "fingerprint": "fp-1",
        },
        "check": None,
        "runbook_url": None,
    }
    event.update(changes)
    return event


def check(state: str = "CRITICAL", **changes: Any) -> dict[str, Any]:
    event = alert(alert=None, source_system="ICINGA")
    event["check"] = {
        "host": "db-1",
        "service": "postgres",
        "check": "disk",
        "state": state,
        "output": "DISK 97%",
    }
    event.update(changes)
    return event
