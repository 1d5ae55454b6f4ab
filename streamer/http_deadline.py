"""Sockets that end by a request's deadline, whatever the peer does (docs/design.md, guarantee 8).

httpx's timeouts are per phase and per socket read, so a peer that trickles restarts them
with every byte. Here every socket operation (connect, TLS handshake, each read, each
send) gets the smaller of its phase timeout and what is left of the request's deadline;
once nothing is left, the next operation fails as a timeout. Every blocking call thus
ends by the deadline on its own: no watchdog thread, no socket closed under another
thread's feet. `DeadlineBackend` is an httpcore network backend: httpcore's proxies
connect through it, and `http_connection` reads and writes its streams directly.
Errors are httpcore's (`incident_io` translates them to httpx's).
"""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Iterable
from typing import Any

import httpcore


class DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's socket backend, with every operation cut to the current request's deadline.

    Each backend is used by one thread: `deadline` is that thread's current request's
    (time.monotonic()); infinite between requests.
    """

    def __init__(self) -> None:
        self.deadline = math.inf
        self._sockets = httpcore.SyncBackend()

    def budget(self, timeout: float | None, expired: type[httpcore.TimeoutException]) -> float:
        """What an operation may wait: its phase timeout, cut to the deadline (never 0)."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise expired("timed out (the request's deadline passed)")
        return left if timeout is None else min(timeout, left)

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> DeadlineStream:
        # socket.create_connection gives each address the whole timeout; here all the
        # addresses share one budget.
        try:
            addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as e:
            raise httpcore.ConnectError(str(e)) from e
        failure: httpcore.ConnectError | None = None
        for *_, address in addresses:
            try:
                stream = self._sockets.connect_tcp(
                    str(address[0]),
                    port,
                    timeout=self.budget(timeout, httpcore.ConnectTimeout),
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except httpcore.ConnectError as e:
                failure = e
                continue
            return DeadlineStream(stream, self)
        raise failure or httpcore.ConnectError(f"no address for {host}")

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are not used for incident.io")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read and send ends by its backend's deadline."""

    def __init__(
        self, stream: httpcore.NetworkStream, backend: DeadlineBackend, tls_layers: int = 0
    ) -> None:
        self._stream = stream
        self._backend = backend
        self._tls_layers = tls_layers
        # TCP, or TLS over TCP: the socket (an ssl.SSLSocket for TLS) is read and written
        # directly, one call each. TLS through a TLS proxy: only httpcore's stream can.
        self._sock: socket.socket | None = (
            stream.get_extra_info("socket") if tls_layers <= 1 else None
        )

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        budget = self._backend.budget(timeout, httpcore.ReadTimeout)
        if self._sock is None:
            return self._stream.read(max_bytes, budget)
        try:
            self._sock.settimeout(budget)
            return self._sock.recv(max_bytes)
        except TimeoutError as e:
            raise httpcore.ReadTimeout(str(e)) from e
        except OSError as e:
            raise httpcore.ReadError(str(e)) from e

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        # httpcore's write restarts the timeout with every partial send: a peer reading a
        # byte at a time would stretch it. One send at a time, each cut to the deadline.
        if self._sock is None:
            self._stream.write(buffer, self._backend.budget(timeout, httpcore.WriteTimeout))
            return
        view = memoryview(buffer)
        while view:
            try:
                self._sock.settimeout(self._backend.budget(timeout, httpcore.WriteTimeout))
                view = view[self._sock.send(view) :]
            except TimeoutError as e:
                raise httpcore.WriteTimeout(str(e)) from e
            except OSError as e:
                raise httpcore.WriteError(str(e)) from e

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: Any,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> DeadlineStream:
        # The TLS handshake keeps one deadline for all its reads and writes (CPython's
        # _ssl), so cutting its timeout is enough.
        budget = self._backend.budget(timeout, httpcore.ConnectTimeout)
        return DeadlineStream(
            self._stream.start_tls(ssl_context, server_hostname, budget),
            self._backend,
            self._tls_layers + 1,
        )

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)
