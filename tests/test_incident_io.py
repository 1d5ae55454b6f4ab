"""The incident.io client: what goes on the wire, proxies, deadlines, body caps, reuse."""

from __future__ import annotations

import itertools
import re
import socket
import ssl
import threading
import traceback
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import httpx
import pytest
from pydantic import SecretStr

from streamer import __version__
from streamer.failure_policy import (
    MAX_RETRY_AFTER,
    Accepted,
    FailurePolicy,
    HoldDestination,
    RateLimited,
)
from streamer.incident_io import MAX_ANSWER_BODY, IncidentIoClient, PostsAlertEvents
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


def serving_recorder(tls: ssl.SSLContext | None) -> Iterator[str]:
    """The keep-alive recorder's base URL while it serves (over TLS with `tls`)."""
    _Recorder.seen, _Recorder.client_ports = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    yield f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def recorder() -> Iterator[str]:
    yield from serving_recorder(None)


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


# -- hostile or broken peers (DESIGN.md guarantee 8) ---------------------------------------


class Peer:
    """A raw socket server on loopback that misbehaves in one way, for one connection.

    `closed` is set when the peer sees the client hang up (a read returns EOF, a write
    fails); `sent` counts the bytes it managed to write.
    """

    def __init__(
        self, behave: Callable[[Peer, socket.socket], None], tls: ssl.SSLContext | None = None
    ) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.listener.getsockname()[1]}"
        self._tls = tls
        self.closed = threading.Event()
        self.requests: list[bytes] = []
        self.sent = 0
        self._behave = behave
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.listener.settimeout(0.05)
        while not self._stop.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            connection.settimeout(10)
            if self._tls is not None:
                try:
                    connection = self._tls.wrap_socket(connection, server_side=True)
                except OSError:
                    connection.close()
                    continue
            with connection:
                self.requests.append(read_request(connection))
                try:
                    self._behave(self, connection)
                except OSError:
                    self.closed.set()

    def trickle(self, connection: socket.socket, data: bytes, pause: float = 0.02) -> None:
        for i in range(len(data)):
            connection.sendall(data[i : i + 1])
            self.sent += 1
            if self._stop.wait(pause):
                return

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        self._thread.join(5)


def read_request(connection: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += connection.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head)[1])  # type: ignore[index]
    while len(body) < length:
        body += connection.recv(65536)
    return data


def wait_for_hang_up(peer: Peer, connection: socket.socket) -> None:
    """Reads until the client hangs up: a server that accepted and never answers."""
    while connection.recv(65536):
        pass
    peer.closed.set()


