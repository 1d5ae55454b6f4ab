"""Metrics an operator scrapes agree with what happened; health says what a probe needs."""

from __future__ import annotations

import signal

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streamer.telemetry import Health, Telemetry, serve
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


@pytest.mark.integration
def test_scraped_counters_match_what_incident_io_received(
    infrastructure, fake, tmp_path, monkeypatch
) -> None:
    events = [check_event(f"host-{h}", "CRITICAL", n=h) for h in range(6)]
    fake.fail(503, count=2)
    pipeline = Pipeline(infrastructure, fake, tmp_path, monkeypatch=monkeypatch)
    pipeline.produce([*events, b"garbage"])
    pipeline.start()
    try:
        pipeline.wait_for(
            lambda: len(fake.events) == len(events) and pipeline.engine.stats.dead_lettered == 1,
            "delivered and dead-lettered",
        )
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
