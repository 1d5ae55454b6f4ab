"""Log lines are JSON with the context on-call needs, and no secret ever appears anywhere."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import threading
from urllib.parse import quote, quote_plus, urlencode

import httpx
import pytest

from streamer import logs
from streamer.logs import JsonFormatter, SecretMask, redact_url
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


# -- every form of a secret, everywhere a line can carry it -------------------------------

# Made-up values: one like a real token, one with every character some escaping changes.
FAKE_SECRETS = ["fake-token-0123456789abcdef", "FAKE/s3cr3t+'q\"\\%é"]


def escaped_forms(secret: str) -> set[str]:
    return {
        secret,
        repr(secret)[1:-1],
        json.dumps(secret)[1:-1],
        secret.encode("unicode_escape").decode(),
        quote(secret, safe=""),
        quote_plus(secret),
    }


@pytest.fixture
def configured_logging(monkeypatch):
    """`logs.configure` for one test; the root logger and exception hooks restored after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    monkeypatch.setattr(logs, "MASK", SecretMask())
    yield
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


@pytest.mark.parametrize("fmt", ["json", "text"])
@pytest.mark.parametrize("secret", FAKE_SECRETS)
def test_no_form_of_a_secret_reaches_a_log_line(configured_logging, capsys, fmt, secret) -> None:
    logs.configure("debug", fmt)
    logs.MASK.add([secret])  # the fixture's fresh mask, which configure() installed
    log = logging.getLogger("streamer.test")
    log.error("raw %s", secret)
    log.error("repr %r", secret)
    log.error(f"bang-r {secret!r} inside {'Bearer ' + secret!r}")
    log.error("json %s", json.dumps({"token": secret}))
    log.error(
        "unicode_escape %s and %s",
        secret.encode("unicode_escape"),
        secret.encode("unicode_escape").decode(),
    )
    log.error("url %s %s %s", quote(secret), quote(secret, safe=""), urlencode({"t": secret}))
    log.error("Illegal header value %r", f"Bearer {secret}".encode())
    log.error("context", extra={"destination": secret, "problems": [f"x {secret!r}"]})
    try:
        raise RuntimeError(f"the registry refused {secret}") from ValueError(repr(secret))
    except RuntimeError:
        log.exception("failed while holding %s", "nothing secret")
    try:
        json.loads(json.dumps(secret) + "x")
    except ValueError as e:
        log.warning("parse error", exc_info=e)
    log.info("with a stack", stack_info=True)
    output = capsys.readouterr().err
    assert output.count("***") >= 12, output
    leaked = [form for form in escaped_forms(secret) if form in output]
    assert not leaked, output
    assert "Traceback" in output and "RuntimeError" in output  # the traceback is kept, masked


def test_an_uncaught_exception_is_printed_masked() -> None:
    secret = FAKE_SECRETS[0]
    program = (
        "from streamer import logs\n"
        f"logs.MASK.add([{secret!r}])\n"
        "logs.configure()\n"
        f"raise RuntimeError('Illegal header value ' + repr(b'Bearer ' + {secret!r}.encode()))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "RuntimeError: Illegal header value b'Bearer ***'" in result.stderr
    assert secret not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "https://user:fake-pass@registry:8081/apis/ccompat/v7",
            "https://registry:8081/apis/ccompat/v7",
        ),
        ("http://registry:8081/?api_key=fake-key#frag", "http://registry:8081/"),
        ("https://a:1@r1:8081, https://b:2@r2:8081", "https://r1:8081, https://r2:8081"),
        ("user:fake-pass@broker-1:9093,broker-2:9093", "broker-1:9093,broker-2:9093"),
        ("SASL_SSL://u:p@[::1]:9093", "SASL_SSL://[::1]:9093"),
        ("https://api.incident.io", "https://api.incident.io"),
    ],
)
def test_a_url_is_shown_without_credentials_or_query(url: str, shown: str) -> None:
    assert redact_url(url) == shown


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
