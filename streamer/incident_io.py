"""The incident.io Alert Events V2 client: one POST per delivery attempt, nothing more.

Decisions about the answer live in `failure_policy`; this module only speaks HTTP. The
token goes in the `Authorization` header (a token in a URL ends up in logs) and is
never part of an error message.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from pydantic import SecretStr

from streamer import __version__

PATH = "/v2/alert_events/http/{alert_source_config_id}"
USER_AGENT = f"streamer/{__version__}"


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes


class PostsAlertEvents(Protocol):
    def start(self) -> None: ...

    def post_alert_event(
        self,
        base_url: str,
        alert_source_config_id: str,
        token: SecretStr,
        payload: Mapping[str, Any],
    ) -> Answer: ...

    def close(self) -> None: ...


class IncidentIoClient:
    """POSTs alert events on keep-alive connections, one set per worker thread.

    It drives httpx's transport directly: the Client's per-request machinery (URL and
    header merging, cookies, auth and redirect flows; none of which this API uses) cost
    about a third of the CPU of a request (bench/delivery.py). Proxies come from
    HTTPS_PROXY / NO_PROXY as with httpx's defaults; the timeout applies to connect, read,
    write and pool waits alike.
    """

    def __init__(self, *, timeout: float = 10.0) -> None:
        self._extensions = {
            "timeout": {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}
        }
        # Threads sharing one connection pool contend for its lock: each has its own.
        self._local = threading.local()
        self._transports: list[httpx.BaseTransport] = []
        self._lock = threading.Lock()
        self._urls: dict[tuple[str, str], httpx.URL] = {}

    def start(self) -> None:
        """Nothing to start: connections open on first use."""

    def _transport(self, url: httpx.URL) -> httpx.BaseTransport:
        transports: dict[str, httpx.BaseTransport] | None = getattr(self._local, "by_host", None)
        if transports is None:
            transports = self._local.by_host = {}
        origin = f"{url.scheme}://{url.netloc.decode('ascii')}"
        transport = transports.get(origin)
        if transport is None:
            transport = transports[origin] = self._make_transport(url)
            with self._lock:
                self._transports.append(transport)
        return transport

    def _make_transport(self, url: httpx.URL) -> httpx.BaseTransport:
        proxy = None
        if not urllib.request.proxy_bypass(url.host):
            proxy = urllib.request.getproxies().get(url.scheme)
        return httpx.HTTPTransport(proxy=proxy)

    def _url(self, base_url: str, alert_source_config_id: str) -> httpx.URL:
        key = (base_url, alert_source_config_id)
        url = self._urls.get(key)
        if url is None:
            path = PATH.format(alert_source_config_id=alert_source_config_id)
            url = self._urls[key] = httpx.URL(base_url.rstrip("/") + path)
        return url

    def post_alert_event(
        self,
        base_url: str,
        alert_source_config_id: str,
        token: SecretStr,
        payload: Mapping[str, Any],
    ) -> Answer:
        """POSTs one alert event; raises httpx.TransportError on timeouts and connection errors."""
        url = self._url(base_url, alert_source_config_id)
        request = httpx.Request(
            "POST",
            url,
            headers={
                "Authorization": f"Bearer {token.get_secret_value()}",
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
            },
            content=json.dumps(payload, separators=(",", ":")).encode(),
            extensions=self._extensions,
        )
        response = self._transport(url).handle_request(request)
        try:
            body = response.read()
        finally:
            response.close()
        return Answer(response.status_code, response.headers, body)

    def close(self) -> None:
        with self._lock:
            for transport in self._transports:
                transport.close()


class HelperProcessClient:
    """The same POSTs, made by a helper process: HTTP then costs this process only a pipe.

    Worker threads in one interpreter take turns holding its lock, and a request made
    while the consumer thread is busy costs far more CPU than one made alone (282 vs
    430-550 us per request here, bench/delivery.py); the helper makes them in its own
    interpreter. Each worker thread gets a pipe to one of the helper's threads and blocks
    on it, which holds no lock. The helper ignores SIGINT/SIGTERM (the service drains
    first) and exits when its pipes close, so it never outlives this process. If it dies
    or stops answering, the requests in flight fail as transport errors (retried like
    any other) and the next request starts a new helper.
    """

    def __init__(self, *, timeout: float = 10.0, threads: int = 8) -> None:
        self._timeout = timeout
        self._threads = threads
        self._lock = threading.Lock()
        self._local = threading.local()
        self._generation = 0
        self._process: Any = None
        self._free: list[Any] = []
        self._closed = False

    def _start(self) -> None:
        """A new helper, with one pipe per worker thread (under the lock)."""
        import multiprocessing

        context = multiprocessing.get_context("spawn")  # fork is unsafe beside librdkafka
        pairs = [context.Pipe() for _ in range(self._threads)]
        process = context.Process(
            target=_helper_main,
            args=([child for _, child in pairs], self._timeout),
            name="streamer-http",
            daemon=True,
        )
        process.start()
        for _, child in pairs:
            child.close()  # the helper has its ends; EOF reaches it when ours close
        self._process = process
        self._free = [parent for parent, _ in pairs]
        self._generation += 1

    def start(self) -> None:
        """Starts the helper now rather than at the first request (it takes ~0.3 s)."""
        with self._lock:
            if self._process is None and not self._closed:
                self._start()

    def _connection(self) -> Any:
        local = self._local
        if getattr(local, "generation", None) != self._generation or local.connection is None:
            with self._lock:
                if self._closed:
                    raise httpx.TransportError("the incident.io client is closed")
                if self._process is None:
                    self._start()
                if not self._free:
                    raise RuntimeError(f"more than {self._threads} threads are posting")
                if getattr(local, "connection", None) is not None:
                    local.connection.close()  # to a helper that was replaced
                local.connection = self._free.pop()
                local.generation = self._generation
        return local.connection

    def post_alert_event(
        self,
        base_url: str,
        alert_source_config_id: str,
        token: SecretStr,
        payload: Mapping[str, Any],
    ) -> Answer:
        """As IncidentIoClient.post_alert_event, in the helper."""
        connection = self._connection()
        generation = self._local.generation  # of this connection's helper
        try:
            connection.send((base_url, alert_source_config_id, token.get_secret_value(), payload))
            # httpx's timeout is per phase (connect, write, each read): allow them all
            if not connection.poll(4 * self._timeout + 5):
                raise httpx.TransportError("the HTTP helper process stopped answering")
            reply = connection.recv()
        except (EOFError, OSError, httpx.TransportError) as e:
            self._lost(generation, connection)
            if isinstance(e, httpx.TransportError):
                raise
            raise httpx.TransportError(f"the HTTP helper process exited ({e!r})") from e
        if reply[0] == "answer":
            return Answer(reply[1], httpx.Headers(reply[2]), reply[3])
        error = getattr(httpx, reply[1], None)
        if isinstance(error, type) and issubclass(error, httpx.TransportError):
            raise error(reply[2])
        raise httpx.TransportError(f"{reply[1]}: {reply[2]}")

    def _lost(self, generation: int, connection: Any) -> None:
        """The helper of `generation` is gone or out of step: the next request starts anew."""
        connection.close()
        with self._lock:
            self._local.connection = None
            if generation == self._generation and self._process is not None:
                self._stop_helper()

    def _stop_helper(self) -> None:
        if self._process is not None:
            for connection in self._free:
                connection.close()
            self._free = []
            self._process.kill()
            self._process.join(5)
            self._process = None
            self._generation += 1

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._stop_helper()


def _helper_main(connections: list[Any], timeout: float) -> None:
    """The helper: one thread per pipe, each POSTing what it is sent, until EOF."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the service drains; EOF ends us
    client = IncidentIoClient(timeout=timeout)

    def serve(connection: Any) -> None:
        while True:
            try:
                base_url, source, token, payload = connection.recv()
            except (EOFError, OSError):
                return
            try:
                answer = client.post_alert_event(base_url, source, SecretStr(token), payload)
                reply: tuple[Any, ...] = (
                    "answer",
                    answer.status,
                    list(answer.headers.items()),
                    answer.body,
                )
            except Exception as e:  # sent back; the engine's failure policy decides
                reply = ("error", type(e).__name__, str(e))
            try:
                connection.send(reply)
            except (EOFError, OSError):
                return

    threads = [threading.Thread(target=serve, args=(c,), daemon=True) for c in connections]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    client.close()
