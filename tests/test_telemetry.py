"""Metrics an operator scrapes agree with what happened; health says what a probe needs."""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streamer.metrics_server import serve
from streamer.telemetry import Health, Telemetry
from tests.conftest import ManualClock
from tests.pipeline import Pipeline, ServiceProcess, check_event


def metrics(text: str) -> dict[tuple[str, frozenset], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def total(samples: dict, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


def test_liveness_follows_the_poll_loop_and_readiness_the_group() -> None:
    clock = ManualClock()
    health = Health(max_poll_interval=300, clock=clock)
    assert health.live() and not health.ready()
    clock.advance(299)
    assert health.live()
    clock.advance(2)
    assert not health.live()  # the loop has not turned for longer than max.poll.interval
    health.progressed()
    health.joined = True
    assert health.live() and health.ready()


def test_the_endpoints_answer_on_one_port() -> None:
    telemetry = Telemetry()
    telemetry.dropped.add(3)
    server, url = serve(telemetry, "127.0.0.1", 0)
    try:
        assert httpx.get(f"{url}/livez").status_code == 200
        assert httpx.get(f"{url}/readyz").status_code == 503  # not joined yet
        telemetry.health.joined = True
        assert httpx.get(f"{url}/readyz").status_code == 200
        scraped = metrics(httpx.get(f"{url}/metrics").text)
        assert total(scraped, "streamer_events_dropped_total") == 3
        assert httpx.get(f"{url}/nope").status_code == 404
    finally:
        server.shutdown()


# -- the metrics port under idle or hostile clients (issue 22, item 7) ---------------------


@pytest.fixture
def connections() -> Iterator[list[socket.socket]]:
    made: list[socket.socket] = []
    yield made
    for connection in made:
        connection.close()


def half_sent_request(url: str, connections: list[socket.socket]) -> socket.socket:
    """A connection that sends the start of a request and then nothing: the threads it
    held were never given back."""
    host, port = url.removeprefix("http://").split(":")
    connection = socket.create_connection((host, int(port)), timeout=30)
    connection.sendall(b"GET /metrics HTTP/1.1\r\nHost: streamer\r\n")
    connections.append(connection)
    return connection


def hung_up(connection: socket.socket) -> bool:
    """True when the server closed the connection without an answer (waits for it)."""
    try:
        return connection.recv(4096) == b""
    except ConnectionResetError:
        return True


def test_idle_connections_past_the_cap_hold_no_threads_and_a_scrape_still_answers(
    connections: list[socket.socket],
) -> None:
    """200 half-sent requests held 200 threads, for ever (here 40, five times the cap)."""
    server, url = serve(Telemetry(), "127.0.0.1", 0, max_connections=8, read_timeout=600)
    try:
        before = threading.active_count()
        for _ in range(40):
            half_sent_request(url, connections)
        # Accepted in order: once this answers, all 40 were taken in (or made room for it).
        assert httpx.get(f"{url}/livez", timeout=30).status_code == 200
        assert threading.active_count() - before <= 8 + 1  # one may still be ending
        assert hung_up(connections[0]), "the oldest idle connection made room"
        assert httpx.get(f"{url}/metrics", timeout=30).status_code == 200
    finally:
        server.shutdown()
        server.server_close()


def test_an_idle_connection_is_closed_after_the_read_timeout(
    connections: list[socket.socket],
) -> None:
    server, url = serve(Telemetry(), "127.0.0.1", 0, read_timeout=0.2)
    try:
        silent = half_sent_request(url, connections)
        host, port = url.removeprefix("http://").split(":")
        mute = socket.create_connection((host, int(port)), timeout=30)  # sends nothing at all
        connections.append(mute)
        assert hung_up(silent) and hung_up(mute)
        assert httpx.get(f"{url}/readyz", timeout=30).status_code == 503  # not joined yet
    finally:
        server.shutdown()
        server.server_close()


class ReadClock(ManualClock):
    """A manual clock that says when it was first read (the server took a connection)."""

    def __init__(self) -> None:
        super().__init__()
        self.read = threading.Event()

    def __call__(self) -> float:
        self.read.set()
        return super().__call__()


def test_a_request_trickled_past_the_read_timeout_is_cut_off(
    connections: list[socket.socket],
) -> None:
    """The read timeout bounds the whole request, not each read: a client sending a byte
    now and then cannot keep a connection (and its thread) for ever."""
    clock = ReadClock()
    server, url = serve(Telemetry(), "127.0.0.1", 0, read_timeout=60, clock=clock)
    try:
        trickler = half_sent_request(url, connections)
        assert clock.read.wait(30), "the server took the connection and set its deadline"
        clock.advance(61)
        trickler.sendall(b"\r\n")  # the request is complete, but late
        assert hung_up(trickler)
        assert httpx.get(f"{url}/livez", timeout=30).status_code == 200
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.integration
def test_scraped_counters_match_what_incident_io_received(
    infrastructure, fake, tmp_path, monkeypatch
) -> None:
    events = [check_event(f"host-{h}", "CRITICAL", n=h) for h in range(6)]
    fake.fail(503, count=2)
    statistics = {"properties": {"statistics.interval.ms": 200, "session.timeout.ms": 6000}}
    pipeline = Pipeline(infrastructure, fake, tmp_path, monkeypatch=monkeypatch, kafka=statistics)
    pipeline.produce([*events, b"garbage"])
    pipeline.start()

    def lag_reported() -> bool:
        lags = [
            v
            for (n, _), v in metrics(pipeline.engine.telemetry.scrape().decode()).items()
            if n == "streamer_consumer_lag"
        ]
        return len(lags) == 3 and all(v == 0 for v in lags)  # 3 partitions, all caught up

    try:
        pipeline.wait_for(
            lambda: len(fake.events) == len(events) and pipeline.engine.stats.dead_lettered == 1,
            "delivered and dead-lettered",
        )
        pipeline.wait_for(lag_reported, "consumer lag per partition from librdkafka statistics")
        scraped = metrics(pipeline.engine.telemetry.scrape().decode())
    finally:
        pipeline.stop()
    assert (
        total(
            scraped,
            "messaging_client_consumed_messages_total",
            messaging_destination_name=pipeline.topic,
        )
        == len(events) + 1
    )
    assert total(scraped, "streamer_events_routed_total", route="to-a") == len(events)
    assert total(
        scraped, "streamer_delivery_attempts_total", http_response_status_code="202"
    ) == len(fake.events)
    assert total(scraped, "streamer_delivery_attempts_total", http_response_status_code="503") == 2
    assert total(scraped, "streamer_events_dead_lettered_total", reason="decode:invalid-json") == 1
    assert total(scraped, "http_client_request_duration_seconds_count") == len(fake.answers)
    assert total(scraped, "streamer_delivery_latency_seconds_count") == len(events)
    assert total(scraped, "messaging_process_duration_seconds_count") == len(events) + 1
    assert total(scraped, "streamer_events_in_flight") == 0
    text = pipeline.engine.telemetry.scrape().decode()
    assert "token-a-secret" not in text and "token-b-secret" not in text


@pytest.mark.integration
def test_streamer_run_says_where_metrics_and_health_are(
    infrastructure, fake, tmp_path, monkeypatch
) -> None:
    pipeline = Pipeline(infrastructure, fake, tmp_path, monkeypatch=monkeypatch)
    pipeline.produce([check_event("host-1", "CRITICAL")])
    process = ServiceProcess(pipeline, tmp_path / "run.log")
    try:
        pipeline.wait_for(lambda: "metrics: http://127.0.0.1:" in process.log(), "the metrics line")
        url = process.log().split("metrics: ")[1].split("/metrics")[0]
        pipeline.wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, "ready")
        assert httpx.get(f"{url}/livez").status_code == 200
        pipeline.wait_for(lambda: len(fake.events) == 1, "delivered")
        assert "streamer_delivery_attempts_total" in httpx.get(f"{url}/metrics").text
    finally:
        process.signal(signal.SIGTERM)
        assert process.wait() == 0, process.log()[-2000:]


@pytest.mark.integration
def test_a_process_span_per_event_linked_to_the_producer_with_a_client_span_per_attempt(
    infrastructure, fake, tmp_path, monkeypatch
) -> None:
    import json

    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind

    from streamer.config import load_config
    from streamer.engine import Engine

    exporter = InMemorySpanExporter()
    producer_trace, producer_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    fake.fail(503, count=1)
    pipeline = Pipeline(infrastructure, fake, tmp_path, monkeypatch=monkeypatch)
    pipeline.producer.produce(
        pipeline.topic,
        key=b"host-1",
        value=json.dumps(check_event("host-1", "CRITICAL")).encode(),
        headers=[("traceparent", f"00-{producer_trace}-{producer_span}-01".encode())],
    )
    pipeline.producer.flush(10)
    pipeline.engine = Engine(
        load_config(pipeline.config_path), telemetry=Telemetry(span_exporter=exporter)
    )
    import threading

    stop = threading.Event()
    thread = threading.Thread(target=pipeline.engine.run, args=(stop,), daemon=True)
    thread.start()
    try:
        pipeline.wait_for(
            lambda: any(s.kind == SpanKind.CONSUMER for s in exporter.get_finished_spans()),
            "the event's process span finished",
        )
    finally:
        stop.set()
        thread.join(30)
    spans = exporter.get_finished_spans()
    [process] = [s for s in spans if s.kind == SpanKind.CONSUMER]
    clients = [s for s in spans if s.kind == SpanKind.CLIENT]
    assert process.name == f"process {pipeline.topic}"
    assert process.attributes["messaging.system"] == "kafka"
    assert process.attributes["messaging.destination.name"] == pipeline.topic
    assert process.attributes["messaging.consumer.group.name"] == pipeline.group
    assert process.attributes["messaging.kafka.offset"] == 0
    assert process.attributes["streamer.outcome"] == "delivered"
    [link] = process.links
    assert format(link.context.trace_id, "032x") == producer_trace
    assert format(link.context.span_id, "016x") == producer_span
    assert [c.attributes["http.response.status_code"] for c in clients] == [503, 202]
    assert all(c.parent.span_id == process.context.span_id for c in clients)


@pytest.mark.integration
def test_with_an_otlp_endpoint_metrics_and_spans_are_exported(
    infrastructure, fake, tmp_path, monkeypatch
) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received: list[tuple[str, str, bytes]] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            received.append((self.path, self.headers.get("Content-Type", ""), body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    collector = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{collector.server_port}")
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "500")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "streamer-under-test")
    pipeline = Pipeline(infrastructure, fake, tmp_path, monkeypatch=monkeypatch)
    pipeline.produce([check_event("host-1", "CRITICAL")])
    process = ServiceProcess(pipeline, tmp_path / "run.log")
    try:
        pipeline.wait_for(lambda: len(fake.events) == 1, "delivered")
        pipeline.wait_for(
            lambda: any(p == "/v1/metrics" for p, _, _ in received), "metrics exported"
        )
    finally:
        process.signal(signal.SIGTERM)
        assert process.wait() == 0, process.log()[-2000:]
        collector.shutdown()
    paths = {p for p, _, _ in received}
    assert {"/v1/metrics", "/v1/traces"} <= paths  # spans are flushed at shutdown at the latest
    assert all(ct == "application/x-protobuf" for _, ct, _ in received)
    assert any(b"streamer-under-test" in body for _, _, body in received)
    assert any(
        b"streamer.delivery.attempts" in body for p, _, body in received if p == "/v1/metrics"
    )
