"""The incident.io Alert Events V2 client: one POST per delivery attempt, bounded in time and bytes.

Invariants (docs/design.md, guarantees 8 and 9):

- `post_alert_event` returns, or raises `httpx.TransportError`, no later than `timeout`
  seconds after it was called, whatever the peer does: a connect that hangs, headers or
  a body trickled a byte at a time, a server that accepts and never answers. The
  engine's hand-over cut-off counts on it: a request of a revoked partition must not
  land after the next owner's request for the same key. (Name resolution is the one
  step no socket timeout bounds: the system resolver's own timeouts apply.)
- At most `MAX_ANSWER_BODY` bytes of an answer are read. A longer body is not drained:
  its connection is closed, never reused.
- Redirects are never followed: a 3xx is an answer, for `failure_policy` to judge.
- The token travels in the `Authorization` header only (a token in a URL ends up in
  logs), and no error raised here carries a header value.

Decisions about the answer live in `failure_policy`; this module only speaks HTTP.

Mechanism: every socket operation is cut to what is left of the request's deadline
(`http_deadline`: httpx's timeouts are per read, so a peer trickling bytes would restart
them). Without a proxy, each worker thread keeps one connection per origin, writes the
request whole and reads the answer itself (`http_connection`, `http_answer`: httpcore's
pool and h11 cost most of a request's CPU and buy nothing for one POST at a time per
thread); through a proxy (HTTP forward, CONNECT tunnel, SOCKS), httpcore's proxy pools
do it, over the same deadline backend. Both raise httpcore's errors, translated here.
"""

from __future__ import annotations

import json
import math
import re
import ssl
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
from streamer.http_connection import DirectOrigin
from streamer.http_deadline import DeadlineBackend

PATH = "/v2/alert_events/http/{alert_source_config_id}"
USER_AGENT = f"streamer/{__version__}"
_USER_AGENT = USER_AGENT.encode()
# incident.io's answers are a few hundred bytes; failure_policy reads request_id, errors
# and rate_limit from the first few KiB. A longer body is a broken or hostile peer.
MAX_ANSWER_BODY = 64 * 1024
_VISIBLE = re.compile(rb"[\x21-\x7e]+")  # printable ASCII, no space
_JSON = json.JSONEncoder(separators=(",", ":"))  # json.dumps would build one per call


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


# PROXY_REUSE: through a proxy a connection is used once. httpcore reuses one after h11
# read an answer even when more bytes followed it (an answer nobody asked for, from a
# broken proxy or peer), and the next request would take those as its answer: a 429 or
# 500 read as the stale 202 loses that alert (red team /tmp/red4, F2). A connect per POST
# is the price, where a proxy is used.
# h11 quotes what it could not parse of an answer: a peer may have echoed the token there
_MALFORMED = "the answer is not valid HTTP/1.1"


def _translated(error: Exception) -> httpx.TransportError:
    for core, ours in _ERRORS:
        if isinstance(error, core):
            return ours(_MALFORMED if isinstance(error, httpcore.ProtocolError) else str(error))
    return httpx.TransportError(type(error).__name__)


@dataclass(frozen=True)
class _Target:
    url: httpx.URL
    path: bytes  # the request target
    host: bytes  # the Host header
    origin: str  # scheme://host:port, one way there (_Origin) per thread each


class _Origin(Protocol):
    """A thread's way to one origin; its backend's deadline bounds each exchange."""

    backend: DeadlineBackend

    def exchange(
        self, path: bytes, headers: list[tuple[bytes, bytes]], body: bytes, cap: int, timeout: float
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]: ...

    def close(self) -> None: ...


