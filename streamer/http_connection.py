"""One POST and its answer over a kept-alive HTTP/1.1 connection, as cheaply as h11 allows.

The direct way to incident.io (no proxy), in place of httpcore's connection pool: each
worker thread keeps at most one connection per origin and only ever runs one request at a
time on it, so the pool's queueing, locks, tracing and per-request objects buy nothing
here and cost most of a request's CPU. h11 stays: it writes the request and parses every
byte of the answer, so a broken or hostile peer meets the same parser as with httpx.

Invariants (those of `incident_io`, kept here):

- Every read and send goes through a `DeadlineStream`: the exchange ends by the request's
  deadline whatever the peer does.
- At most `cap` bytes of a body are kept, and reading stops there; a connection is kept
  only when h11 saw both the request and its answer complete (a body left unread, a
  `Connection: close`, an error: the connection is closed, never reused).
- A connection idle for `KEEPALIVE_EXPIRY`, or that the peer hung up (readable while
  idle), is closed before a request rather than written to.
- Errors are httpcore's, as its pool raises them, for `incident_io` to translate.
"""

from __future__ import annotations

import math
import ssl
import time

import h11
import httpcore

from streamer.http_deadline import DeadlineBackend, DeadlineStream

KEEPALIVE_EXPIRY = 5.0  # seconds an idle connection is kept (httpx's default)
READ_SIZE = 64 * 1024  # bytes asked of the socket per read (httpcore's)
MAX_HEAD = 100 * 1024  # the longest status line and headers h11 buffers (httpcore's)


class Http11Connection:
    """One TCP (or TLS) connection and its h11 state, used by one thread."""

    def __init__(self, stream: DeadlineStream) -> None:
        self._stream = stream
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        self._expires = math.inf

    def reusable(self) -> bool:
        return time.monotonic() < self._expires and not self._stream.get_extra_info("is_readable")

    def exchange(
        self, path: bytes, headers: list[tuple[bytes, bytes]], body: bytes, cap: int
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes, bool]:
        """A POST: (status, headers, at most `cap` bytes of the body, whether kept)."""
        state = self._h11
        self._expires = math.inf
        try:
            request = h11.Request(method=b"POST", target=path, headers=headers)
            # One send for the whole request: one system call, one segment.
            wire = state.send(request) + state.send(h11.Data(data=body))
            wire += state.send(h11.EndOfMessage())
        except h11.LocalProtocolError as e:
            raise httpcore.LocalProtocolError(str(e)) from e
        written = True
        try:
            self._stream.write(wire)
        except httpcore.WriteError:
            # As httpcore: a server may answer (a 413, a 401) and close before reading
            # the whole request; its answer is still read.
            written = False
        event = self._next_event()
        while isinstance(event, h11.InformationalResponse):  # 1xx: the answer is to come
            event = self._next_event()
        if not isinstance(event, h11.Response):
            raise httpcore.RemoteProtocolError(f"no answer but {type(event).__name__}")
        status, headers = event.status_code, event.headers.raw_items()
        read: list[bytes] = []
        size = 0
        while size < cap:
            event = self._next_event()
            if not isinstance(event, h11.Data):
                break  # its end (h11 raises for a body cut short)
            read.append(event.data)
            size += len(event.data)
        kept = written and state.our_state is h11.DONE and state.their_state is h11.DONE
        if kept:
            state.start_next_cycle()
            self._expires = time.monotonic() + KEEPALIVE_EXPIRY
        else:
            self.close()
        return status, headers, b"".join(read)[:cap], kept

    def _next_event(self) -> h11.Event | type[h11.PAUSED]:
        state = self._h11
        while True:
            try:
                event = state.next_event()
            except h11.RemoteProtocolError as e:
                raise httpcore.RemoteProtocolError(str(e)) from e
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]
            data = self._stream.read(READ_SIZE)
            if not data and state.their_state is h11.SEND_RESPONSE:
                raise httpcore.RemoteProtocolError("the server closed without answering")
            state.receive_data(data)

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
