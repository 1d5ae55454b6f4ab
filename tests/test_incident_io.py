"""The incident.io client: what goes on the wire, proxies, timeouts, connection reuse."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import httpx
import pytest
from pydantic import SecretStr

from streamer import __version__
from streamer.incident_io import IncidentIoClient, PostsAlertEvents
from streamer.testing import FakeIncidentIo
from tests.pipeline import TOKENS

PAYLOAD = {"title": "disk full", "status": "firing", "deduplication_key": "db-1/disk"}


@pytest.fixture
def make_client() -> Iterator[Callable[..., PostsAlertEvents]]:
    made: list[PostsAlertEvents] = []

    def make(timeout: float = 10.0) -> PostsAlertEvents:
        client = IncidentIoClient(timeout=timeout)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def test_posts_the_alert_event_with_the_token_in_the_header(
    fake: FakeIncidentIo, make_client: Callable[..., PostsAlertEvents]
) -> None:
    client = make_client()
    try:
        answer = client.post_alert_event(
            fake.url, "SRC_A", SecretStr(TOKENS["TEST_TOKEN_A"]), PAYLOAD
        )
        refused = client.post_alert_event(fake.url, "SRC_A", SecretStr("wrong"), PAYLOAD)
    finally:
        client.close()
    assert answer.status == 202
    assert answer.headers["content-type"].startswith("application/json")
    assert b'"status": "success"' in answer.body
    assert [e.payload for e in fake.events] == [PAYLOAD]
    assert refused.status == 401 and b"wrong" not in refused.body


class _Recorder(BaseHTTPRequestHandler):
    """Answers every request 202 and remembers it: a forward proxy, or a plain server."""

    protocol_version = "HTTP/1.1"  # keep-alive
    seen: ClassVar[list[tuple[str, str]]] = []
    client_ports: ClassVar[list[int]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        _Recorder.seen.append((self.path, self.headers.get("User-Agent", "")))
        _Recorder.client_ports.append(self.client_address[1])
        body = b'{"status": "success"}'
        self.send_response(202)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[str]:
    _Recorder.seen, _Recorder.client_ports = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_requests_go_through_the_proxy_the_environment_names(
    recorder: str, monkeypatch: pytest.MonkeyPatch, make_client: Callable[..., PostsAlertEvents]
) -> None:
    monkeypatch.setenv("HTTP_PROXY", recorder)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    client = make_client(timeout=5)
    try:
        answer = client.post_alert_event(
            "http://api.incident.invalid", "SRC_A", SecretStr("t"), PAYLOAD
        )
    finally:
        client.close()
    assert answer.status == 202
    assert _Recorder.seen == [
        ("http://api.incident.invalid/v2/alert_events/http/SRC_A", f"streamer/{__version__}")
    ]


def test_no_proxy_hosts_are_reached_directly(
    recorder: str,
    fake: FakeIncidentIo,
    monkeypatch: pytest.MonkeyPatch,
    make_client: Callable[..., PostsAlertEvents],
) -> None:
    monkeypatch.setenv("HTTP_PROXY", recorder)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    client = make_client(timeout=5)
    try:
        answer = client.post_alert_event(
            fake.url, "SRC_A", SecretStr(TOKENS["TEST_TOKEN_A"]), PAYLOAD
        )
    finally:
        client.close()
    assert answer.status == 202
    assert _Recorder.seen == [] and len(fake.events) == 1


def test_a_silent_server_times_out_as_a_transport_error(
    fake: FakeIncidentIo, make_client: Callable[..., PostsAlertEvents]
) -> None:
    from streamer.testing import Fault

    fake.add_fault(Fault(kind="latency", seconds=2.0))
    client = make_client(timeout=0.3)
    try:
        with pytest.raises(httpx.TimeoutException):
            client.post_alert_event(fake.url, "SRC_A", SecretStr(TOKENS["TEST_TOKEN_A"]), PAYLOAD)
    finally:
        client.close()


def test_each_thread_keeps_its_connection_alive(recorder: str) -> None:
    client = IncidentIoClient()
    try:
        for _ in range(3):
            client.post_alert_event(recorder, "SRC_A", SecretStr("t"), PAYLOAD)
        other = threading.Thread(
            target=client.post_alert_event, args=(recorder, "SRC_A", SecretStr("t"), PAYLOAD)
        )
        other.start()
        other.join()
    finally:
        client.close()
    ports = _Recorder.client_ports
    assert len(ports) == 4
    assert len(set(ports[:3])) == 1, "one keep-alive connection for the first thread"
    assert ports[3] != ports[0], "another thread, its own connection"
