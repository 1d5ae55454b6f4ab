"""What incident.io answers to a POST, as its documentation says (shared/reference/...).

The contract of `POST /v2/alert_events/http/{alert_source_config_id}`, kept faithful so
that a client that passes against the double passes against incident.io:

- 202 `{status, message, deduplication_key}` for a valid event;
- 401 without a token (`missing_authorization_material`) or with a wrong one (the token
  may come as `Authorization: Bearer` or `?token=`);
- 404 for an unknown alert source; 422 for a body that breaks the payload schema, one
  error per field, in the documented error shape; 400 for a body that is not JSON;
- 429 with the documented `rate_limit` body (`retry_after` as an HTTP date) and a
  `Retry-After` header, when an alert source (default 120/min) or a token (default
  1200/min) has had its limit of requests in the last window. The window rolls: no more
  than the limit is admitted in *any* window of its length.

Pure apart from the rate-limit windows it keeps: time is passed in, so tests move time
instead of sleeping.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any, Literal

from streamer.alert_event import FieldError, payload_errors

PATH_PREFIX = "/v2/alert_events/http/"


@dataclass(frozen=True)
class AlertSource:
    """An HTTP alert source as configured in incident.io: its id and secret token."""

    id: str
    token: str
    events_per_minute: int = 120
    requires_deduplication_key: bool = True  # true for newly created HTTP sources


@dataclass(frozen=True)
class ReceivedEvent:
    """An event the fake accepted (answered 202), in arrival order."""

    source_id: str
    payload: dict[str, Any]
    received_at: float
    request_id: str


@dataclass(frozen=True)
class RecordedAnswer:
    """Every answer the fake gave, accepted or not: for asserting on 429s and faults.

    Status 0: no answer at all (a reset connection, a request left hanging). `event_id`:
    the request's `metadata.event_id`, if it had one (streamer's default metadata does),
    so a turned-away request can be traced to the event it carried; `client_port`, to
    the process that sent it.
    """

    source_id: str
    status: int
    at: float
    request_id: str
    event_id: str | None = None
    client_port: int | None = None  # the TCP port the request came from


@dataclass
class Reply:
    """An HTTP answer: status, JSON body, extra headers."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def http_date(epoch_seconds: float) -> str:
    """The date form incident.io writes in `rate_limit.retry_after`."""
    return formatdate(math.ceil(epoch_seconds), usegmt=True).replace("GMT", "UTC")


ERROR_TYPES = {
    400: "bad_request",
    401: "authentication_error",
    403: "authorization_error",
    404: "not_found",
    413: "request_too_large",
    422: "validation_error",
    429: "too_many_requests",
}


def error(status: int, type_: str, request_id: str, errors: Iterable[FieldError]) -> Reply:
    """incident.io's error shape: `{type, status, request_id, errors: [...]}`."""
    return Reply(
        status,
        {
            "type": type_,
            "status": status,
            "request_id": request_id,
            "errors": [e.to_json() for e in errors],
        },
    )


class RollingWindow:
    """Admits at most `limit` requests in any `window` seconds (a log of admissions)."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self.admitted: deque[float] = deque()

    def retry_at(self, now: float) -> float | None:
        """None if a request may be admitted now, else when the next one may be."""
        while self.admitted and self.admitted[0] <= now - self.window:
            self.admitted.popleft()
        if len(self.admitted) < self.limit:
            return None
        return self.admitted[len(self.admitted) - self.limit] + self.window

    def remaining(self) -> int:
        return max(0, self.limit - len(self.admitted))


class Contract:
    """The alert sources, their tokens and rate-limit windows, and the answer they give.

    Not thread-safe: the fake calls it under its lock.
    """

    def __init__(
        self,
        *,
        requests_per_minute_per_token: int,
        window_seconds: float,
        retry_after_header: Literal["seconds", "date", "none"],
    ) -> None:
        self.retry_after_header = retry_after_header
        self._window = window_seconds
        self._token_limit = requests_per_minute_per_token
        self._sources: dict[str, AlertSource] = {}
        self._source_windows: dict[str, RollingWindow] = {}
        self._token_windows: dict[str, RollingWindow] = {}

    def add_source(self, source: AlertSource) -> None:
        self._sources[source.id] = source
        self._source_windows[source.id] = RollingWindow(source.events_per_minute, self._window)

    def decide(
        self,
        source_id: str,
        auth_header: str | None,
        query_token: str | None,
        body: bytes,
        request_id: str,
        now: float,
    ) -> Reply:
        token = query_token
        if auth_header:
            scheme, _, credentials = auth_header.partition(" ")
            token = credentials.strip() if scheme.lower() == "bearer" else None
        if not token:
            return error(
                401,
                "authentication_error",
                request_id,
                [
                    FieldError(
                        code="missing_authorization_material",
                        message="No authorization material provided in request",
                    )
                ],
            )
        source = self._sources.get(source_id)
        if source is None:
            return error(
                404,
                "not_found",
                request_id,
                [
                    FieldError(
                        code="not_found", message=f"No alert source config with id {source_id}"
                    )
                ],
            )
        if token != source.token:
            return error(
                401,
                "authentication_error",
                request_id,
                [
                    FieldError(
                        code="invalid_authorization_material",
                        message="The provided token is not valid for this alert source",
                    )
                ],
            )
        limited = self._rate_limited(source, token, request_id, now)
        if limited is not None:
            return limited
        try:
            parsed = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            return error(
                400,
                "bad_request",
                request_id,
                [
                    FieldError(
                        code="invalid_json", message=f"The request body is not valid JSON: {e}"
                    )
                ],
            )
        errors = payload_errors(parsed, require_deduplication_key=source.requires_deduplication_key)
        if errors:
            return error(422, "validation_error", request_id, errors)
        return Reply(
            202,
            {
                "status": "success",
                "message": "Event accepted for processing",
                "deduplication_key": parsed.get("deduplication_key") or request_id,
            },
        )

    def _rate_limited(
        self, source: AlertSource, token: str, request_id: str, now: float
    ) -> Reply | None:
        token_window = self._token_windows.setdefault(
            token, RollingWindow(self._token_limit, self._window)
        )
        for name, window in (
            (source.id, self._source_windows[source.id]),
            ("api_key", token_window),
        ):
            retry_at = window.retry_at(now)
            if retry_at is not None:
                reply = error(
                    429,
                    "too_many_requests",
                    request_id,
                    [
                        FieldError(
                            code="too_many_requests",
                            message="Too many requests hit the API too quickly. "
                            "We recommend an exponential backoff of your requests.",
                        )
                    ],
                )
                reply.body["rate_limit"] = {
                    "name": name,
                    "limit": window.limit,
                    "remaining": 0,
                    "retry_after": http_date(retry_at),
                }
                if self.retry_after_header == "seconds":
                    reply.headers["Retry-After"] = str(max(1, math.ceil(retry_at - now)))
                elif self.retry_after_header == "date":
                    reply.headers["Retry-After"] = formatdate(math.ceil(retry_at), usegmt=True)
                return reply
        for window in (self._source_windows[source.id], token_window):
            window.admitted.append(now)
        return None
