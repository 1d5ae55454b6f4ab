"""Log lines are JSON with the context on-call needs, and no secret ever appears anywhere."""

from __future__ import annotations

import json
import logging
import signal

import httpx
import pytest

from streamer.logs import JsonFormatter, SecretMask
from tests.pipeline import TOKENS, Pipeline, ServiceProcess, check_event


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    r = logging.LogRecord("streamer.engine", logging.ERROR, __file__, 1, message, args, None)
    r.__dict__.update(extra)
    return r


def test_a_line_is_one_json_object_with_its_context() -> None:
    line = JsonFormatter().format(
        record(
            "dead-lettered %s",
            "x",
            topic="t",
            partition=2,
            offset=41,
            route="r",
            request_id="req-1",
        )
    )
    entry = json.loads(line)
    assert entry["message"] == "dead-lettered x" and entry["level"] == "error"
    assert {k: entry[k] for k in ("topic", "partition", "offset", "route", "request_id")} == {
        "topic": "t",
        "partition": 2,
        "offset": 41,
        "route": "r",
        "request_id": "req-1",
    }


def test_known_secrets_are_masked_in_messages_and_context() -> None:
    mask = SecretMask(["tok-very-secret"])
    r = record("auth failed with %s", "tok-very-secret", destination="d tok-very-secret")
    mask.filter(r)
    assert r.getMessage() == "auth failed with ***" and r.__dict__["destination"] == "d ***"


@pytest.mark.integration
def test_no_token_in_any_log_line_metric_or_dead_letter(
    infrastructure, fake, tmp_path, monkeypatch
) -> None:
    wrong = "a-wrong-token-which-is-still-a-secret"
    pipeline = Pipeline(
        infrastructure, fake, tmp_path, monkeypatch=monkeypatch, tokens={"TEST_TOKEN_B": wrong}
    )
    fake.fail(503, count=2)
    fake.fail(422, count=1, source_id="SRC_A")
    events = [check_event(f"host-{h}", "CRITICAL", n=h) for h in range(4)]
    pipeline.produce([*events, check_event("host-b", "CRITICAL", team="b"), b"garbage"])
    process = ServiceProcess(pipeline, tmp_path / "run.log", "--log-level", "debug")
    try:
        pipeline.wait_for(
            lambda: (
                len(fake.events) >= 3
                and '"dead-lettered' in process.log()
                and "held" in process.log()
            ),
            "failures under way",
        )
        url = process.log().split("metrics: ")[1].split("/metrics")[0]
        scrape = httpx.get(f"{url}/metrics").text
    finally:
        process.signal(signal.SIGTERM)
        assert process.wait() == 0
    letters = pipeline.dead_letters(expected=2)
    secrets = [*TOKENS.values(), wrong]
    log = process.log()
    everything = log + scrape + repr(letters)
    assert not [s for s in secrets if s in everything]
    lines = [line for line in log.splitlines() if line.startswith("{")]
    entries = [json.loads(line) for line in lines]
    held = [e for e in entries if "held" in e["message"]]
    assert held and held[0]["destination"] == "b" and held[0]["http_status"] == 401
    dead = [e for e in entries if e["message"].startswith("dead-lettered")]
    assert {e.get("reason") for e in dead} == {"http-422", "decode:invalid-json"}
    assert all({"topic", "partition", "offset"} <= e.keys() for e in dead)
    # every line is JSON, librdkafka's own included (a plain first line says where things are)
    others = [line for line in log.splitlines() if not line.startswith("{")]
    assert all(line.startswith(("streamer:", "metrics:")) for line in others), others[:5]
