"""Dead letters: the original message, unchanged, plus headers that say why.

A dead letter carries the original key, value and headers, so it can be replayed as
it was, and these headers (all `streamer.`-prefixed, UTF-8 text):

| header | what |
|---|---|
| `streamer.reason` | a stable code: `decode:<reason>`, `template`, `http-<status>`, `gave-up` |
| `streamer.detail` | what went wrong, in words (bounded) |
| `streamer.route`, `streamer.destination` | where the event was going, if known |
| `streamer.http_status`, `.response_body`, `.request_id` | incident.io's answer (bounded) |
| `streamer.source_topic`, `.source_partition`, `.source_offset` | where it came from |
| `streamer.attempts` | delivery attempts made |
| `streamer.dead_lettered_at` | when (ISO 8601, UTC) |

Tokens never appear: incident.io's answers do not contain them and nothing else here
comes from configuration.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

MAX_TEXT = 4096
PREFIX = "streamer."

Headers = list[tuple[str, bytes | None]]


@dataclass(frozen=True)
class SourceMessage:
    """A fetched Kafka message, kept until it is terminal (for dead letters)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]


@dataclass(frozen=True)
class DeadLetter:
    message: SourceMessage
    reason: str
    detail: str
    route: str | None = None
    destination: str | None = None
    http_status: int | None = None
    response_body: str | None = None
    request_id: str | None = None
    attempts: int = 0

    def headers(self, now: datetime | None = None) -> Headers:
        """The original headers, then the dead-letter headers."""
        ours = {
            "reason": self.reason,
            "detail": self.detail,
            "route": self.route,
            "destination": self.destination,
            "http_status": None if self.http_status is None else str(self.http_status),
            "response_body": self.response_body,
            "request_id": self.request_id,
            "source_topic": self.message.topic,
            "source_partition": str(self.message.partition),
            "source_offset": str(self.message.offset),
            "attempts": str(self.attempts),
            "dead_lettered_at": (now or datetime.now(UTC)).isoformat(),
        }
        added = [(PREFIX + k, _bounded(v).encode()) for k, v in ours.items() if v is not None]
        original = [(k, v) for k, v in self.message.headers if not k.startswith(PREFIX)]
        return original + added


def _bounded(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def read_headers(headers: Headers | None) -> dict[str, str]:
    """The dead-letter headers of a record, without the prefix (for replay and tests)."""
    return {
        k[len(PREFIX) :]: v.decode("utf-8", errors="replace")
        for k, v in headers or ()
        if k.startswith(PREFIX) and v is not None
    }