def trickled_headers(peer: Peer, connection: socket.socket) -> None:
    peer.trickle(connection, b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\n" * 20)


def trickled_body(peer: Peer, connection: socket.socket) -> None:
    connection.sendall(b"HTTP/1.1 202 Accepted\r\nContent-Length: 10000\r\n\r\n")
    peer.trickle(connection, b"{" + b" " * 9999)


HUGE = 200 * 1024 * 1024


def huge_body(peer: Peer, connection: socket.socket) -> None:
    connection.sendall(f"HTTP/1.1 500 Oops\r\nContent-Length: {HUGE}\r\n\r\n".encode())
    chunk = b'{"type": "internal_server_error", "request_id": "r-1"}' + b" " * 65482
    while peer.sent < HUGE:
        connection.sendall(chunk)
        peer.sent += len(chunk)


@pytest.fixture
def peer() -> Iterator[Callable[[Callable[[Peer, socket.socket], None]], Peer]]:
    made: list[Peer] = []

    def make(
        behave: Callable[[Peer, socket.socket], None], tls: ssl.SSLContext | None = None
    ) -> Peer:
        made.append(Peer(behave, tls))
        return made[-1]

    yield make
    for p in made:
        p.close()


TLS = Path(__file__).parent / "tls"  # a test CA and its certificate for 127.0.0.1 (100 years)


def server_tls() -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(TLS / "localhost.pem")
    return context


@pytest.fixture(params=["direct", "tls", "proxy"])
def reach(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, peer: Callable[..., Peer]
) -> Callable[[Callable[[Peer, socket.socket], None]], tuple[Peer, str]]:
    """A peer that behaves so, and the base URL that reaches it: the peer's own, over TLS,
    or any host's through the peer as the HTTP proxy.

    Without a proxy the client speaks h11 on its own socket (or TLS socket);
    through one, httpcore's proxy pool does: each way meets the hostile peers."""
    for name in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SSL_CERT_FILE", str(TLS / "ca.pem"))

    def make(behave: Callable[[Peer, socket.socket], None]) -> tuple[Peer, str]:
        server = peer(behave, server_tls() if request.param == "tls" else None)
        if request.param != "proxy":
            return server, server.url
        monkeypatch.setenv("HTTP_PROXY", server.url)
        return server, "http://api.incident.invalid"

    return make


@pytest.mark.parametrize(
    "behave", [wait_for_hang_up, trickled_headers, trickled_body], ids=lambda f: f.__name__
)
def test_a_slow_peer_gets_a_timeout_and_a_closed_connection(
    behave: Callable[[Peer, socket.socket], None],
    reach: Callable[..., tuple[Peer, str]],
    make_client: Callable[..., PostsAlertEvents],
) -> None:
    # Each of these outlives httpx's per-read timeout; the client ends them at its deadline
    # (bench/slow_peers.py measures how close to it).
    server, url = reach(behave)
    client = make_client(timeout=0.5)
    with pytest.raises(httpx.ReadTimeout):
        client.post_alert_event(url, "SRC_A", SecretStr("t"), PAYLOAD)
    assert server.closed.wait(5), "the client hung up"
    assert len(server.requests) == 1


def test_a_connect_that_hangs_gets_a_connect_timeout(
    make_client: Callable[..., PostsAlertEvents],
) -> None:
    # A listener whose accept queue is full: the kernel drops further SYNs unanswered.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    fillers = []
    try:
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(listener.getsockname())
            fillers.append(filler)
        client = make_client(timeout=0.5)
        with pytest.raises(httpx.ConnectTimeout):
            client.post_alert_event(url, "SRC_A", SecretStr("t"), PAYLOAD)
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def test_only_the_start_of_a_huge_body_is_read_and_the_connection_is_dropped(
    reach: Callable[..., tuple[Peer, str]], make_client: Callable[..., PostsAlertEvents]
) -> None:
    server, url = reach(huge_body)
    client = make_client(timeout=5)
    answer = client.post_alert_event(url, "SRC_A", SecretStr("t"), PAYLOAD)
    assert answer.status == 500
    assert len(answer.body) == MAX_ANSWER_BODY
    assert answer.body.startswith(b'{"type": "internal_server_error"')
    assert server.closed.wait(5), "the rest is not drained: the connection is closed"
    assert server.sent < HUGE // 10
    # Not returned to the pool: the next request opens a new connection (the peer serves
    # one request per connection; the rest of the first body would garble a reuse).
    again = client.post_alert_event(url, "SRC_A", SecretStr("t"), PAYLOAD)
    assert again.status == 500 and len(server.requests) == 2


def test_a_body_under_the_cap_keeps_its_connection(recorder: str) -> None:
    client = IncidentIoClient()
    try:
        for _ in range(2):
            assert client.post_alert_event(recorder, "SRC_A", SecretStr("t"), PAYLOAD).body
    finally:
        client.close()
    assert len(set(_Recorder.client_ports)) == 1


def test_a_redirect_is_returned_not_followed(
    reach: Callable[..., tuple[Peer, str]], make_client: Callable[..., PostsAlertEvents]
) -> None:
    def moved(peer: Peer, connection: socket.socket) -> None:
        connection.sendall(
            b"HTTP/1.1 308 Permanent Redirect\r\nLocation: http://127.0.0.1:1/new?token=x\r\n"
            b"Content-Length: 0\r\n\r\n"
        )

    server, url = reach(moved)
    answer = make_client().post_alert_event(url, "SRC_A", SecretStr("t"), PAYLOAD)
    assert answer.status == 308
    assert answer.headers["location"] == "http://127.0.0.1:1/new?token=x"
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    "token", ["s3cr3t\r\nX-Evil: 1", "s3cr3t value", "s3crët", "s3cr3t\x00", ""], ids=repr
)
def test_a_token_no_header_can_carry_is_refused_without_quoting_it(
    token: str, recorder: str, make_client: Callable[..., PostsAlertEvents]
) -> None:
    with pytest.raises(ValueError) as refused:
        make_client().post_alert_event(recorder, "SRC_A", SecretStr(token), PAYLOAD)
    assert "s3cr" not in str(refused.value) and refused.value.__context__ is None
    assert _Recorder.seen == []


def test_errors_never_quote_the_token(make_client: Callable[..., PostsAlertEvents]) -> None:
    # Port 1 on loopback: refused. Whatever the error says, it names no header value.
    with pytest.raises(httpx.ConnectError) as refused:
        make_client(timeout=2).post_alert_event(
            "http://127.0.0.1:1", "SRC_A", SecretStr("the-secret-token"), PAYLOAD
        )
    assert "the-secret-token" not in repr(refused.value)


