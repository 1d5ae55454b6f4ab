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


# -- hostile answers (issue 22, item 6): every one ends in a bounded, stated outcome --------

DEEP_ARRAY = b"[" * 60_000 + b"]" * 60_000
DEEP_OBJECT = b'{"a":' * 60_000 + b"1" + b"}" * 60_000
HOSTILE_BODIES = {
    "deep-array": DEEP_ARRAY,
    "deep-object": DEEP_OBJECT,
    "deep-request-id": b'{"request_id": ' + DEEP_ARRAY + b"}",
    "deep-rate-limit": b'{"rate_limit": {"retry_after": ' + DEEP_ARRAY + b"}}",
    "deep-errors": b'{"errors": [{"code": "x", "message": ' + DEEP_ARRAY + b"}]}",
    "huge": b'{"request_id": "' + b"r" * 5_000_000 + b'"}',
    "huge-garbage": b"\xff\x00{[" * 1_000_000,
    "nan": b'{"request_id": NaN, "rate_limit": {"retry_after": NaN}}',
    "huge-number": b'{"rate_limit": {"retry_after": 1' + b"0" * 10_000 + b"}}",
}


@pytest.mark.parametrize("body", HOSTILE_BODIES.values(), ids=HOSTILE_BODIES.keys())
def test_a_202_is_done_whatever_its_body(body) -> None:
    """A 202 whose body nests 60,000 levels deep was retried forever: RecursionError
    escaped the parsing, and the caller took it for no answer at all."""
    decision = decide(202, body)
    assert isinstance(decision, Accepted)
    assert decision.request_id is None


@pytest.mark.parametrize("body", HOSTILE_BODIES.values(), ids=HOSTILE_BODIES.keys())
@pytest.mark.parametrize(
    ("status", "outcome"),
    [(429, RateLimited), (503, Retry), (422, Undeliverable), (401, HoldDestination)],
)
def test_a_hostile_body_keeps_the_decision_its_status_gives(body, status, outcome) -> None:
    decision = decide(status, body)
    assert isinstance(decision, outcome)
    if isinstance(decision, RateLimited):
        assert decision.retry_at == NOW + POLICY.default_rate_limit_wait
    if isinstance(decision, Undeliverable | HoldDestination):
        assert len(decision.reason) <= 300
    if isinstance(decision, Undeliverable):
        assert len(decision.body) <= 4096


def test_a_request_id_is_kept_only_when_it_is_a_short_printable_string() -> None:
    assert decide(202, b'{"request_id": "req-1"}') == Accepted("req-1")
    assert decide(202, b'{"request_id": "' + b"r" * 1000 + b'"}') == Accepted(None)
    assert decide(202, b'{"request_id": "a\\u001b[31mb"}') == Accepted(None)
    assert decide(202, b'{"request_id": 7}') == Accepted(None)


def _rate_limited(headers, body=b"{}") -> float:
    decision = decide(429, body, headers)
    assert isinstance(decision, RateLimited), decision
    return decision.retry_at


