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
| `streamer.value-truncated`, `.original-size` | only on a letter cut to fit its topic |

A letter always fits its topic: one larger than the topic accepts is written with its
value cut short (and, if even that is not enough, its key cut and the original headers
left out), with `streamer.value-truncated: true` and the original value's size; the
source coordinates above are always there, so the original can be read from its topic.

Tokens never appear: incident.io's answers do not contain them, nothing else here comes
from configuration, and every text header still goes through the secret mask, before it is
cut to MAX_TEXT (`SecretMask.cut`: a cut never leaves part of a secret behind).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple

from streamer.decoding import Headers
from streamer.logs import MASK

MAX_TEXT = 4096
PREFIX = "streamer."


class SourceMessage(NamedTuple):
    """A fetched Kafka message, kept until it is terminal (for dead letters). A tuple:
    one is made for every message fetched, so it must be cheap to make."""

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
        added = [
            (PREFIX + k, MASK.cut(v, MAX_TEXT).encode()) for k, v in ours.items() if v is not None
        ]
        original = [(k, v) for k, v in self.message.headers if not k.startswith(PREFIX)]
        return original + added


RECORD_OVERHEAD = 128  # batch and record framing, generously
HEADER_OVERHEAD = 16


@dataclass(frozen=True)
class Record:
    """What is produced for a dead letter."""

    key: bytes | None
    value: bytes | None
    headers: Headers


def _size(key: bytes | None, value: bytes | None, headers: Headers) -> int:
    return (
        RECORD_OVERHEAD
        + len(key or b"")
        + len(value or b"")
        + sum(HEADER_OVERHEAD + len(k) + len(v or b"") for k, v in headers)
    )


def fitted(letter: DeadLetter, limit: int, now: datetime | None = None) -> Record:
    """The letter as a record of at most `limit` bytes (see the module docstring)."""
    message = letter.message
    key, value, headers = message.key, message.value, letter.headers(now)
    if _size(key, value, headers) <= limit:
        return Record(key, value, headers)
    original_size = len(value or b"")
    ours = [(k, v) for k, v in headers if k.startswith(PREFIX)]
    marks: list[tuple[str, bytes | None]] = [
        (PREFIX + "value-truncated", b"true"),
        (PREFIX + "original-size", str(original_size).encode()),
    ]
    headers = [*headers, *marks]
    room = limit - _size(key, b"", headers)
    if room < 0:  # the key and the original headers alone are too big: keep only ours
        headers = ours + marks
        key = (key or b"")[: max(0, limit - _size(b"", b"", headers)) // 2] or None
        room = limit - _size(key, b"", headers)
    return Record(key, (value or b"")[: max(0, room)], headers)


def read_headers(headers: Headers | None) -> dict[str, str]:
    """The dead-letter headers of a record, without the prefix (for replay and tests)."""
    return {
        k[len(PREFIX) :]: v.decode("utf-8", errors="replace")
        for k, v in headers or ()
        if k.startswith(PREFIX) and v is not None
    }