# -- the same peers, end to end against the double -----------------------------------------


@pytest.mark.parametrize(
    "inject",
    [
        lambda fake: fake.hang(),
        lambda fake: fake.trickle(bytes_per_second=50),
        lambda fake: fake.trickle(bytes_per_second=50, part="body"),
        lambda fake: (fake.huge_body(HUGE, status=502), fake.trickle(bytes_per_second=20_000)),
    ],
    ids=["hang", "trickled answer", "trickled body", "trickled huge body"],
)
def test_the_doubles_slow_faults_end_at_the_clients_deadline(
    inject: Callable[[FakeIncidentIo], object],
    fake: FakeIncidentIo,
    make_client: Callable[..., PostsAlertEvents],
) -> None:
    inject(fake)
    client = make_client(timeout=0.5)
    with pytest.raises(httpx.TimeoutException):
        client.post_alert_event(fake.url, "SRC_A", SecretStr(TOKENS["TEST_TOKEN_A"]), PAYLOAD)


def test_the_doubles_huge_body_is_read_up_to_the_cap(
    fake: FakeIncidentIo, make_client: Callable[..., PostsAlertEvents]
) -> None:
    fake.huge_body(HUGE, status=503, count=1)
    client = make_client(timeout=5)
    token = SecretStr(TOKENS["TEST_TOKEN_A"])
    answer = client.post_alert_event(fake.url, "SRC_A", token, PAYLOAD)
    assert answer.status == 503 and len(answer.body) == MAX_ANSWER_BODY
    assert client.post_alert_event(fake.url, "SRC_A", token, PAYLOAD).status == 202


def test_a_moved_destination_is_held_with_its_new_location(
    fake: FakeIncidentIo, make_client: Callable[..., PostsAlertEvents]
) -> None:
    fake.redirect("https://api.moved.example/v2/alert_events/http/SRC_A?token=leak", status=301)
    answer = make_client().post_alert_event(
        fake.url, "SRC_A", SecretStr(TOKENS["TEST_TOKEN_A"]), PAYLOAD
    )
    decision = FailurePolicy().decide_response(
        answer.status, answer.headers, answer.body, attempt=0, first_attempt_at=0, now=0
    )
    assert isinstance(decision, HoldDestination) and decision.status == 301
    assert "https://api.moved.example/v2/alert_events/http/SRC_A" in decision.reason
    assert "leak" not in decision.reason
    assert len(fake.answers) == 1 and fake.events == []


def answer_with(status: str, headers: bytes, body: bytes) -> Callable[[Peer, socket.socket], None]:
    def behave(peer: Peer, connection: socket.socket) -> None:
        connection.sendall(
            f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n".encode()
            + headers
            + b"\r\n"
            + body
        )

    return behave


def test_a_202_nested_60000_levels_deep_is_accepted(
    peer: Callable[..., Peer], make_client: Callable[..., PostsAlertEvents]
) -> None:
    """Issue 22: the answer's parsing raised RecursionError and the event was retried forever."""
    server = peer(answer_with("202 Accepted", b"", b"[" * 60_000 + b"]" * 60_000))
    answer = make_client(timeout=5).post_alert_event(server.url, "SRC_A", SecretStr("t"), PAYLOAD)
    decision = FailurePolicy().decide_response(
        answer.status, answer.headers, answer.body, attempt=0, first_attempt_at=0, now=0
    )
    assert answer.status == 202 and decision == Accepted(None)


def test_a_429_with_a_4000_digit_retry_after_pauses_for_the_cap(
    peer: Callable[..., Peer], make_client: Callable[..., PostsAlertEvents]
) -> None:
    """Issue 22: float(int("9" * 4000)) overflowed and the 429 became a plain retry."""
    server = peer(
        answer_with("429 Too Many Requests", b"Retry-After: " + b"9" * 4000 + b"\r\n", b"")
    )
    answer = make_client(timeout=5).post_alert_event(server.url, "SRC_A", SecretStr("t"), PAYLOAD)
    decision = FailurePolicy().decide_response(
        answer.status, answer.headers, answer.body, attempt=0, first_attempt_at=0, now=1000.0
    )
    assert decision == RateLimited(1000.0 + MAX_RETRY_AFTER)


