"""Structured logs: one JSON object per line, with the context on-call needs, and no secret.

Invariant: a secret registered with `MASK` (every destination token and Kafka/registry
secret, added by the engine and by each CLI command that loads them) appears in no log
line in any form: raw, as `repr()`/`%r`/`!r`, JSON-escaped, `unicode_escape`d, inside a
bytes repr, or URL-encoded; not in the message, the context fields, an exception's
traceback or a stack, nor in the traceback of an uncaught exception. This is the last line
of defence: secrets are validated at load (one line of printable characters, so an HTTP
library never has to quote one back in an error), no code logs a secret on purpose, and
a URL is shown only through `redact_url` (no userinfo, no query string). HTTP client
libraries are kept at WARNING, so no request line (with its URL or headers) is written.

Mechanism: `SecretMask` is both a logging filter (it rewrites the record before any
formatter sees it: message, context, formatted exception, stack) and, through
`MaskedFormatter`, a pass over the finished line, which catches a form that only the
formatter creates (a secret JSON-escaped inside a context list, say). Log calls pass
context with `extra=` (see CONTEXT_FIELDS); the formatter writes it next to the time,
level, logger and message. One line per failure and per state change (destination
held/released, rebalance, reload, dead letter, retry); per-event lines are at debug.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import traceback
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, quote_plus

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
    "silence",
)

MASKED = "***"
_SHORTEST_MASKED = 4  # a shorter value would mask ordinary words; secrets are longer


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
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:  # set (and masked) by SecretMask when it runs first
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, default=str)


def secret_forms(secret: str) -> set[str]:
    """The ways `secret` can be written into a line: raw and each escaping a log call,
    an exception message or a formatter may apply to it."""
    return {
        secret,
        repr(secret)[1:-1],  # repr(), %r, !r
        secret.replace("\\", "\\\\").replace("'", "\\'"),  # inside the repr of a longer text
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        secret.encode("unicode_escape").decode("ascii"),
        repr(secret.encode("utf-8", "backslashreplace"))[2:-1],  # b'...' in an error
        repr(secret.encode("unicode_escape"))[2:-1],
        quote(secret),
        quote(secret, safe=""),
        quote_plus(secret),
    }


class SecretMask(logging.Filter):
    """Replaces every form of every known secret with `***`, wherever a line holds it."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets: frozenset[str] = frozenset()
        self._forms: tuple[str, ...] = ()
        self._pattern: re.Pattern[str] | None = None
        self._lock = threading.Lock()
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        with self._lock:
            known = self.secrets | {s for s in secrets if len(s) >= _SHORTEST_MASKED}
            if known == self.secrets:
                return
            forms = {f for s in known for f in secret_forms(s) if len(f) >= _SHORTEST_MASKED}
            # Longest first: a form that contains another is replaced whole.
            alternatives = sorted(forms, key=len, reverse=True)
            self._pattern = re.compile("|".join(map(re.escape, alternatives)))
            self._forms = tuple(alternatives)
            self.secrets = known

    def mask(self, text: str) -> str:
        pattern = self._pattern
        return text if pattern is None else pattern.sub(MASKED, text)

    def cut(self, text: str, limit: int) -> str:
        """`text` masked, then cut to at most `limit` characters ("…" marks a cut).

        Masking comes first: cut first, a secret across the cut would leave its start behind,
        which the mask no longer recognises. And a text that ends in the start of a secret
        (cut before it got here: a response body read up to a cap) ends in `***` instead."""
        masked = self.mask(text)
        if len(masked) > limit:
            masked = masked[: max(0, limit - 1)]
            return self._without_partial_secret(masked) + "…"
        return self._without_partial_secret(masked)

    def _without_partial_secret(self, text: str) -> str:
        forms = self._forms  # longest first
        if not forms:
            return text
        tail = text[-(len(forms[0]) - 1) :] if len(forms[0]) > 1 else ""
        longest = 0  # the longest end of `tail` that is the start (4+ characters) of a form
        for form in forms:
            at = tail.find(form[:_SHORTEST_MASKED])
            while at != -1 and len(tail) - at > longest:
                if len(tail) - at < len(form) and form.startswith(tail[at:]):
                    longest = len(tail) - at
                    break
                at = tail.find(form[:_SHORTEST_MASKED], at + 1)
        return text[: len(text) - longest] + MASKED if longest else text

    def filter(self, record: logging.LogRecord) -> bool:
        if self._pattern is None:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: the handler reports it, with no values
            record.msg, record.args = f"unformattable log message from {record.name}", None
        else:
            masked = self.mask(message)
            if masked != message:
                record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = _TRACEBACKS.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.mask(record.exc_text)
        if record.stack_info:
            record.stack_info = self.mask(record.stack_info)
        for name in CONTEXT_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                record.__dict__[name] = self._masked(value)
        return True

    def _masked(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.mask(value)
        if isinstance(value, list | tuple):
            return [self._masked(v) for v in value]
        if isinstance(value, dict):
            return {self._masked(k): self._masked(v) for k, v in value.items()}
        return value


_TRACEBACKS = logging.Formatter()
MASK = SecretMask()


class MaskedFormatter(logging.Formatter):
    """Another formatter's output with `mask` applied to the finished line."""

    def __init__(self, inner: logging.Formatter, mask: SecretMask) -> None:
        super().__init__()
        self.inner, self.secret_mask = inner, mask

    def format(self, record: logging.LogRecord) -> str:
        return self.secret_mask.mask(self.inner.format(record))


def redact_url(url: str) -> str:
    """`url` as it may be shown: without userinfo (`user:password@`), query or fragment.

    A comma-separated list (bootstrap servers, registry URLs) is redacted entry by entry;
    an entry without a scheme (`user@host:9092`) loses what precedes its `@`.
    """
    return "".join(
        part if re.fullmatch(r"\s*,\s*", part) else _redact_one(part)
        for part in re.split(r"(\s*,\s*)", url)
    )


def _redact_one(url: str) -> str:
    scheme, separator, rest = url.partition("://")
    if not separator:
        scheme, rest = "", url
    # The authority ends at the first / ? or #; its userinfo ends at its last @.
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    host = authority.rpartition("@")[2]
    path = re.split(r"[?#]", tail, maxsplit=1)[0]
    return f"{scheme}{separator}{host}{path}"


def _print_masked_exception(
    kind: type[BaseException], value: BaseException, tb: TracebackType | None
) -> None:
    text = "".join(traceback.format_exception(kind, value, tb))
    sys.stderr.write(MASK.mask(text))
    sys.stderr.flush()


def _print_masked_thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit or args.exc_value is None:
        return
    name = args.thread.name if args.thread else "unknown"
    sys.stderr.write(f"Exception in thread {name}:\n")
    _print_masked_exception(args.exc_type, args.exc_value, args.exc_traceback)


def configure(level: str = "info", fmt: str = "json", file: Path | None = None) -> None:
    """Logs to stderr (or `file`) as JSON (or plain text for people at a terminal), masked;
    uncaught exceptions are printed masked too."""
    handler: logging.Handler = (
        logging.FileHandler(file) if file else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(
        MaskedFormatter(
            JsonFormatter()
            if fmt == "json"
            else logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"),
            MASK,
        )
    )
    handler.addFilter(MASK)
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    for noisy in ("httpx", "httpcore"):  # a line per request, with its URL: never
        logging.getLogger(noisy).setLevel(logging.WARNING)
    sys.excepthook = _print_masked_exception
    threading.excepthook = _print_masked_thread_exception
