"""What to do with incident.io's answer to one delivery attempt (DESIGN.md, section 5).

Pure: a status, headers and body (or a transport error) in, a decision out.

- 2xx: accepted, done.
- 429: wait for the retry-after (the body's `rate_limit.retry_after`, or a `Retry-After`
  header in seconds or as an HTTP date; never longer than MAX_RETRY_AFTER), pause the
  whole limiter, retry; not a failure.
- 5xx, 408, timeouts, connection errors: retry with capped exponential backoff and full
  jitter; optionally dead-letter after a maximum retry time (default: keep trying, as
  an outage must not turn into lost alerts).
- 400, 413, 422 and other 4xx: the payload is wrong and retrying cannot help:
  dead-letter it with the response body.
- 401, 403, 404: the *destination* is misconfigured (token, source id), not the event:
  hold the destination, retry slowly, dead-letter nothing.
- 3xx: the destination's base URL has moved (redirects are never followed: the token
  would go wherever the Location says): hold the destination too, naming the Location
  without its query string (which may carry a token), bounded in length.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

MAX_BODY_IN_DEAD_LETTER = 4096
MAX_RETRY_AFTER = 600.0  # seconds: the longest pause a 429 may impose
MAX_LOCATION_IN_REASON = 200


@dataclass(frozen=True)
class Accepted:
    request_id: str | None = None


@dataclass(frozen=True)
class RateLimited:
    retry_at: float  # epoch seconds
    request_id: str | None = None


@dataclass(frozen=True)
class Retry:
    delay: float
    reason: str
    request_id: str | None = None


@dataclass(frozen=True)
class Undeliverable:
    """The payload is wrong, or retries ran out: the caller writes a dead letter."""

    reason: str
    status: int | None
    body: str
    request_id: str | None = None


@dataclass(frozen=True)
class HoldDestination:
    reason: str
    status: int
    request_id: str | None = None


Decision = Accepted | RateLimited | Retry | Undeliverable | HoldDestination


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with full jitter: uniform(0, min(cap, base * 2**n))."""

    base: float = 0.5
    cap: float = 30.0

    def delay(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        ceiling = min(self.cap, self.base * float(2 ** min(attempt, 32)))
        return rng() * ceiling


@dataclass(frozen=True)
class FailurePolicy:
    backoff: Backoff = Backoff()
    max_retry_seconds: float | None = None  # None: retry 5xx/timeouts forever
    default_rate_limit_wait: float = 1.0

    def decide_response(
        self,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
        *,
        attempt: int,
        first_attempt_at: float,
        now: float,
        rng: Callable[[], float] = random.random,
    ) -> Decision:
        parsed = _json(body)
        request_id = parsed.get("request_id") if isinstance(parsed.get("request_id"), str) else None
        if 200 <= status < 300:
            return Accepted(request_id)
        if status == 429:
            return RateLimited(self._retry_at(headers, parsed, now), request_id)
        if 300 <= status < 400:
            return HoldDestination(
                f"HTTP {status}: redirected to {_location(headers)}; streamer does not follow "
                "redirects: check the destination's url",
                status,
                request_id,
            )
        text = body[:MAX_BODY_IN_DEAD_LETTER].decode("utf-8", errors="replace")
        if status in (401, 403, 404):
            return HoldDestination(f"HTTP {status}: {_summary(parsed, text)}", status, request_id)
        if status >= 500 or status == 408:
            return self._retry(
                f"HTTP {status}", attempt, first_attempt_at, now, rng, request_id, status, text
            )
        return Undeliverable(f"HTTP {status}: {_summary(parsed, text)}", status, text, request_id)

    def decide_error(
        self,
        error: Exception,
        *,
        attempt: int,
        first_attempt_at: float,
        now: float,
        rng: Callable[[], float] = random.random,
    ) -> Decision:
        """A timeout or connection error: incident.io may or may not have the event."""
        reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        return self._retry(reason, attempt, first_attempt_at, now, rng, None, None, "")

    def _retry(
        self,
        reason: str,
        attempt: int,
        first_attempt_at: float,
        now: float,
        rng: Callable[[], float],
        request_id: str | None,
        status: int | None,
        body: str,
    ) -> Decision:
        if self.max_retry_seconds is not None and now - first_attempt_at >= self.max_retry_seconds:
            return Undeliverable(
                f"gave up after {now - first_attempt_at:.0f} s, {attempt + 1} attempts: {reason}",
                status,
                body,
                request_id,
            )
        return Retry(self.backoff.delay(attempt, rng), reason, request_id)

    def _retry_at(self, headers: Mapping[str, str], body: dict[str, Any], now: float) -> float:
        """The latest of the times incident.io gave; a default wait when it gave none."""
        candidates = []
        rate_limit = body.get("rate_limit")
        if isinstance(rate_limit, dict) and isinstance(rate_limit.get("retry_after"), str):
            candidates.append(_http_date(rate_limit["retry_after"]))
        header = _header(headers, "retry-after")
        if header is not None:
            header = header.strip()
            if header.isdigit():
                candidates.append(now + int(header))
            else:
                candidates.append(_http_date(header))
        found = [c for c in candidates if c is not None and math.isfinite(c)]
        # A retry-after past MAX_RETRY_AFTER is not believed (a broken proxy, a year-long
        # date): the limiter pauses that long at most, then asks again.
        return (
            min(max(found), now + MAX_RETRY_AFTER) if found else now + self.default_rate_limit_wait
        )


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def _location(headers: Mapping[str, str]) -> str:
    """The redirect's Location, fit for a log line: no credentials, query or fragment."""
    location = _header(headers, "location")
    if not location:
        return "(no Location)"
    location = location.split("#", 1)[0].split("?", 1)[0]
    scheme, separator, rest = location.partition("://")
    if separator:  # drop user:password@ from the authority
        authority, slash, path = rest.partition("/")
        location = f"{scheme}://{authority.rpartition('@')[2]}{slash}{path}"
    printable = "".join(c if c.isprintable() else "?" for c in location)
    if len(printable) > MAX_LOCATION_IN_REASON:
        return printable[: MAX_LOCATION_IN_REASON - 1] + "…"
    return printable


def _http_date(text: str) -> float | None:
    try:
        # incident.io writes "Thu, 17 Apr 2025 11:17:18 UTC"; RFC 9110 says GMT.
        return parsedate_to_datetime(text.replace(" UTC", " GMT")).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def _json(body: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _summary(body: dict[str, Any], text: str) -> str:
    errors = body.get("errors")
    if isinstance(errors, list) and errors:
        parts = []
        for error in errors[:5]:
            if isinstance(error, dict):
                field = (
                    (error.get("source") or {}).get("field")
                    if isinstance(error.get("source"), dict)
                    else None
                )
                parts.append(
                    f"{error.get('code')}{f' ({field})' if field else ''}: {error.get('message')}"
                )
        if parts:
            return "; ".join(parts)
    return text[:200] or "(no body)"
