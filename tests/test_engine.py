"""The delivery engine against a real broker and the incident.io double.

Each test asserts what an on-call engineer would notice: every alert arrives (no loss),
the alerts of one thing arrive in the order they happened (per-key order), the offsets
are committed only behind what arrived or was dead-lettered, and failures land where
the design says.
"""

from __future__ import annotations

import pytest

from streamer.testing import AlertSource, FakeIncidentIo
from tests.pipeline import TOKENS, Pipeline, ServiceProcess, check_event

pytestmark = pytest.mark.integration


def flapping(hosts: int, flips: int, team: str = "a") -> list[dict]:
    """Each host's disk check flapping CRITICAL/OK `flips` times, interleaved across hosts."""
    return [
        check_event(f"{team}-host-{h}", "CRITICAL" if i % 2 == 0 else "OK", team=team, n=i)
        for i in range(flips)
        for h in range(hosts)
    ]


def expected_statuses(events: list[dict]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for e in events:
        key = f"{e['check']['host']}//{e['check']['check']}"
        out.setdefault(key, []).append("resolved" if e["check"]["state"] == "OK" else "firing")
    return out


def test_happy_path_every_alert_arrives_in_order_and_is_committed(
    infrastructure, fake, tmp_path, monkeypatch
) -> None:
    events = flapping(hosts=8, flips=6) + flapping(hosts=3, flips=4, team="b")
    pipeline = Pipeline(infrastructure, fake, tmp_path, monkeypatch=monkeypatch)
    pipeline.produce(events)
    pipeline.deliver_all(len(events))
    assert len(fake.events) == len(events)  # nothing lost, nothing twice
    assert pipeline.delivered_statuses() == expected_statuses(events)
    assert set(pipeline.delivered_statuses("SRC_B")) == {f"b-host-{h}//disk" for h in range(3)}
    assert pipeline.dead_letters(expected=0) == []


def test_a_5xx_outage_delays_but_loses_nothing(infrastructure, fake, tmp_path, monkeypatch) -> None:
    events = flapping(hosts=5, flips=4)
    fake.fail(503, count=15)
    pipeline = Pipeline(infrastructure, fake, tmp_path, monkeypatch=monkeypatch)
    pipeline.produce(events)
    pipeline.deliver_all(len(events))
    assert sum(1 for a in fake.answers if a.status == 503) == 15
    assert pipeline.engine.stats.retried == 15
    assert pipeline.delivered_statuses() == expected_statuses(events)


def test_a_429_storm_is_waited_out_in_order(infrastructure, tmp_path, monkeypatch) -> None:
    # incident.io enforces a lower limit than the configuration says: 4 per 2 s window.
    events = flapping(hosts=4, flips=4)
    with FakeIncidentIo(
        [
            AlertSource("SRC_A", TOKENS["TEST_TOKEN_A"], events_per_minute=4),
            AlertSource("SRC_B", TOKENS["TEST_TOKEN_B"]),
        ],
        window_seconds=2,
    ) as fake:
        pipeline = Pipeline(infrastructure, fake, tmp_path, monkeypatch=monkeypatch)
        pipeline.produce(events)
        pipeline.start()
        try:
            pipeline.wait_for(lambda: len(fake.events) >= len(events), "all alerts delivered")
        finally:
            pipeline.stop()
    assert any(a.status == 429 for a in fake.answers)
    assert pipeline.engine.stats.rate_limited > 0 and pipeline.engine.stats.retried == 0
    waits = pipeline.engine.telemetry.scrape().decode()
    assert 'streamer_rate_limit_wait_seconds_count{destination="a"' in waits
    assert pipeline.delivered_statuses() == expected_statuses(events)


def test_a_refused_payload_is_dead_lettered_and_the_rest_flows(
    infrastructure, fake, tmp_path, monkeypatch
) -> None:
    events = flapping(hosts=3, flips=2)
    fake.fail(422, count=1, source_id="SRC_A")
    pipeline = Pipeline(infrastructure, fake, tmp_path, monkeypatch=monkeypatch)
    pipeline.produce([*events, b"{not json"])
    pipeline.start()
    try:
        pipeline.wait_for(lambda: len(fake.events) >= len(events) - 1, "the other alerts delivered")
        letters = pipeline.dead_letters(expected=2)
        pipeline.wait_committed()
    finally:
        pipeline.stop()
    by_reason = {headers["reason"]: (key, value, headers) for key, value, headers in letters}
    assert set(by_reason) == {"http-422", "decode:invalid-json"}
    key, value, headers = by_reason["http-422"]
    assert (key, value) in pipeline.produced  # the original message, unchanged
    assert headers["http_status"] == "422" and headers["route"] == "to-a"
    assert headers["destination"] == "a" and headers["attempts"] == "1"
    assert '"validation_error"' in headers["response_body"] and headers["request_id"]
    assert headers["source_topic"] == pipeline.topic and headers["source_offset"].isdigit()
    assert by_reason["decode:invalid-json"][1] == b"{not json"
    for _, _, h in letters:  # secrets never reach a dead letter
        assert not any(t in v for t in TOKENS.values() for v in h.values())


def test_a_misconfigured_destination_is_held_while_others_flow(
    infrastructure, fake, tmp_path, monkeypatch
) -> None:
    to_a, to_b = flapping(hosts=4, flips=2), flapping(hosts=2, flips=2, team="b")
    pipeline = Pipeline(
        infrastructure,
        fake,
        tmp_path,
        monkeypatch=monkeypatch,
        tokens={"TEST_TOKEN_B": "a-wrong-token"},
    )
    pipeline.produce(to_b + to_a)
    pipeline.start()
    try:
        pipeline.wait_for(
            lambda: len(pipeline.delivered_statuses("SRC_A")) == 4, "a's alerts delivered"
        )
        pipeline.wait_for(lambda: pipeline.engine.stats.held_destinations == 1, "b held")
        assert pipeline.delivered_statuses("SRC_B") == {}
        assert sum(pipeline.committed().values()) < sum(pipeline.end_offsets().values())
        # the operator fixes the token on incident.io's side: the held destination recovers
        fake.add_source(AlertSource("SRC_B", "a-wrong-token", events_per_minute=10_000))
        pipeline.wait_for(lambda: len(fake.events) >= len(to_a) + len(to_b), "b's alerts delivered")
        pipeline.wait_committed()
    finally:
        pipeline.stop()
    assert pipeline.engine.stats.held_destinations == 0
    assert pipeline.delivered_statuses() == expected_statuses(to_a + to_b)
    assert pipeline.dead_letters(expected=0) == []


def test_past_the_in_flight_cap_consumption_pauses_and_resumes_without_loss(
    infrastructure, fake, tmp_path, monkeypatch
) -> None:
    events = flapping(hosts=6, flips=10)
    fake.delay(0.01)
    pipeline = Pipeline(
        infrastructure,
        fake,
        tmp_path,
        monkeypatch=monkeypatch,
        delivery="max_unfinished: 5\nworkers: 2",
    )
    pipeline.produce(events)
    pipeline.deliver_all(len(events))
    assert pipeline.engine.stats.pauses > 1  # it hit the cap, resumed, and hit it again
    # librdkafka drops prefetched messages on pause: the seek on resume must not skip any
    assert len(fake.events) == len(events)
    assert pipeline.delivered_statuses() == expected_statuses(events)


def sasl_pipeline(infrastructure, fake, tmp_path, monkeypatch, password: str) -> Pipeline:
    """A pipeline whose service talks to the broker's SCRAM listener as `streamer-test`
    (whose real password is scram-secret-42), with `password` from the environment."""
    assert infrastructure.sasl_bootstrap_servers, (
        "this broker has no SASL listener: with an external broker, name one in "
        "KAFKA_SASL_BOOTSTRAP_SERVERS"
    )
    infrastructure.add_scram_user("streamer-test", "scram-secret-42")
    monkeypatch.setenv("TEST_KAFKA_PASSWORD", password)
    kafka = {
        "bootstrap_servers": infrastructure.sasl_bootstrap_servers,
        "properties": {
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "SCRAM-SHA-256",
            "sasl.username": "streamer-test",
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000,
        },
        "secret_properties": {"sasl.password": {"env": "TEST_KAFKA_PASSWORD"}},
    }
    return Pipeline(infrastructure, fake, tmp_path, monkeypatch=monkeypatch, kafka=kafka)


def test_the_pipeline_runs_over_sasl_scram(infrastructure, fake, tmp_path, monkeypatch) -> None:
    events = flapping(hosts=3, flips=2)
    pipeline = sasl_pipeline(infrastructure, fake, tmp_path, monkeypatch, "scram-secret-42")
    pipeline.produce([*events, b"not an event"])
    pipeline.start()
    try:
        pipeline.wait_for(lambda: len(fake.events) >= len(events), "alerts delivered over SASL")
        # the dead-letter producer authenticates with the same settings
        [(_, value, headers)] = pipeline.dead_letters(expected=1)
        assert value == b"not an event" and headers["reason"].startswith("decode:")
        pipeline.wait_committed()
    finally:
        pipeline.stop()
    assert pipeline.delivered_statuses() == expected_statuses(events)


def test_a_wrong_sasl_password_fails_at_start_up_without_printing_it(
    infrastructure, fake, tmp_path, monkeypatch
) -> None:
    pipeline = sasl_pipeline(infrastructure, fake, tmp_path, monkeypatch, "not-the-password-77")
    process = ServiceProcess(pipeline, tmp_path / "run.log", "--startup-timeout", "5")
    assert process.wait() == 2, process.log()[-2000:]
    output = process.log()
    assert "did not answer" in output and infrastructure.sasl_bootstrap_servers in output
    assert "not-the-password-77" not in output


def test_an_unreachable_registry_delays_but_never_dead_letters(
    infrastructure, fake, tmp_path, monkeypatch
) -> None:
    import json
    from urllib.parse import urlsplit

    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    from streamer.decoding import load_schema
    from streamer.testing.events import check
    from tests.pipeline import SCHEMA, TcpForwarder

    registry = urlsplit(infrastructure.schema_registry_url)
    path = TcpForwarder(registry.hostname, registry.port)
    pipeline = Pipeline(infrastructure, fake, tmp_path, monkeypatch=monkeypatch)
    # the topic is Confluent-framed and the registry is reached through the switchable path
    text = pipeline.config_path.read_text().replace("format: json", "format: confluent")
    text += f"schema_registry: {{url: 'http://127.0.0.1:{path.port}{registry.path}'}}\n"
    pipeline.config_path.write_text(text)
    serialize = AvroSerializer(
        SchemaRegistryClient({"url": infrastructure.schema_registry_url}),
        json.dumps(load_schema(SCHEMA)),
    )
    context = SerializationContext(pipeline.topic, MessageField.VALUE)
    events = [check(host=f"db-{i}", check_name="disk", state="CRITICAL") for i in range(5)]
    for event in events:
        pipeline.producer.produce(
            pipeline.topic, key=event["check"]["host"], value=serialize(event, context)
        )
    pipeline.producer.flush(10)
    pipeline.start()
    try:
        pipeline.wait_for(lambda: pipeline.engine.machine.blocked > 0, "a partition blocked")
        assert fake.events == [] and pipeline.engine.stats.dead_lettered == 0
        assert sum(pipeline.committed().values()) == 0  # nothing passed the blocked events
        path.open()  # the registry is reachable again
        pipeline.wait_for(lambda: len(fake.events) == len(events), "all delivered after recovery")
        pipeline.wait_committed()
    finally:
        pipeline.stop()
        path.close()
    assert pipeline.engine.stats.dead_lettered == 0
    assert pipeline.dead_letters(expected=0) == []
