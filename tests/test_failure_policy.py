"""incident.io's answer -> retry, wait, dead-letter or hold (DESIGN.md section 5)."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamer.failure_policy import (
    Accepted,
    Backoff,
    FailurePolicy,
    HoldDestination,
    RateLimited,
    Retry,
    Undeliverable,
)
from streamer.testing import http_date

NOW = 1_795_000_000.0
POLICY = FailurePolicy(backoff=Backoff(base=1, cap=8))


def error_body(status: int, code: str = "x", field: str | None = None, **extra) -> bytes:
    error = {"code": code, "message": f"{code} happened"}
    if field:
        error["source"] = {"field": field}
    return json.dumps(
        {"type": "t", "status": status, "request_id": "req-1", "errors": [error], **extra}
    ).encode()


def decide(status: int, body: bytes = b"", headers=None, **kwargs):
    args = {"attempt": 0, "first_attempt_at": NOW, "now": NOW, "rng": lambda: 1.0, **kwargs}
    return POLICY.decide_response(status, headers or {}, body, **args)


def test_202_is_accepted_with_its_request_id() -> None:
    body = json.dumps({"status": "success", "request_id": "req-9"}).encode()
    assert decide(202, body) == Accepted("req-9")


@pytest.mark.parametrize("status", [400, 413, 422, 409])
def test_a_payload_incident_io_refuses_is_dead_lettered_with_the_body(status) -> None:
    body = error_body(status, "is_required", "title")
    decision = decide(status, body)
    assert isinstance(decision, Undeliverable)
    assert decision.status == status and decision.request_id == "req-1"
    assert decision.body == body.decode()
    assert "is_required (title)" in decision.reason


@pytest.mark.parametrize("status", [401, 403, 404])
def test_a_misconfigured_destination_is_held_not_dead_lettered(status) -> None:
    decision = decide(status, error_body(status, "missing_authorization_material"))
    assert isinstance(decision, HoldDestination) and decision.status == status


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
def test_server_errors_are_retried_with_backoff(status) -> None:
    assert decide(status, attempt=2) == Retry(4.0, f"HTTP {status}", None)
    assert decide(status, attempt=10).delay == 8.0  # capped


def test_timeouts_and_connection_errors_are_retried() -> None:
    decision = POLICY.decide_error(
        httpx.ReadTimeout("timed out"), attempt=0, first_attempt_at=NOW, now=NOW, rng=lambda: 0.5
    )
    assert decision == Retry(0.5, "ReadTimeout: timed out", None)


def test_with_a_maximum_retry_time_an_outage_ends_in_a_dead_letter() -> None:
    policy = FailurePolicy(max_retry_seconds=600)
    early = policy.decide_response(503, {}, b"", attempt=3, first_attempt_at=NOW, now=NOW + 599)
    late = policy.decide_response(503, {}, b"", attempt=9, first_attempt_at=NOW, now=NOW + 600)
    assert isinstance(early, Retry)
    assert isinstance(late, Undeliverable) and "gave up after 600 s, 10 attempts" in late.reason


@pytest.mark.parametrize(
    ("headers", "body_retry_after", "expected"),
    [
        ({}, http_date(NOW + 42), NOW + 42),  # the documented body
        ({"Retry-After": "17"}, None, NOW + 17),  # header in seconds
        ({"retry-after": http_date(NOW + 120)}, None, NOW + 120),  # header as a date
        ({"Retry-After": "5"}, http_date(NOW + 30), NOW + 30),  # both: the later wins
        ({}, None, NOW + 1.0),  # neither: a default wait
        ({"Retry-After": "soon"}, "not a date", NOW + 1.0),
    ],
)
def test_429_retry_after_in_all_three_forms(headers, body_retry_after, expected) -> None:
    extra = {"rate_limit": {"retry_after": body_retry_after}} if body_retry_after else {}
    decision = decide(429, error_body(429, "too_many_requests", **extra), headers)
    assert decision == RateLimited(expected, "req-1")


@given(attempt=st.integers(0, 200), r=st.floats(0, 1))
def test_backoff_is_full_jitter_under_the_cap(attempt, r) -> None:
    backoff = Backoff(base=0.5, cap=30)
    delay = backoff.delay(attempt, lambda: r)
    assert 0 <= delay <= min(30, 0.5 * 2**attempt)


@given(status=st.integers(100, 599), body=st.binary(max_size=200))
def test_any_answer_gets_a_decision(status, body) -> None:
    decision = decide(status, body)
    assert isinstance(decision, Accepted | RateLimited | Retry | Undeliverable | HoldDestination)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308, 300, 399])
def test_a_redirect_holds_the_destination_naming_where_it_moved(status) -> None:
    headers = {"Location": "https://api.example.com/v2/alert_events/http/SRC?token=s3cret#x"}
    decision = decide(status, b"", headers)
    assert isinstance(decision, HoldDestination) and decision.status == status
    assert "https://api.example.com/v2/alert_events/http/SRC" in decision.reason
    assert "s3cret" not in decision.reason and "?" not in decision.reason


def test_a_redirect_reason_keeps_no_credentials_and_is_bounded() -> None:
    headers = {"location": "https://user:s3cret@api.example.com/" + "a" * 5000 + "\x1b[31m"}
    decision = decide(301, b"", headers)
    assert isinstance(decision, HoldDestination)
    assert "s3cret" not in decision.reason and "user" not in decision.reason
    assert "https://api.example.com/aaa" in decision.reason
    assert len(decision.reason) < 400 and "\x1b" not in decision.reason


def test_a_redirect_without_location_still_holds() -> None:
    decision = decide(302, b"")
    assert isinstance(decision, HoldDestination) and "(no Location)" in decision.reason


def test_a_retry_after_past_the_cap_pauses_only_as_long_as_the_cap() -> None:
    """A broken proxy's year-long Retry-After must not take the alert source offline."""
    from streamer.failure_policy import MAX_RETRY_AFTER

    policy = FailurePolicy()
    now = 1_790_000_000.0
    for headers, body in [
        ({"Retry-After": "31536000"}, b"{}"),
        ({}, b'{"rate_limit": {"retry_after": "Fri, 31 Dec 9999 23:59:59 GMT"}}'),
    ]:
        decision = policy.decide_response(
            429, headers, body, attempt=0, first_attempt_at=now, now=now
        )
        assert isinstance(decision, RateLimited)
        assert decision.retry_at == now + MAX_RETRY_AFTER