class _ProxiedOrigin:
    """A thread's way to one origin through a proxy: httpcore's proxy pool."""

    def __init__(self, pool: httpcore.ConnectionPool, backend: DeadlineBackend, url: httpx.URL):
        self.backend = backend
        self._pool = pool
        self._scheme, self._host, self._port = url.raw_scheme, url.raw_host, url.port

    def exchange(
        self, path: bytes, headers: list[tuple[bytes, bytes]], body: bytes, cap: int, timeout: float
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        phases = {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}
        url = httpcore.URL(scheme=self._scheme, host=self._host, port=self._port, target=path)
        request = httpcore.Request(
            b"POST", url, headers=headers, content=body, extensions={"timeout": phases}
        )
        response = self._pool.handle_request(request)
        try:
            return response.status, response.headers, _read_capped(response.iter_stream(), cap)
        finally:
            response.close()  # a body left unread closes the connection

    def close(self) -> None:
        self._pool.close()


class IncidentIoClient:
    """POSTs alert events on keep-alive connections, kept per worker thread and origin.

    Proxies come from HTTP(S)_PROXY / NO_PROXY as with httpx's defaults, and so do the
    trusted certificates (SSL_CERT_FILE / SSL_CERT_DIR, else certifi's). `timeout` is
    the whole request's deadline, from call to return.
    """

    def __init__(self, *, timeout: float = 10.0) -> None:
        self._timeout = timeout
        # Threads sharing connections would contend for them: each keeps its own.
        self._local = threading.local()
        self._origins: list[_Origin] = []
        self._lock = threading.Lock()
        self._targets: dict[tuple[str, str], _Target] = {}
        self._authorizations: dict[str, bytes] = {}
        self._ssl_context: ssl.SSLContext | None = None

    def _origin(self, target: _Target) -> _Origin:
        origins: dict[str, _Origin] | None = getattr(self._local, "by_origin", None)
        if origins is None:
            origins = self._local.by_origin = {}
        found = origins.get(target.origin)
        if found is None:
            found = origins[target.origin] = self._make_origin(target.url)
            with self._lock:
                self._origins.append(found)
        return found

    def _make_origin(self, url: httpx.URL) -> _Origin:
        with self._lock:
            if self._ssl_context is None:
                self._ssl_context = httpx.create_ssl_context()  # loads certificates: once
                self._ssl_context.set_alpn_protocols(["http/1.1"])
            ssl_context = self._ssl_context
        proxy_url = None
        if not urllib.request.proxy_bypass(url.host):
            proxy_url = urllib.request.getproxies().get(url.scheme)
        if proxy_url is None:
            port = url.port or (443 if url.scheme == "https" else 80)
            return DirectOrigin(url.scheme, url.raw_host.decode("ascii"), port, ssl_context)
        backend = DeadlineBackend()
        proxy = httpx.Proxy(url=proxy_url)
        proxy_core_url = httpcore.URL(
            scheme=proxy.url.raw_scheme,
            host=proxy.url.raw_host,
            port=proxy.url.port,
            target=proxy.url.raw_path,
        )
        pool: httpcore.ConnectionPool
        if proxy.url.scheme in ("http", "https"):
            pool = httpcore.HTTPProxy(
                proxy_url=proxy_core_url,
                proxy_auth=proxy.raw_auth,
                proxy_headers=proxy.headers.raw,
                ssl_context=ssl_context,
                proxy_ssl_context=proxy.ssl_context,
                keepalive_expiry=0,  # never reused: see PROXY_REUSE
                network_backend=backend,
            )
        elif proxy.url.scheme in ("socks5", "socks5h"):
            pool = httpcore.SOCKSProxy(
                proxy_url=proxy_core_url,
                proxy_auth=proxy.raw_auth,
                ssl_context=ssl_context,
                keepalive_expiry=0,  # never reused: see PROXY_REUSE
                network_backend=backend,
            )
        else:
            raise httpx.ProxyError(f"proxy scheme {proxy.url.scheme!r}: use http, https or socks5")
        return _ProxiedOrigin(pool, backend, url)

    def _target(self, base_url: str, alert_source_config_id: str) -> _Target:
        """Where to POST (raises httpx.InvalidURL, httpx.UnsupportedProtocol)."""
        key = (base_url, alert_source_config_id)
        target = self._targets.get(key)
        if target is None:
            path = PATH.format(alert_source_config_id=alert_source_config_id)
            url = httpx.URL(base_url.rstrip("/") + path)
            if url.scheme not in ("http", "https") or not url.host:
                raise httpx.UnsupportedProtocol(f"not an http(s) URL: {url.scheme}://{url.host}")
            # Written into the request line and Host as they are (httpx allows neither
            # spaces nor control characters in a URL: checked again, once).
            if not (_VISIBLE.fullmatch(url.raw_path) and _VISIBLE.fullmatch(url.netloc)):
                raise httpx.InvalidURL("a URL with a space or a control character")
            target = self._targets[key] = _Target(
                url,
                url.raw_path,
                url.netloc,
                f"{url.scheme}://{url.netloc.decode('ascii')}",
            )
        return target

    def _authorization(self, token: SecretStr) -> bytes:
        secret = token.get_secret_value()
        header = self._authorizations.get(secret)
        if header is None:
            # Checked here, never handed to h11 (through a proxy): its error would quote
            # the header value; written as it is without one.
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
        content = _JSON.encode(payload).encode()
        headers = [
            (b"Host", target.host),
            (b"Authorization", self._authorization(token)),
            (b"Content-Type", b"application/json"),
            (b"User-Agent", _USER_AGENT),
            (b"Content-Length", b"%d" % len(content)),
        ]
        origin = self._origin(target)
        unsendable, malformed = False, None
        origin.backend.deadline = deadline
        try:
            status, answer_headers, body = origin.exchange(
                target.path, headers, content, MAX_ANSWER_BODY, self._timeout
            )
        except httpcore.LocalProtocolError:
            unsendable = True
        except httpcore.ProtocolError as e:  # its text may quote the answer: not chained
            malformed = _translated(e)
        except (
            httpcore.NetworkError,
            httpcore.TimeoutException,
            httpcore.ProxyError,
            httpcore.UnsupportedProtocol,
        ) as e:
            raise _translated(e) from e
        finally:
            origin.backend.deadline = math.inf
        # Raised outside the except blocks: no __context__ that would quote a header value.
        if unsendable:
            raise httpx.LocalProtocolError(_UNSENDABLE)
        if malformed is not None:
            raise malformed
        return Answer(status, httpx.Headers(answer_headers), body)

    def close(self) -> None:
        with self._lock:
            for origin in self._origins:
                origin.close()


def _read_capped(chunks: Iterable[bytes], cap: int) -> bytes:
    """The first `cap` bytes; stops reading there, whatever the peer sends."""
    read: list[bytes] = []
    size = 0
    for chunk in chunks:
        read.append(chunk)
        size += len(chunk)
        if size >= cap:
            break
    return b"".join(read)[:cap]
