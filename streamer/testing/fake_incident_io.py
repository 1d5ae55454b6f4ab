"""A contract-faithful stand-in for incident.io's Alert Events V2 HTTP API.

A real HTTP/1.1 server on loopback for `POST /v2/alert_events/http/{alert_source_config_id}`,
answering as shared/reference/incident-io-alert-events-v2.md documents:

- 202 `{status, message, deduplication_key}` for a valid event, recorded in arrival order;
- 401 without a token (`missing_authorization_material`) or with a wrong one;
- 404 for an unknown alert source; 422 for a body that breaks the payload schema, in
  the documented error shape; 400 for a body that is not JSON;
- 429 with the documented `rate_limit` body (`retry_after` as an HTTP date) and a
  `Retry-After` header, when an alert source (default 120/min) or a token (default
  1200/min) has had its limit of requests in the last window. The window rolls: no
  more than the limit is admitted in *any* window of its length;
- faults switched at runtime: 5xx answers, added latency, connection resets.

Time comes from an injected clock (epoch seconds), so tests move time instead of
sleeping. The server can be driven in-process (`FakeIncidentIo`) or over HTTP
(`/_fake/...`, see `_ControlApi`) when it runs as `streamer fake-incident-io`.
"""

from __future__ import annotations

import json
import math
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from streamer.alert_event import FieldError, payload_errors

Clock = Callable[[], float]
_PATH_PREFIX = "/v2/alert_events/http/"
_MAX_BODY = 1 << 20


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
class Answer:
    """Every answer the fake gave, accepted or not: for asserting on 429s and faults."""

    source_id: str
    status: int
    at: float
    request_id: str


@dataclass
class Fault:
    """A fault applied to matching requests while it lasts (count and/or until a time)."""

    kind: Literal["status", "latency", "reset"]
    status: int = 503
    seconds: float = 0.0
    source_id: str | None = None
    remaining: int | None = None
    until: float | None = None

    def matches(self, source_id: str, now: float) -> bool:
        if self.source_id is not None and self.source_id != source_id:
            return False
        if self.until is not None and now >= self.until:
            return False
        return self.remaining is None or self.remaining > 0


def http_date(epoch_seconds: float) -> str:
    """The date form incident.io writes in `rate_limit.retry_after`."""
    return formatdate(math.ceil(epoch_seconds), usegmt=True).replace("GMT", "UTC")


class _RollingWindow:
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


@dataclass
class _Reply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    reset: bool = False


def _error(status: int, type_: str, request_id: str, errors: Iterable[FieldError]) -> _Reply:
    return _Reply(
        status,
        {
            "type": type_,
            "status": status,
            "request_id": request_id,
            "errors": [e.to_json() for e in errors],
        },
    )


_ERROR_TYPES = {
    400: "bad_request",
    401: "authentication_error",
    403: "authorization_error",
    404: "not_found",
    413: "request_too_large",
    422: "validation_error",
    429: "too_many_requests",
}


def _fault_reply(status: int, request_id: str) -> _Reply:
    """What incident.io's answer with that status looks like (a 5xx by default)."""
    type_ = _ERROR_TYPES.get(status, "internal_server_error")
    code = "internal_error" if type_ == "internal_server_error" else type_
    return _error(
        status, type_, request_id, [FieldError(code=code, message=f"Injected fault: HTTP {status}")]
    )


