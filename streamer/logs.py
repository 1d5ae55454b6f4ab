"""Structured logs: one JSON object per line, with the context an on-call engineer needs.

Log calls pass context with `extra=` (see CONTEXT_FIELDS); the formatter writes it next to
the time, level, logger and message. One line per failure and per state change
(destination held/released, rebalance, reload, dead letter, retry); per-event lines are
at debug.

Secrets: `SecretMask` replaces every known secret value (tokens, Kafka and registry
secrets) in any log line with `***`, as a last line of defence behind the rule that no
code logs a secret in the first place. HTTP client libraries are kept at WARNING, so no
request line (with its URL or headers) is ever written.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

CONTEXT_FIELDS = (
    "topic",
    "partition",
    "offset",
    "route",
    "destination",
    "deduplication_key",
    "request_id",
    "reason",
    "http_status",
    "attempts",
    "partitions",
    "config",
    "problems",
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class SecretMask(logging.Filter):
    """Masks known secret values wherever they would appear in a formatted line."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets: set[str] = set()
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        self.secrets |= {s for s in secrets if len(s) >= 4}  # too short to mask safely

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        masked = message
        for secret in self.secrets:
            masked = masked.replace(secret, "***")
        if masked != message:
            record.msg, record.args = masked, None
        for name in CONTEXT_FIELDS:
            value = record.__dict__.get(name)
            if isinstance(value, str) and any(s in value for s in self.secrets):
                for secret in self.secrets:
                    value = value.replace(secret, "***")
                record.__dict__[name] = value
        return True


MASK = SecretMask()


def configure(level: str = "info", fmt: str = "json") -> None:
    """Logs to stderr as JSON (or plain text for people at a terminal)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    handler.addFilter(MASK)
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    for noisy in ("httpx", "httpcore"):  # a line per request, with its URL: never
        logging.getLogger(noisy).setLevel(logging.WARNING)
