"""What to do with incident.io's answer to one delivery attempt (docs/design.md, 5).

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

A hostile or broken answer changes none of this (docs/design.md, guarantee 8): the
status decides, and `decide_response` never raises. A body is read as JSON only when it is
an object of at most MAX_PARSED_BODY bytes that the parser can take (one nested past the
recursion limit, a 4,301-digit number, invalid UTF-8: no body at all); a `request_id`
counts only as a short printable string. A 429 always pauses the limiter, for between
`default_rate_limit_wait` and MAX_RETRY_AFTER: the latest retry-after given (the body's
`rate_limit.retry_after` date, a `Retry-After` header of ASCII digits or an HTTP date),
clamped to that range; none readable (negative, fractional, NaN, a date that does not
exist, longer than MAX_DATE_LENGTH): the default wait.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

# The process's secret mask (logs.MASK), this pure module's one outside input: which texts
# are secrets.
from streamer import logs

if TYPE_CHECKING:
    from streamer.incident_io import Answer

MAX_BODY_IN_DEAD_LETTER = 4096
MAX_RETRY_AFTER = 600.0  # seconds: the longest pause a 429 may impose
MAX_LOCATION_IN_REASON = 200
# incident.io's answers are a few hundred bytes (incident_io.MAX_ANSWER_BODY cuts at 64 KiB).
MAX_PARSED_BODY = 64 * 1024
MAX_REQUEST_ID = 128
MAX_SUMMARY = 200  # characters of an error summary in a reason
MAX_DATE_LENGTH = 64  # an HTTP date is 29 characters
_DELAY_SECONDS = re.compile(r"[0-9]+")  # RFC 9110 delay-seconds: ASCII digits only


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
        request_id = _request_id(parsed.get("request_id"))
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
        # Masked before it is cut (DESIGN.md, guarantee 9): a token a proxy echoes back across
        # the cut would otherwise leave its start in the dead letter, unrecognisable.
        text = logs.MASK.cut(body.decode("utf-8", errors="replace"), MAX_BODY_IN_DEAD_LETTER)
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
        """The latest of the times incident.io gave, clamped to [default wait, MAX_RETRY_AFTER]
        from now; the default wait when it gave none that can be read."""
        candidates = []
        rate_limit = body.get("rate_limit")
        if isinstance(rate_limit, dict) and isinstance(rate_limit.get("retry_after"), str):
            candidates.append(_http_date(rate_limit["retry_after"]))
        header = _header(headers, "retry-after")
        if isinstance(header, str):
            header = header.strip()
            if _DELAY_SECONDS.fullmatch(header):
                candidates.append(_delay_seconds(header, now))
            else:
                candidates.append(_http_date(header))
        found = [c for c in candidates if c is not None and not math.isnan(c)]
        latest = max(found, default=now)
        # A retry-after past MAX_RETRY_AFTER is not believed (a broken proxy, a year-long
        # date): the limiter pauses that long at most, then asks again. One already past
        # (a stale date, a clock behind ours, "0") still pauses for the default wait: the
        # 429 says this window is spent, and retrying at once would only meet another.
        earliest = now + self.default_rate_limit_wait
        return min(max(latest, earliest), now + MAX_RETRY_AFTER)


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


def _delay_seconds(digits: str, now: float) -> float:
    """`now` + a delay-seconds of any length (past nine digits, 31 years: infinity)."""
    significant = digits.lstrip("0")
    return math.inf if len(significant) > 9 else now + int(significant or "0")


def _http_date(text: str) -> float | None:
    """The date as epoch seconds; None for anything that is not one (never raises)."""
    if len(text) > MAX_DATE_LENGTH:
        return None
    try:
        # incident.io writes "Thu, 17 Apr 2025 11:17:18 UTC"; RFC 9110 says GMT.
        when = parsedate_to_datetime(text.replace(" UTC", " GMT")).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError, OSError):
        return None  # a year, day or zone no calendar has: OverflowError, ValueError
    return when if math.isfinite(when) else None


def _json(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or {} when it is anything else: too long to be
    incident.io's, not JSON, or nested deeper than the parser goes (its RecursionError is
    raised as it descends, before anything is built: safe to catch)."""
    if len(body) > MAX_PARSED_BODY:
        return {}
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _request_id(value: Any) -> str | None:
    """incident.io's request id, if it looks like one: it goes into logs and dead letters."""
    if isinstance(value, str) and 0 < len(value) <= MAX_REQUEST_ID and value.isprintable():
        return value
    return None


def _printable(text: str, limit: int) -> str:
    """`text` fit for a log line: control characters as "?", at most `limit` characters."""
    text = text[: limit + 1]
    shown = "".join(c if c.isprintable() else " " if c.isspace() else "?" for c in text)
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def _summary(body: dict[str, Any], text: str) -> str:
    """incident.io's errors as "code (field): message; …", at most MAX_SUMMARY characters.
    Only strings are shown: a value nested hundreds deep has a repr that recurses."""
    errors = body.get("errors")
    if isinstance(errors, list) and errors:
        parts = []
        for error in errors[:5]:
            if isinstance(error, dict):
                source = error.get("source")
                field = _string(source.get("field")) if isinstance(source, dict) else None
                parts.append(
                    f"{_string(error.get('code'))}{f' ({field})' if field else ''}: "
                    f"{_string(error.get('message'))}"
                )
        if parts:
            return _printable("; ".join(parts), MAX_SUMMARY)
    return _printable(text, MAX_SUMMARY) or "(no body)"


def _string(value: Any) -> str | None:
    # masked whole, then cut (see decide_response)
    return logs.MASK.cut(value, MAX_SUMMARY + 1) if isinstance(value, str) else None


def decide(
    policy: FailurePolicy,
    answer: Answer | Exception,
    attempt: int,
    first_attempt_at: float,
    now: float,
    rng: Callable[[], float] = random.random,
) -> Decision:
    """The policy's decision on one attempt's answer (wall-clock times). An answer the
    policy cannot read is treated as no answer at all: retried, never raised."""
    try:
        if isinstance(answer, Exception):
            raise answer
        return policy.decide_response(
            answer.status,
            answer.headers,
            answer.body,
            attempt=attempt,
            first_attempt_at=first_attempt_at,
            now=now,
            rng=rng,
        )
    except Exception as e:
        return policy.decide_error(
            e, attempt=attempt, first_attempt_at=first_attempt_at, now=now, rng=rng
        )
