"""One POST and its answer over a kept-alive HTTP/1.1 connection, each worker thread its own.

The direct way to incident.io (no proxy), in place of httpcore's connection pool: each
worker thread keeps at most one connection per origin and only ever runs one request at a
time on it, so the pool's queueing, locks, tracing and per-request objects buy nothing
here and cost most of a request's CPU. The request is written whole, in one send; its
headers are the client's own, checked once per target and token (`incident_io`). The
answer is read by `http_answer`.

Invariants (those of `incident_io`, kept here):

- Every read and send goes through a `DeadlineStream`: the exchange ends by the request's
  deadline whatever the peer does.
- At most `cap` bytes of a body are kept, and reading stops there; a connection is kept
  only when its answer was read to its end (`ReadAnswer.reusable`) after the whole
  request was sent: a body left unread, a `Connection: close`, an error: it is closed.
- A connection idle for `KEEPALIVE_EXPIRY`, or that the peer hung up (readable while
  idle), is closed before a request rather than written to.
- Errors are httpcore's, as its pool raises them, for `incident_io` to translate.
"""

from __future__ import annotations

import math
import ssl
import time

import httpcore

from streamer.http_answer import read_answer
from streamer.http_deadline import DeadlineBackend, DeadlineStream

KEEPALIVE_EXPIRY = 5.0  # seconds an idle connection is kept (httpx's default)
READ_SIZE = 64 * 1024  # bytes asked of the socket per read (httpcore's)


class Http11Connection:
    """One TCP (or TLS) connection, used by one thread."""

    def __init__(self, stream: DeadlineStream) -> None:
        self._stream = stream
        self._expires = math.inf

    def reusable(self) -> bool:
        return time.monotonic() < self._expires and not self._stream.get_extra_info("is_readable")

    def exchange(
        self, path: bytes, headers: list[tuple[bytes, bytes]], body: bytes, cap: int
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes, bool]:
        """A POST: (status, headers, at most `cap` bytes of the body, whether kept)."""
        self._expires = math.inf
        wire = [b"POST ", path, b" HTTP/1.1\r\n"]
        for name, value in headers:
            wire += (name, b": ", value, b"\r\n")
        wire += (b"\r\n", body)
        written = True
        try:
            self._stream.write(b"".join(wire))  # one send: one system call, one segment
        except httpcore.WriteError:
            # As httpcore: a server may answer (a 413, a 401) and close before reading
            # the whole request; its answer is still read.
            written = False
        answer = read_answer(self._read, cap)
        kept = written and answer.reusable
        if kept:
            self._expires = time.monotonic() + KEEPALIVE_EXPIRY
        else:
            self.close()
        return answer.status, answer.headers, answer.body, kept

    def _read(self) -> bytes:
        return self._stream.read(READ_SIZE)

    def close(self) -> None:
        self._stream.close()


class DirectOrigin:
    """A thread's way to one origin without a proxy: connects, keeps one connection alive."""

    def __init__(
        self, scheme: str, host: str, port: int, ssl_context: ssl.SSLContext | None
    ) -> None:
        self.backend = DeadlineBackend()
        self._host, self._port = host, port
        self._tls = ssl_context if scheme == "https" else None
        self._connection: Http11Connection | None = None

    def exchange(
        self, path: bytes, headers: list[tuple[bytes, bytes]], body: bytes, cap: int, timeout: float
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """A POST within `self.backend.deadline` (set by the caller); `timeout` is each phase's."""
        connection = self._connection
        if connection is not None and not connection.reusable():
            self._connection = None
            connection.close()
            connection = None
        if connection is None:
            stream = self.backend.connect_tcp(self._host, self._port, timeout)
            try:
                if self._tls is not None:
                    stream = stream.start_tls(self._tls, self._host, timeout)
            except BaseException:
                stream.close()
                raise
            connection = self._connection = Http11Connection(stream)
        try:
            status, headers, body_read, kept = connection.exchange(path, headers, body, cap)
        except BaseException:
            self._connection = None
            connection.close()
            raise
        if not kept:
            self._connection = None  # closed by the exchange
        return status, headers, body_read

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()