class FakeIncidentIo:
    """The double: `with FakeIncidentIo([AlertSource("src", "tok")]) as fake: fake.url`."""

    def __init__(
        self,
        sources: Iterable[AlertSource] = (),
        *,
        requests_per_minute_per_token: int = 1200,
        window_seconds: float = 60.0,
        retry_after_header: Literal["seconds", "date", "none"] = "seconds",
        clock: Clock = time.time,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.clock = clock
        self.retry_after_header = retry_after_header
        self._window = window_seconds
        self._token_limit = requests_per_minute_per_token
        self._lock = threading.Lock()
        self._sources: dict[str, AlertSource] = {}
        self._source_windows: dict[str, _RollingWindow] = {}
        self._token_windows: dict[str, _RollingWindow] = {}
        self._faults: list[Fault] = []
        self._events: list[ReceivedEvent] = []
        self._answers: list[Answer] = []
        for source in sources:
            self.add_source(source)
        self._server = _QuietServer((host, port), _handler_for(self))
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def endpoint(self, source_id: str) -> str:
        return f"{self.url}{_PATH_PREFIX}{source_id}"

    def start(self) -> FakeIncidentIo:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},  # stop() waits up to one interval
            name="fake-incident-io",
            daemon=True,
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

    def __enter__(self) -> FakeIncidentIo:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what tests set and read -----------------------------------------------------

    def add_source(self, source: AlertSource) -> None:
        with self._lock:
            self._sources[source.id] = source
            self._source_windows[source.id] = _RollingWindow(source.events_per_minute, self._window)

    def add_fault(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def fail(
        self,
        status: int = 503,
        *,
        count: int | None = None,
        seconds: float | None = None,
        source_id: str | None = None,
    ) -> Fault:
        """Answer `status` (a 5xx, or any error) to matching requests, for `count` or `seconds`."""
        return self.add_fault(
            Fault(
                "status",
                status=status,
                source_id=source_id,
                remaining=count,
                until=self._until(seconds),
            )
        )

    def delay(
        self,
        latency: float,
        *,
        count: int | None = None,
        seconds: float | None = None,
        source_id: str | None = None,
    ) -> Fault:
        """Answer `latency` seconds late (the event is still processed: as a slow server)."""
        return self.add_fault(
            Fault(
                "latency",
                seconds=latency,
                source_id=source_id,
                remaining=count,
                until=self._until(seconds),
            )
        )

    def reset_connections(
        self,
        *,
        count: int | None = None,
        seconds: float | None = None,
        source_id: str | None = None,
    ) -> Fault:
        """Reset the TCP connection instead of answering (the event is not processed)."""
        return self.add_fault(
            Fault("reset", source_id=source_id, remaining=count, until=self._until(seconds))
        )

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def events(self) -> list[ReceivedEvent]:
        with self._lock:
            return list(self._events)

    @property
    def answers(self) -> list[Answer]:
        with self._lock:
            return list(self._answers)

    def _until(self, seconds: float | None) -> float | None:
        return None if seconds is None else self.clock() + seconds

    # -- the endpoint ----------------------------------------------------------------

    def _take_faults(self, source_id: str, now: float) -> list[Fault]:
        """The faults that apply to this request; each one applied counts down once.

        Every matching latency fault applies; of the failing ones (a status or a reset),
        only the first added applies, so `fail(503, count=2)` then `fail(422, count=1)`
        answers 503, 503, then 422.
        """
        taken = []
        failing_taken = False
        for fault in self._faults:
            if not fault.matches(source_id, now):
                continue
            if fault.kind != "latency":
                if failing_taken:
                    continue
                failing_taken = True
            if fault.remaining is not None:
                fault.remaining -= 1
            taken.append(fault)
        return taken

    def answer(
        self, source_id: str, auth_header: str | None, query_token: str | None, body: bytes
    ) -> _Reply:
        """Decides the reply to one POST; pure apart from the fake's recorded state."""
        request_id = str(uuid.uuid4())
        with self._lock:
            now = self.clock()
            # Faults model a failing server: a request answered 5xx or reset is neither
            # recorded nor counted against a rate limit. Latency delays any answer.
            faults = self._take_faults(source_id, now)
            failing = next((f for f in faults if f.kind in ("status", "reset")), None)
            if failing is None:
                reply = self._decide(source_id, auth_header, query_token, body, request_id, now)
            elif failing.kind == "reset":
                reply = _Reply(0, {}, reset=True)
            else:
                reply = _fault_reply(failing.status, request_id)
            reply.delay = sum(f.seconds for f in faults if f.kind == "latency")
            if reply.status == 202:
                self._events.append(ReceivedEvent(source_id, json.loads(body), now, request_id))
            self._answers.append(Answer(source_id, reply.status, now, request_id))
            return reply

    def _decide(
        self,
        source_id: str,
        auth_header: str | None,
        query_token: str | None,
        body: bytes,
        request_id: str,
        now: float,
    ) -> _Reply:
        token = query_token
        if auth_header:
            scheme, _, credentials = auth_header.partition(" ")
            token = credentials.strip() if scheme.lower() == "bearer" else None
        if not token:
            return _error(
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
            return _error(
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
            return _error(
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
            return _error(
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
            return _error(422, "validation_error", request_id, errors)
        return _Reply(
            202,
            {
                "status": "success",
                "message": "Event accepted for processing",
                "deduplication_key": parsed.get("deduplication_key") or request_id,
            },
        )

    def _rate_limited(
        self, source: AlertSource, token: str, request_id: str, now: float
    ) -> _Reply | None:
        token_window = self._token_windows.setdefault(
            token, _RollingWindow(self._token_limit, self._window)
        )
        for name, window in (
            (source.id, self._source_windows[source.id]),
            ("api_key", token_window),
        ):
            retry_at = window.retry_at(now)
            if retry_at is not None:
                reply = _error(
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

    def control(self, method: str, path: str, body: bytes) -> _Reply:
        return _ControlApi(self).handle(method, path, body)


class _ControlApi:
    """`/_fake/...`: drive a fake that runs in another process (the CLI, the demo).

    GET /_fake/events, GET /_fake/answers: what was recorded; GET /_fake/counts: how many
    of each (cheap to poll);
    POST /_fake/faults {"kind": "status"|"latency"|"reset", "status", "seconds",
    "source_id", "count", "for_seconds"}; DELETE /_fake/faults;
    POST /_fake/sources {"id", "token", "events_per_minute"}.
    """

    def __init__(self, fake: FakeIncidentIo) -> None:
        self.fake = fake

    def handle(self, method: str, path: str, body: bytes) -> _Reply:
        try:
            request = json.loads(body) if body else {}
            if (method, path) == ("GET", "/_fake/events"):
                return _Reply(200, {"events": [asdict(e) for e in self.fake.events]})
            if (method, path) == ("GET", "/_fake/counts"):
                return _Reply(
                    200, {"events": len(self.fake.events), "answers": len(self.fake.answers)}
                )
            if (method, path) == ("GET", "/_fake/answers"):
                return _Reply(200, {"answers": [asdict(a) for a in self.fake.answers]})
            if (method, path) == ("DELETE", "/_fake/faults"):
                self.fake.clear_faults()
                return _Reply(200, {})
            if (method, path) == ("POST", "/_fake/faults"):
                fault = self.fake.add_fault(
                    Fault(
                        kind=request["kind"],
                        status=int(request.get("status", 503)),
                        seconds=float(request.get("seconds", 0.0)),
                        source_id=request.get("source_id"),
                        remaining=request.get("count"),
                        until=self.fake._until(request.get("for_seconds")),
                    )
                )
                return _Reply(201, asdict(fault))
            if (method, path) == ("POST", "/_fake/sources"):
                self.fake.add_source(AlertSource(**request))
                return _Reply(201, {})
        except (KeyError, TypeError, ValueError) as e:
            return _Reply(400, {"error": f"bad control request: {e!r}"})
        return _Reply(404, {"error": f"no control endpoint {method} {path}"})


class _QuietServer(ThreadingHTTPServer):
    """Clients that hang up (a timeout, a shutdown) are normal here, not tracebacks."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            super().handle_error(request, client_address)


def _handler_for(fake: FakeIncidentIo) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the real API behind a load balancer
        # Headers and body go out in separate writes: without TCP_NODELAY, Nagle's
        # algorithm and the client's delayed ACK add ~40 ms to every answer.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read state
            pass

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(min(length, _MAX_BODY))

        def _dispatch(self, method: str) -> None:
            url = urlsplit(self.path)
            body = self._body()
            if url.path.startswith("/_fake/"):
                reply = fake.control(method, url.path, body)
            elif method == "POST" and url.path.startswith(_PATH_PREFIX):
                source_id = url.path[len(_PATH_PREFIX) :]
                token = parse_qs(url.query, keep_blank_values=True).get("token", [None])[0]
                reply = fake.answer(source_id, self.headers.get("Authorization"), token, body)
            else:
                reply = _error(
                    404,
                    "not_found",
                    str(uuid.uuid4()),
                    [FieldError(code="not_found", message=f"No route for {method} {url.path}")],
                )
            if reply.delay:
                time.sleep(reply.delay)
            if reply.reset:
                # SO_LINGER 0 turns close() into a TCP RST: the client sees a reset.
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                self.close_connection = True
                self.connection.close()
                return
            payload = json.dumps(reply.body).encode()
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        def do_POST(self) -> None:
            self._dispatch("POST")

        def do_GET(self) -> None:
            self._dispatch("GET")

        def do_DELETE(self) -> None:
            self._dispatch("DELETE")

    return Handler


@contextmanager
def standalone(*args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`streamer fake-incident-io --port 0 ARGS` in its own process: (the process, its URL).

    For a double that competes with nobody for this interpreter's lock (benchmarks), and
    for testing the command itself. Stopped with SIGTERM on leaving.
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "streamer", "fake-incident-io", "--port", "0", *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        yield process, process.stdout.readline().split()[-1]
    finally:
        process.terminate()
        process.wait(10)