CAP = NOW + 600.0  # MAX_RETRY_AFTER: the longest pause a 429 may impose
DEFAULT = NOW + 1.0  # default_rate_limit_wait: unreadable, missing or already past


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        ("9" * 4_000, CAP),  # the issue's: int() takes it, float() overflows
        ("9" * 5_000, CAP),  # past int()'s 4,300-digit limit
        ("0" * 5_000 + "17", NOW + 17),  # leading zeros are still 17 seconds
        ("  42 ", NOW + 42),
        ("0", DEFAULT),  # a 429 always pauses the limiter: never shorter than the default
        ("-5", DEFAULT),
        ("NaN", DEFAULT),
        ("inf", DEFAULT),
        ("1e999", DEFAULT),
        ("2.5", DEFAULT),
        ("soon", DEFAULT),
        ("", DEFAULT),
        ("\u00b2", DEFAULT),  # str.isdigit() says yes, int() says no
        ("\u0663", DEFAULT),  # an Arabic-Indic 3: not a delay-seconds
        ("5, 10", DEFAULT),  # two headers joined
        ("x" * 100_000, DEFAULT),
        (http_date(NOW + 120), NOW + 120),
        (http_date(NOW - 3600), DEFAULT),  # already past: a skewed clock or a stale date
        ("Fri, 31 Dec 9999 23:59:59 GMT", CAP),
        ("Fri, 31 Dec 99999999999999999999999 23:59:59 GMT", DEFAULT),  # no such year
        ("Fri, 99 Dec 2025 99:99:99 GMT", DEFAULT),
        ("Mon, 01 Jan 0001 00:00:00 GMT", DEFAULT),
        ("Thu, 01 Jan 1970 00:00:00 +9999", DEFAULT),
        ("Fri, 31 Dec 2025 23:59:59 " + "9" * 4_000, DEFAULT),  # a zone no clock has
    ],
)
def test_a_hostile_retry_after_header_still_pauses_the_limiter_within_bounds(
    retry_after, expected
) -> None:
    """A 429 with a 4,000-digit Retry-After was a plain retry: the limiter never paused."""
    assert _rate_limited({"Retry-After": retry_after}) == expected


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        ("Fri, 31 Dec 9999 23:59:59 UTC", CAP),
        ("Fri, 31 Dec 99999999999999999999999 23:59:59 UTC", DEFAULT),
        ("9" * 4_000, DEFAULT),  # the body's is a date, never seconds
        ("x" * 100_000, DEFAULT),
        (http_date(NOW - 60), DEFAULT),
        (1e308, DEFAULT),
        (None, DEFAULT),
        ([["deep"]], DEFAULT),
    ],
)
def test_a_hostile_rate_limit_retry_after_in_the_body_still_pauses_within_bounds(
    retry_after, expected
) -> None:
    body = json.dumps({"rate_limit": {"retry_after": retry_after}}).encode()
    assert _rate_limited({}, body) == expected


def test_a_garbage_retry_after_does_not_hide_a_good_one() -> None:
    body = json.dumps({"rate_limit": {"retry_after": http_date(NOW + 30)}}).encode()
    assert _rate_limited({"Retry-After": "9" * 4_000}, body) == CAP  # the later wins, capped
    assert _rate_limited({"Retry-After": "garbage"}, body) == NOW + 30
    assert _rate_limited({"Retry-After": "12"}, DEEP_ARRAY) == NOW + 12


@given(
    status=st.integers(100, 599),
    retry_after=st.text(max_size=60) | st.from_regex(r"-?[0-9]{1,5000}", fullmatch=True),
    body=st.binary(max_size=300)
    | st.recursive(st.none(), lambda s: st.lists(s, max_size=2)).map(
        lambda v: json.dumps({"rate_limit": {"retry_after": v}, "request_id": v}).encode()
    ),
)
def test_any_answer_gets_a_decision_and_a_429_a_bounded_pause(status, retry_after, body) -> None:
    decision = decide(status, body, {"Retry-After": retry_after})
    assert isinstance(decision, Accepted | RateLimited | Retry | Undeliverable | HoldDestination)
    if status == 429:
        assert isinstance(decision, RateLimited)
        assert DEFAULT <= decision.retry_at <= CAP


def test_a_token_echoed_in_an_error_is_masked_before_anything_is_cut() -> None:
    from streamer import logs

    token = "sk_live_" + "Q7x" * 10
    logs.MASK.add([token])
    # a proxy echoes the request's headers; the token straddles the 4,096-character cut
    body = ("x" * 4080 + f"Authorization: Bearer {token}").encode()
    decision = POLICY.decide_response(400, {}, body, attempt=0, first_attempt_at=NOW, now=NOW)
    assert isinstance(decision, Undeliverable)
    assert "sk_live" not in decision.body and "Q7x" not in decision.body
    assert len(decision.body) <= 4096
    # the reason, cut at 200 characters, from a message that carries the token at the cut
    message = "y" * 180 + f" token={token}"
    body = json.dumps({"type": "invalid", "errors": [{"code": "c", "message": message}]})
    decision = POLICY.decide_response(
        422, {}, body.encode(), attempt=0, first_attempt_at=NOW, now=NOW
    )
    assert isinstance(decision, Undeliverable)
    assert "sk_liv" not in decision.reason and "Q7x" not in decision.reason
    # a body already cut (at the client's read cap) inside the token ends masked too
    decision = POLICY.decide_response(
        400, {}, f"echo {token[:14]}".encode(), attempt=0, first_attempt_at=NOW, now=NOW
    )
    assert isinstance(decision, Undeliverable)
    assert decision.body == "echo ***"
