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
