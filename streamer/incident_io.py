"""The incident.io Alert Events V2 client: one POST per delivery attempt, bounded in time and bytes.

Invariants (docs/design.md, guarantees 8 and 9):

- `post_alert_event` returns, or raises `httpx.TransportError`, no later than `timeout`
  seconds after it was called, whatever the peer does: a connect that hangs, headers or
  a body trickled a byte at a time, a server that accepts and never answers. The
  engine's hand-over cut-off counts on it: a request of a revoked partition must not
  land after the next owner's request for the same key. (Name resolution is the one
  step no socket timeout bounds: the system resolver's own timeouts apply.)
- At most `MAX_ANSWER_BODY` bytes of an answer are read. A longer body is not drained:
  its connection is closed, never returned to the pool.
- Redirects are never followed: a 3xx is an answer, for `failure_policy` to judge.
- The token travels in the `Authorization` header only (a token in a URL ends up in
  logs), and no error raised here carries a header value.

Decisions about the answer live in `failure_policy`; this module only speaks HTTP.

Mechanism: httpx's timeouts are per phase and per socket read, so a peer that trickles
restarts them with every byte. Here every socket operation (connect, TLS handshake,
each read, each send) gets the smaller of its phase timeout and what is left of the
request's deadline, from a network backend handed to httpcore's connection pool; once
nothing is left, the next operation fails as a timeout. Every blocking call thus ends
by the deadline on its own: no watchdog thread, no socket closed under another thread's
feet. httpcore is driven directly (httpx's transport takes no network backend, and the
Client's per-request machinery, which this API does not use, cost a third of a
request's CPU: bench/delivery.py); its errors are translated to httpx's.
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import httpcore
import httpx
from pydantic import SecretStr

from streamer import __version__

PATH = "/v2/alert_events/http/{alert_source_config_id}"
USER_AGENT = f"streamer/{__version__}"
# incident.io's answers are a few hundred bytes; failure_policy reads request_id, errors
# and rate_limit from the first few KiB. A longer body is a broken or hostile peer.
MAX_ANSWER_BODY = 64 * 1024
KEEPALIVE_EXPIRY = 5.0  # seconds an idle connection is kept (httpx's default)


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes  # at most MAX_ANSWER_BODY bytes: the start of a longer body


class PostsAlertEvents(Protocol):
    def post_alert_event(
        self,
        base_url: str,
        alert_source_config_id: str,
        token: SecretStr,
        payload: Mapping[str, Any],
    ) -> Answer: ...

    def close(self) -> None: ...


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's socket backend, with every operation cut to the current request's deadline.

    One per connection pool, and each pool is used by one thread: `deadline` is that
    thread's current request's (time.monotonic()); infinite between requests.
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
    ) -> httpcore.NetworkStream:
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
            return _DeadlineStream(stream, self)
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


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(
        self, stream: httpcore.NetworkStream, backend: _DeadlineBackend, tls_layers: int = 0
    ) -> None:
        self._stream = stream
        self._backend = backend
        self._tls_layers = tls_layers

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, self._backend.budget(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        # httpcore's write restarts the timeout with every partial send: a peer reading a
        # byte at a time would stretch it. One send at a time, each cut to the deadline.
        if self._tls_layers > 1:  # TLS through a TLS proxy: only httpcore's stream can write
            self._stream.write(buffer, self._backend.budget(timeout, httpcore.WriteTimeout))
            return
        sock: socket.socket = self._stream.get_extra_info("socket")
        view = memoryview(buffer)
        while view:
            try:
                sock.settimeout(self._backend.budget(timeout, httpcore.WriteTimeout))
                view = view[sock.send(view) :]
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
    ) -> httpcore.NetworkStream:
        # The TLS handshake keeps one deadline for all its reads and writes (CPython's
        # _ssl), so cutting its timeout is enough.
        budget = self._backend.budget(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(
            self._stream.start_tls(ssl_context, server_hostname, budget),
            self._backend,
            self._tls_layers + 1,
        )

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


# httpcore's errors and httpx's equivalents, most specific first.
_ERRORS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.ProtocolError, httpx.ProtocolError),
)
# h11 quotes the header value it refuses: that value may be the token.
_UNSENDABLE = "the request could not be written as HTTP/1.1 (a header value it refuses?)"
_BAD_TOKEN = (
    "the alert source token cannot be sent in a header: it holds whitespace, a control "
    "or a non-ASCII character; check the token file or variable the destination names"
)


def _translated(error: Exception) -> httpx.TransportError:
    for core, ours in _ERRORS:
        if isinstance(error, core):
            return ours(str(error))
    return httpx.TransportError(type(error).__name__)


@dataclass(frozen=True)
class _Target:
    url: httpx.URL
    core_url: httpcore.URL
    host: bytes  # the Host header
    origin: str  # scheme://host:port, one connection pool per thread each


class IncidentIoClient:
    """POSTs alert events on keep-alive connections, one pool per worker thread and origin.

    Proxies come from HTTP(S)_PROXY / NO_PROXY as with httpx's defaults, and so do the
    trusted certificates (SSL_CERT_FILE / SSL_CERT_DIR, else certifi's). `timeout` is
    the whole request's deadline, from call to return.
    """

    def __init__(self, *, timeout: float = 10.0) -> None:
        self._timeout = timeout
        self._extensions = {
            "timeout": {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}
        }
        # Threads sharing one connection pool contend for its lock: each has its own.
        self._local = threading.local()
        self._pools: list[httpcore.ConnectionPool] = []
        self._lock = threading.Lock()
        self._targets: dict[tuple[str, str], _Target] = {}
        self._authorizations: dict[str, bytes] = {}
        self._ssl_context: Any = None

    def _pool(self, target: _Target) -> tuple[httpcore.ConnectionPool, _DeadlineBackend]:
        pools: dict[str, tuple[httpcore.ConnectionPool, _DeadlineBackend]] | None = getattr(
            self._local, "by_origin", None
        )
        if pools is None:
            pools = self._local.by_origin = {}
        found = pools.get(target.origin)
        if found is None:
            backend = _DeadlineBackend()
            found = pools[target.origin] = (self._make_pool(target.url, backend), backend)
            with self._lock:
                self._pools.append(found[0])
        return found

    def _make_pool(self, url: httpx.URL, backend: _DeadlineBackend) -> httpcore.ConnectionPool:
        with self._lock:
            if self._ssl_context is None:
                self._ssl_context = httpx.create_ssl_context()  # loads certificates: once
            ssl_context = self._ssl_context
        proxy_url = None
        if not urllib.request.proxy_bypass(url.host):
            proxy_url = urllib.request.getproxies().get(url.scheme)
        if proxy_url is None:
            return httpcore.ConnectionPool(
                ssl_context=ssl_context,
                keepalive_expiry=KEEPALIVE_EXPIRY,
                network_backend=backend,
            )
        proxy = httpx.Proxy(url=proxy_url)
        proxy_core_url = httpcore.URL(
            scheme=proxy.url.raw_scheme,
            host=proxy.url.raw_host,
            port=proxy.url.port,
            target=proxy.url.raw_path,
        )
        if proxy.url.scheme in ("http", "https"):
            return httpcore.HTTPProxy(
                proxy_url=proxy_core_url,
                proxy_auth=proxy.raw_auth,
                proxy_headers=proxy.headers.raw,
                ssl_context=ssl_context,
                proxy_ssl_context=proxy.ssl_context,
                keepalive_expiry=KEEPALIVE_EXPIRY,
                network_backend=backend,
            )
        if proxy.url.scheme in ("socks5", "socks5h"):
            return httpcore.SOCKSProxy(
                proxy_url=proxy_core_url,
                proxy_auth=proxy.raw_auth,
                ssl_context=ssl_context,
                keepalive_expiry=KEEPALIVE_EXPIRY,
                network_backend=backend,
            )
        raise httpx.ProxyError(f"proxy scheme {proxy.url.scheme!r}: use http, https or socks5")

    def _target(self, base_url: str, alert_source_config_id: str) -> _Target:
        """Where to POST (raises httpx.InvalidURL, httpx.UnsupportedProtocol)."""
        key = (base_url, alert_source_config_id)
        target = self._targets.get(key)
        if target is None:
            path = PATH.format(alert_source_config_id=alert_source_config_id)
            url = httpx.URL(base_url.rstrip("/") + path)
            if url.scheme not in ("http", "https") or not url.host:
                raise httpx.UnsupportedProtocol(f"not an http(s) URL: {url.scheme}://{url.host}")
            target = self._targets[key] = _Target(
                url,
                httpcore.URL(
                    scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path
                ),
                url.netloc,
                f"{url.scheme}://{url.netloc.decode('ascii')}",
            )
        return target

    def _authorization(self, token: SecretStr) -> bytes:
        secret = token.get_secret_value()
        header = self._authorizations.get(secret)
        if header is None:
            # Checked here, never handed to h11: its error would quote the header value.
            if not (secret and secret.isascii() and secret.isprintable() and " " not in secret):
                raise ValueError(_BAD_TOKEN)
            header = self._authorizations[secret] = f"Bearer {secret}".encode("ascii")
        return header

    def post_alert_event(
        self,
        base_url: str,
        alert_source_config_id: str,
        token: SecretStr,
        payload: Mapping[str, Any],
    ) -> Answer:
        """POSTs one alert event within the timeout.

        Raises httpx.TransportError (httpx.TimeoutException when the deadline passed),
        httpx.InvalidURL for a base URL that is not one, and ValueError for a token no
        header can carry; no message names the token.
        """
        deadline = time.monotonic() + self._timeout
        target = self._target(base_url, alert_source_config_id)
        content = json.dumps(payload, separators=(",", ":")).encode()
        request = httpcore.Request(
            b"POST",
            target.core_url,
            headers=[
                (b"Host", target.host),
                (b"Authorization", self._authorization(token)),
                (b"Content-Type", b"application/json"),
                (b"User-Agent", USER_AGENT.encode()),
                (b"Content-Length", str(len(content)).encode()),
            ],
            content=content,
            extensions=self._extensions,
        )
        pool, backend = self._pool(target)
        unsendable = False
        backend.deadline = deadline
        try:
            response = pool.handle_request(request)
            try:
                body = _read_capped(response.iter_stream())
            finally:
                response.close()  # a body left unread closes the connection
        except httpcore.LocalProtocolError:
            unsendable = True
        except (
            httpcore.NetworkError,
            httpcore.TimeoutException,
            httpcore.ProtocolError,
            httpcore.ProxyError,
            httpcore.UnsupportedProtocol,
        ) as e:
            raise _translated(e) from e
        finally:
            backend.deadline = math.inf
        if unsendable:
            # Raised outside the except block: no __context__ that would quote the value.
            raise httpx.LocalProtocolError(_UNSENDABLE)
        return Answer(response.status, httpx.Headers(response.headers), body)

    def close(self) -> None:
        with self._lock:
            for pool in self._pools:
                pool.close()


def _read_capped(chunks: Iterable[bytes]) -> bytes:
    """The first MAX_ANSWER_BODY bytes; stops reading there, whatever the peer sends."""
    read: list[bytes] = []
    size = 0
    for chunk in chunks:
        read.append(chunk)
        size += len(chunk)
        if size >= MAX_ANSWER_BODY:
            break
    return b"".join(read)[:MAX_ANSWER_BODY]
