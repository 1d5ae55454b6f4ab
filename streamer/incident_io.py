"""The incident.io Alert Events V2 client: one POST per delivery attempt, nothing more.

Decisions about the answer live in `failure_policy`; this module only speaks HTTP. The
token goes in the `Authorization` header (a token in a URL ends up in logs) and is
never part of an error message. Each delivery worker thread keeps its own keep-alive
`httpx.Client`: threads sharing one pool contend for its lock (measured in bench/).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import SecretStr

from streamer import __version__

PATH = "/v2/alert_events/http/{alert_source_config_id}"


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes


class IncidentIoClient:
    def __init__(
        self,
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._settings: dict[str, Any] = {
            "timeout": timeout,
            "transport": transport,
            "headers": {"User-Agent": f"streamer/{__version__}"},
        }
        # One client per worker thread: threads sharing one connection pool contend for
        # its lock, which measured slower than fewer threads (bench/delivery.py).
        self._local = threading.local()
        self._clients: list[httpx.Client] = []

    def _client(self) -> httpx.Client:
        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is None:
            client = httpx.Client(**self._settings)
            self._local.client = client
            self._clients.append(client)
        return client

    def post_alert_event(
        self,
        base_url: str,
        alert_source_config_id: str,
        token: SecretStr,
        payload: Mapping[str, Any],
    ) -> Answer:
        """POSTs one alert event; raises httpx.TransportError on timeouts and connection errors."""
        url = base_url.rstrip("/") + PATH.format(alert_source_config_id=alert_source_config_id)
        response = self._client().post(
            url,
            content=json.dumps(payload, separators=(",", ":")).encode(),
            headers={
                "Authorization": f"Bearer {token.get_secret_value()}",
                "Content-Type": "application/json",
            },
        )
        return Answer(response.status_code, dict(response.headers), response.content)

    def close(self) -> None:
        for client in self._clients:
            client.close()
