"""The metrics and health port: /metrics, /pending, /livez and /readyz of a `Telemetry`.

The port is open to whatever the NetworkPolicy admits, so a client holds a thread only
within bounds (issue 22): its whole request must arrive within `read_timeout` seconds of
its connection being taken in (one deadline over every read, so trickling a byte at a
time does not extend it), and each write of the answer gets as long; at most
`max_connections` connections have a thread. A connection past the cap makes room by
closing the oldest one still sending its request (an idle or half-sent one); when every
one is busy answering, the newcomer is closed unanswered. Either way a slow or silent
client ends without an answer and nothing is logged: a scrape is not news, and neither is
a scanner.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import threading
import time
from collections.abc import Callable
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from streamer.telemetry import Telemetry

__all__ = ["MAX_CONNECTIONS", "READ_TIMEOUT", "serve"]

MAX_CONNECTIONS = 16  # Prometheus and two probes need a handful at once
READ_TIMEOUT = 10.0  # seconds: Prometheus's default scrape_timeout


class _RequestReader(io.RawIOBase):
    """A connection's socket, read within one deadline for the whole request."""

    def __init__(
        self, connection: socket.socket, deadline: float, clock: Callable[[], float]
    ) -> None:
        self._connection, self._deadline, self._clock = connection, deadline, clock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._deadline - self._clock()
        if left <= 0:
            raise TimeoutError("the request took longer than the read timeout")
        self._connection.settimeout(left)
        read = self._connection.recv_into(buffer)
        if read and self._clock() >= self._deadline:  # it came, but too late
            raise TimeoutError("the request took longer than the read timeout")
        return read


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    block_on_close = False  # server_close() does not wait for slow clients
    request_queue_size = 64  # waiting in the kernel costs no thread

    def __init__(
        self,
        address: tuple[str, int],
        *,
        max_connections: int,
        read_timeout: float,
        clock: Callable[[], float],
    ) -> None:
        self.max_connections, self.read_timeout, self.clock = max_connections, read_timeout, clock
        self._slots = threading.Condition()
        self._open = 0  # connections with a thread
        self._reading: dict[socket.socket, None] = {}  # still sending their request, oldest first
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._slots:
            if self._open >= self.max_connections and self._reading:
                oldest = next(iter(self._reading))
                del self._reading[oldest]
                # Wakes its thread's read with an end of file (OSError: it is closing already).
                with contextlib.suppress(OSError):
                    oldest.shutdown(socket.SHUT_RDWR)
                self._slots.wait_for(lambda: self._open < self.max_connections, timeout=1.0)
            if self._open >= self.max_connections:  # every slot is answering
                self.shutdown_request(request)
                return
            self._open += 1
            self._reading[request] = None
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._gone(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._gone(request)

    def request_read(self, request: socket.socket) -> bool:
        """The request has arrived: its connection is answered, no longer made room from.
        False when room was made from it already (what it read ended early)."""
        with self._slots:
            return self._reading.pop(request, False) is None

    def _gone(self, request: Any) -> None:
        with self._slots:
            self._open -= 1
            self._reading.pop(request, None)
            self._slots.notify_all()


class _Handler(WSGIRequestHandler):
    server: _Server
    wbufsize = 0  # each write is one sendall, bounded by the socket's timeout

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the socket's own file object: requests are read by deadline
        reader = _RequestReader(
            self.connection, self.server.clock() + self.server.read_timeout, self.server.clock
        )
        self.rfile = io.BufferedReader(reader)

    def parse_request(self) -> bool:
        parsed = super().parse_request()
        if not self.server.request_read(self.connection):
            return False  # closed to make room: not answered
        self.connection.settimeout(self.server.read_timeout)  # for each write of the answer
        return parsed

    def handle(self) -> None:
        try:
            super().handle()
        except OSError:  # a read timeout, a hang-up, room made for another: no answer
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:  # scrapes are not news
        pass


def serve(
    telemetry: Telemetry,
    host: str,
    port: int,
    *,
    max_connections: int = MAX_CONNECTIONS,
    read_timeout: float = READ_TIMEOUT,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[WSGIServer, str]:
    """Serves /metrics, /pending, /livez and /readyz in a daemon thread; returns the base
    URL. A client has `read_timeout` seconds (by `clock`) to send its request, and at most
    `max_connections` have a thread (the module docstring says what happens past it)."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
            return [telemetry.scrape()]
        if path == "/pending":  # read-only: keys, partitions, ages, reasons; no payloads
            body = json.dumps(telemetry.pending(), indent=1).encode()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        checks = {"/livez": telemetry.health.live, "/readyz": telemetry.health.ready}
        if path in checks:
            ok = checks[path]()
            start_response(
                "200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")]
            )
            return [b"ok\n" if ok else b"not ok\n"]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"/metrics, /pending, /livez, /readyz\n"]

    server = _Server(
        (host, port), max_connections=max_connections, read_timeout=read_timeout, clock=clock
    )
    server.set_app(app)
    threading.Thread(target=server.serve_forever, name="telemetry", daemon=True).start()
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return server, f"http://{shown_host}:{server.server_port}"