def test_a_kept_connection_the_peer_hung_up_is_not_written_to(
    peer: Callable[..., Peer], make_client: Callable[..., PostsAlertEvents]
) -> None:
    """Idle keep-alive connections get closed by servers: the next request opens another."""
    hung_up = threading.Event()

    def answer_then_hang_up(peer: Peer, connection: socket.socket) -> None:
        connection.sendall(b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\n{}")
        connection.shutdown(socket.SHUT_RDWR)
        hung_up.set()

    server = peer(answer_then_hang_up)
    client = make_client(timeout=5)
    assert client.post_alert_event(server.url, "SRC_A", SecretStr("t"), PAYLOAD).status == 202
    assert hung_up.wait(5)
    assert client.post_alert_event(server.url, "SRC_A", SecretStr("t"), PAYLOAD).status == 202
    assert len(server.requests) == 2


def test_an_interim_1xx_is_skipped_for_the_answer(
    peer: Callable[..., Peer], make_client: Callable[..., PostsAlertEvents]
) -> None:
    server = peer(answer_with("100 Continue\r\n\r\nHTTP/1.1 202 Accepted", b"", b"{}"))
    answer = make_client(timeout=5).post_alert_event(server.url, "SRC_A", SecretStr("t"), PAYLOAD)
    assert (answer.status, answer.body) == (202, b"{}")


@pytest.fixture
def tls_recorder() -> Iterator[str]:
    """The keep-alive recorder over TLS, with the test CA's certificate for 127.0.0.1."""
    yield from serving_recorder(server_tls())


def test_a_tls_connection_is_kept_alive_across_requests(
    tls_recorder: str, monkeypatch: pytest.MonkeyPatch, make_client: Callable[..., PostsAlertEvents]
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(TLS / "ca.pem"))
    client = make_client(timeout=5)
    answers = [
        client.post_alert_event(tls_recorder, "SRC_A", SecretStr("t"), PAYLOAD) for _ in "abc"
    ]
    assert [(a.status, a.body) for a in answers] == [(202, b'{"status": "success"}')] * 3
    assert len(_Recorder.client_ports) == 3 and len(set(_Recorder.client_ports)) == 1


def test_a_certificate_no_trusted_authority_signed_is_refused(
    tls_recorder: str, monkeypatch: pytest.MonkeyPatch, make_client: Callable[..., PostsAlertEvents]
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        make_client(timeout=5).post_alert_event(tls_recorder, "SRC_A", SecretStr("t"), PAYLOAD)
    assert _Recorder.seen == []


def test_bytes_after_an_answer_are_never_taken_for_the_next_ones_answer(
    reach: Callable[..., tuple[Peer, str]], make_client: Callable[..., PostsAlertEvents]
) -> None:
    """A broken peer or proxy sends an answer nobody asked for after the real one: read as
    the next request's answer, a 429 or 500 would pass for that stale 202 (an alert lost;
    through a proxy, red team /tmp/red4 F2)."""
    numbers = itertools.count(1)

    def answer_and_more(peer: Peer, connection: socket.socket) -> None:
        while True:
            body = b'{"req":%d}' % next(numbers)
            connection.sendall(
                b"HTTP/1.1 202 Accepted\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
                + b'HTTP/1.1 202 Accepted\r\nContent-Length: 13\r\n\r\n{"fake":true}'
            )
            data = b""
            while b"\r\n\r\n" not in data:  # a next request on this connection, if any
                if not (chunk := connection.recv(65536)):
                    return
                data += chunk

    _, url = reach(answer_and_more)
    client = make_client(timeout=5)
    bodies = [client.post_alert_event(url, "SRC_A", SecretStr("t"), PAYLOAD).body for _ in "ab"]
    assert bodies == [b'{"req":1}', b'{"req":2}']


def test_a_malformed_answer_quoting_the_token_is_reported_without_it(
    reach: Callable[..., tuple[Peer, str]], make_client: Callable[..., PostsAlertEvents]
) -> None:
    """A peer that echoes the Authorization header into a line it breaks: the parser's
    error quotes that line; the error raised (and its chain) must not (red team F3)."""

    def echo_broken(peer: Peer, connection: socket.socket) -> None:
        auth = re.search(rb"(?i)authorization: *([^\r]*)", peer.requests[-1])[1]  # type: ignore[index]
        connection.sendall(b"HTTP/1.1 202 Accepted\r\nX-Echo " + auth + b"\r\n\r\n")

    _, url = reach(echo_broken)
    token = "the-" + "s3cret"  # (a traceback quotes the source line)
    with pytest.raises(httpx.TransportError) as failed:
        make_client(timeout=5).post_alert_event(url, "SRC_A", SecretStr(token), PAYLOAD)
    error: BaseException | None = failed.value
    assert "the-s3cret" not in "".join(traceback.format_exception(failed.value))
    while error is not None:
        assert "the-s3cret" not in repr(error) + str(error)
        error = error.__cause__ or error.__context__
