"""The double itself: a real HTTP/1.1 server on loopback speaking incident.io's contract.

Invariant: what a client sees over the socket is what incident.io would answer
(`contract`), unless a fault says otherwise (`faults`); every answer is recorded, and
an event is recorded exactly when it was answered 202. Time comes from an injected
clock (epoch seconds), so tests move time instead of sleeping.

Mechanism: one thread per connection (keep-alive, as the real API behind a load
balancer); `answer` decides under one lock, then the handler writes outside it, so a
slow or hanging answer holds up only its own connection. Driven in-process
(`FakeIncidentIo`) or over HTTP (`/_fake/...`, `control`) when it runs as
`streamer fake-incident-io` (`standalone`).
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from streamer.alert_event import FieldError
from streamer.testing.fake_incident_io import faults
from streamer.testing.fake_incident_io.contract import (
    PATH_PREFIX,
    AlertSource,
    Contract,
    ReceivedEvent,
    RecordedAnswer,
    Reply,
    error,
)
from streamer.testing.fake_incident_io.control import ControlApi
from streamer.testing.fake_incident_io.faults import Effects, Fault

Clock = Callable[[], float]
_MAX_BODY = 1 << 20


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
        self.contract = Contract(
            requests_per_minute_per_token=requests_per_minute_per_token,
            window_seconds=window_seconds,
            retry_after_header=retry_after_header,
        )
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._events: list[ReceivedEvent] = []
        self._answers: list[RecordedAnswer] = []
        self.stopping = threading.Event()  # ends trickles and hangs
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
        return f"{self.url}{PATH_PREFIX}{source_id}"

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
        self.stopping.set()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

    def __enter__(self) -> FakeIncidentIo:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what tests set and read -----------------------------------------------------

    @property
    def retry_after_header(self) -> Literal["seconds", "date", "none"]:
        return self.contract.retry_after_header

    @retry_after_header.setter
    def retry_after_header(self, form: Literal["seconds", "date", "none"]) -> None:
        self.contract.retry_after_header = form

    def add_source(self, source: AlertSource) -> None:
        with self._lock:
            self.contract.add_source(source)

    def add_fault(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def _fault(
        self, kind: faults.FaultKind, count: int | None, lasting: float | None, **fields: Any
    ) -> Fault:
        until = None if lasting is None else self.clock() + lasting
        return self.add_fault(Fault(kind, remaining=count, until=until, **fields))

    def fail(
        self,
        status: int = 503,
        *,
        count: int | None = None,
        seconds: float | None = None,
        source_id: str | None = None,
    ) -> Fault:
        """Answer `status` (a 5xx, or any error) to matching requests, for `count` or `seconds`."""
        return self._fault("status", count, seconds, status=status, source_id=source_id)

    def delay(
        self,
        latency: float,
        *,
        count: int | None = None,
        seconds: float | None = None,
        source_id: str | None = None,
    ) -> Fault:
        """Answer `latency` seconds late (the event is still processed: as a slow server)."""
        return self._fault("latency", count, seconds, seconds=latency, source_id=source_id)

    def reset_connections(
        self,
        *,
        count: int | None = None,
        seconds: float | None = None,
        source_id: str | None = None,
    ) -> Fault:
        """Reset the TCP connection instead of answering (the event is not processed)."""
        return self._fault("reset", count, seconds, source_id=source_id)

    def redirect(
        self,
        location: str,
        status: int = 308,
        *,
        count: int | None = None,
        seconds: float | None = None,
        source_id: str | None = None,
    ) -> Fault:
        """Answer a redirect to `location` (a moved base URL; the event is not processed)."""
        return self._fault(
            "redirect", count, seconds, status=status, location=location, source_id=source_id
        )

    def huge_body(
        self,
        size: int,
        status: int = 500,
        *,
        count: int | None = None,
        seconds: float | None = None,
        source_id: str | None = None,
    ) -> Fault:
        """Answer `status` with a body of `size` bytes, streamed (the event is not processed)."""
        return self._fault(
            "huge_body", count, seconds, status=status, size=size, source_id=source_id
        )

    def trickle(
        self,
        bytes_per_second: float,
        *,
        part: Literal["answer", "body"] = "answer",
        count: int | None = None,
        seconds: float | None = None,
        source_id: str | None = None,
    ) -> Fault:
        """Write the answer (or only its body) at `bytes_per_second`; the event is processed."""
        return self._fault(
            "trickle",
            count,
            seconds,
            bytes_per_second=bytes_per_second,
            part=part,
            source_id=source_id,
        )

    def hang(
        self,
        *,
        count: int | None = None,
        seconds: float | None = None,
        source_id: str | None = None,
        at_most: float = 0.0,
    ) -> Fault:
        """Read the request, never answer: hold the connection until the client hangs up
        (or `at_most` seconds, if > 0). The event is not processed."""
        return self._fault("hang", count, seconds, seconds=at_most, source_id=source_id)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def events(self) -> list[ReceivedEvent]:
        with self._lock:
            return list(self._events)

    @property
    def answers(self) -> list[RecordedAnswer]:
        with self._lock:
            return list(self._answers)

    # -- the endpoint ----------------------------------------------------------------

    def answer(
        self,
        source_id: str,
        auth_header: str | None,
        query_token: str | None,
        body: bytes,
        client_port: int | None = None,
    ) -> tuple[Reply, Effects]:
        """Decides the reply to one POST and how it goes out; records it (with the
        client's port, so a benchmark can tell which process sent it)."""
        request_id = str(uuid.uuid4())
        with self._lock:
            now = self.clock()
            replaced, shape = faults.effects(faults.take(self._faults, source_id, now), request_id)
            reply = replaced or self.contract.decide(
                source_id, auth_header, query_token, body, request_id, now
            )
            payload = _json_object(body)
            if reply.status == 202:
                self._events.append(ReceivedEvent(source_id, payload or {}, now, request_id))
            metadata = (payload or {}).get("metadata")
            event_id = metadata.get("event_id") if isinstance(metadata, dict) else None
            self._answers.append(
                RecordedAnswer(
                    source_id,
                    reply.status,
                    now,
                    request_id,
                    event_id if isinstance(event_id, str) else None,
                    client_port,
                )
            )
            return reply, shape

    def control(self, method: str, path: str, body: bytes) -> Reply:
        return ControlApi(self).handle(method, path, body)


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class _QuietServer(ThreadingHTTPServer):
    """Clients that hang up (a timeout, a shutdown) are normal here, not tracebacks."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            super().handle_error(request, client_address)


def _handler_for(fake: FakeIncidentIo) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the real API behind a load balancer
        # A trickled answer goes out in many small writes: send each at once.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read state
            pass

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(min(length, _MAX_BODY))

        def _dispatch(self, method: str) -> None:
            url = urlsplit(self.path)
            body = self._body()
            shape = Effects()
            if url.path.startswith("/_fake/"):
                reply = fake.control(method, url.path, body)
            elif method == "POST" and url.path.startswith(PATH_PREFIX):
                source_id = url.path[len(PATH_PREFIX) :]
                token = parse_qs(url.query, keep_blank_values=True).get("token", [None])[0]
                auth = self.headers.get("Authorization")
                port = self.client_address[1] if len(self.client_address) > 1 else None
                reply, shape = fake.answer(source_id, auth, token, body, port)
            else:
                reply = error(
                    404,
                    "not_found",
                    str(uuid.uuid4()),
                    [FieldError(code="not_found", message=f"No route for {method} {url.path}")],
                )
            if shape.delay:
                time.sleep(shape.delay)
            if shape.reset:
                # SO_LINGER 0 turns close() into a TCP RST: the client sees a reset.
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                self.close_connection = True
                self.connection.close()
                return
            if shape.hang:
                faults.hold_until_hung_up(self.connection, shape.hang_seconds, fake.stopping)
                self.close_connection = True
                return
            try:
                faults.write_answer(self.wfile, reply, shape, fake.stopping)
            except OSError:  # the client hung up mid-answer (as it should on a huge one)
                self.close_connection = True

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
