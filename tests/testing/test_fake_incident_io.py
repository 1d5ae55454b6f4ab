"""The incident.io double answers every documented status with the documented body."""

from __future__ import annotations

import re
from collections.abc import Iterator
from email.utils import parsedate_to_datetime

import httpx
import pytest

from streamer.testing import AlertSource, FakeIncidentIo, http_date
from streamer.testing.fake_incident_io import standalone
from tests.conftest import ManualClock

SOURCE = AlertSource("01SOURCE", "secret-token", events_per_minute=3)
OTHER = AlertSource("01OTHER", "secret-token", events_per_minute=100)
EVENT = {"title": "Disk full on db-1", "status": "firing", "deduplication_key": "db-1/disk"}


@pytest.fixture
def fake(clock: ManualClock) -> Iterator[FakeIncidentIo]:
    with FakeIncidentIo([SOURCE, OTHER], clock=clock) as fake:
        yield fake


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5) as client:
        yield client


def post(
    http: httpx.Client,
    fake: FakeIncidentIo,
    body: object = EVENT,
    source: str = SOURCE.id,
    token: str | None = SOURCE.token,
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return http.post(fake.endpoint(source), json=body, headers=headers)


def assert_error_shape(response: httpx.Response, status: int, type_: str) -> list[dict]:
    body = response.json()
    assert response.status_code == status
    assert body["type"] == type_ and body["status"] == status
    assert re.fullmatch(r"[0-9a-f-]{36}", body["request_id"])
    assert body["errors"] and all({"code", "message"} <= e.keys() for e in body["errors"])
    return body["errors"]


def test_a_valid_event_is_accepted_and_recorded(fake, http, clock) -> None:
    response = post(http, fake)
    assert response.status_code == 202
    assert response.json() == {
        "status": "success",
        "message": "Event accepted for processing",
        "deduplication_key": "db-1/disk",
    }
    [event] = fake.events
    assert (event.source_id, event.payload, event.received_at) == (SOURCE.id, EVENT, clock.now)


def test_events_are_recorded_in_arrival_order(fake, http) -> None:
    for status in ("firing", "resolved", "firing"):
        assert post(http, fake, {**EVENT, "status": status}).status_code == 202
    assert [e.payload["status"] for e in fake.events] == ["firing", "resolved", "firing"]


def test_the_token_may_come_as_a_query_parameter(fake, http) -> None:
    response = http.post(fake.endpoint(SOURCE.id), params={"token": SOURCE.token}, json=EVENT)
    assert response.status_code == 202


def test_no_token_is_401_missing_authorization_material(fake, http) -> None:
    errors = assert_error_shape(post(http, fake, token=None), 401, "authentication_error")
    assert errors[0]["code"] == "missing_authorization_material"
    assert fake.events == []


def test_a_wrong_token_is_401(fake, http) -> None:
    errors = assert_error_shape(post(http, fake, token="guess"), 401, "authentication_error")
    assert errors[0]["code"] == "invalid_authorization_material"


def test_an_unknown_alert_source_is_404(fake, http) -> None:
    assert_error_shape(post(http, fake, source="01NOSUCH"), 404, "not_found")


def test_a_payload_breaking_the_schema_is_422_naming_each_field(fake, http) -> None:
    errors = assert_error_shape(
        post(http, fake, {"status": "open", "metadata": []}), 422, "validation_error"
    )
    fields = {e["source"]["field"]: e["code"] for e in errors}
    assert fields == {
        "title": "is_required",
        "status": "invalid_value",
        "metadata": "invalid_value",
        "deduplication_key": "is_required",
    }
    assert fake.events == []


def test_a_body_that_is_not_json_is_400(fake, http) -> None:
    response = http.post(
        fake.endpoint(SOURCE.id),
        content=b"{not json",
        headers={"Authorization": f"Bearer {SOURCE.token}"},
    )
    assert_error_shape(response, 400, "bad_request")


def test_past_the_source_limit_a_429_says_when_to_retry(fake, http, clock) -> None:
    first_at = clock.now
    for _ in range(3):
        assert post(http, fake).status_code == 202
        clock.advance(1)
    response = post(http, fake)
    errors = assert_error_shape(response, 429, "too_many_requests")
    assert errors[0]["code"] == "too_many_requests"
    rate_limit = response.json()["rate_limit"]
    assert rate_limit == {
        "name": SOURCE.id,
        "limit": 3,
        "remaining": 0,
        "retry_after": http_date(first_at + 60),
    }
    assert rate_limit["retry_after"].endswith(" UTC")  # as the documented example writes it
    assert response.headers["Retry-After"] == str(60 - 3)
    assert len(fake.events) == 3


def test_the_window_rolls_so_no_window_admits_more_than_the_limit(fake, http, clock) -> None:
    start = clock.now
    for _ in range(3):
        assert post(http, fake).status_code == 202
        clock.advance(20)  # admitted at start + 0, 20, 40
    clock.now = start + 59.999
    assert post(http, fake).status_code == 429  # [start, start + 60) already holds 3
    clock.now = start + 60
    assert post(http, fake).status_code == 202  # the first admission has left the window
    assert post(http, fake).status_code == 429


def test_other_sources_are_not_limited_by_one_sources_limit(fake, http) -> None:
    for _ in range(3):
        post(http, fake)
    assert post(http, fake).status_code == 429
    assert post(http, fake, source=OTHER.id).status_code == 202


def test_the_per_token_limit_spans_sources(clock, http) -> None:
    with FakeIncidentIo([SOURCE, OTHER], requests_per_minute_per_token=2, clock=clock) as fake:
        assert post(http, fake).status_code == 202
        assert post(http, fake, source=OTHER.id).status_code == 202
        response = post(http, fake, source=OTHER.id)
        assert response.status_code == 429
        assert response.json()["rate_limit"]["name"] == "api_key"


@pytest.mark.parametrize("form", ["date", "none"])
def test_retry_after_header_forms(clock, http, form) -> None:
    with FakeIncidentIo([SOURCE], retry_after_header=form, clock=clock) as fake:
        for _ in range(3):
            post(http, fake)
        response = post(http, fake)
    assert response.status_code == 429
    if form == "none":
        assert "Retry-After" not in response.headers
    else:
        retry_at = parsedate_to_datetime(response.headers["Retry-After"]).timestamp()
        assert retry_at == pytest.approx(clock.now + 60, abs=1)


def test_a_5xx_fault_for_a_count_of_requests(fake, http) -> None:
    fake.fail(503, count=2)
    statuses = [post(http, fake).status_code for _ in range(3)]
    assert statuses == [503, 503, 202]
    assert len(fake.events) == 1
    assert [a.status for a in fake.answers] == [503, 503, 202]


def test_a_5xx_fault_for_a_period_ends_when_time_passes(fake, http, clock) -> None:
    fake.fail(500, seconds=30)
    assert_error_shape(post(http, fake), 500, "internal_server_error")
    clock.advance(30)
    assert post(http, fake).status_code == 202


def test_a_fault_can_target_one_source(fake, http) -> None:
    fake.fail(502, source_id=SOURCE.id)
    assert post(http, fake).status_code == 502
    assert post(http, fake, source=OTHER.id).status_code == 202


def test_a_connection_reset_is_seen_by_the_client(fake, http) -> None:
    fake.reset_connections(count=1)
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        post(http, fake)
    assert fake.events == []
    assert post(http, fake).status_code == 202


def test_a_response_slower_than_the_client_timeout_still_processes_the_event(fake) -> None:
    # What makes at-least-once delivery real: the client gave up, incident.io did not.
    fake.delay(0.5, count=1)
    with httpx.Client(timeout=0.05) as impatient, pytest.raises(httpx.ReadTimeout):
        post(impatient, fake)
    assert len(fake.events) == 1


def test_faults_and_records_are_reachable_over_http(fake, http) -> None:
    assert (
        http.post(
            f"{fake.url}/_fake/faults", json={"kind": "status", "status": 504, "count": 1}
        ).status_code
        == 201
    )
    assert post(http, fake).status_code == 504
    assert post(http, fake).status_code == 202
    events = http.get(f"{fake.url}/_fake/events").json()["events"]
    assert [e["payload"] for e in events] == [EVENT]
    assert http.delete(f"{fake.url}/_fake/faults").status_code == 200
    bad = http.post(f"{fake.url}/_fake/faults", json={"status": 500})
    assert bad.status_code == 400 and "kind" in bad.json()["error"]


def test_the_standalone_command_serves_the_same_api(http) -> None:
    with standalone("--source", "01CLI:cli-token:60") as (process, url):
        response = http.post(
            f"{url}/v2/alert_events/http/01CLI",
            json=EVENT,
            headers={"Authorization": "Bearer cli-token"},
        )
        assert response.status_code == 202
        assert http.get(f"{url}/_fake/events").json()["events"][0]["source_id"] == "01CLI"
    assert process.returncode == 0  # SIGTERM ends it cleanly


def test_queued_failures_apply_one_after_the_other(fake, http) -> None:
    fake.fail(503, count=2)
    fake.fail(422, count=1)
    assert [post(http, fake).status_code for _ in range(4)] == [503, 503, 422, 202]


# -- hostile and broken servers ------------------------------------------------------------


def test_a_redirect_fault_answers_a_3xx_with_its_location(fake, http) -> None:
    fake.redirect("https://moved.example/v2?token=x", count=1)
    response = post(http, fake)
    assert response.status_code == 308
    assert response.headers["Location"] == "https://moved.example/v2?token=x"
    assert fake.events == [] and [a.status for a in fake.answers] == [308]
    assert post(http, fake).status_code == 202


def test_a_huge_body_fault_streams_a_valid_error_of_that_size(fake, http) -> None:
    fake.huge_body(300_000, status=502, count=1)
    response = post(http, fake)
    assert len(response.content) == 300_000
    assert_error_shape(response, 502, "internal_server_error")
    assert fake.events == []


def test_a_trickled_answer_still_processes_the_event(fake, http) -> None:
    fake.trickle(bytes_per_second=100_000, count=1)  # whole answer, headers included
    fake.trickle(bytes_per_second=100_000, part="body", count=1)
    assert [post(http, fake).status_code for _ in range(2)] == [202, 202]
    assert len(fake.events) == 2


def test_a_trickle_slower_than_the_client_ends_in_its_timeout(fake, http) -> None:
    fake.trickle(bytes_per_second=20, part="body", count=1)  # a byte every 50 ms
    with pytest.raises(httpx.ReadTimeout):
        http.post(
            fake.endpoint(SOURCE.id),
            json=EVENT,
            headers={"Authorization": f"Bearer {SOURCE.token}"},
            timeout=httpx.Timeout(5, read=0.01),
        )
    assert len(fake.events) == 1  # the client gave up; incident.io did not


def test_a_hang_fault_answers_nothing_until_the_client_gives_up(fake) -> None:
    fake.hang(count=1)
    with httpx.Client(timeout=0.2) as impatient, pytest.raises(httpx.ReadTimeout):
        post(impatient, fake)
    assert fake.events == [] and [a.status for a in fake.answers] == [0]


def test_new_faults_are_reachable_over_http(fake, http) -> None:
    created = http.post(
        f"{fake.url}/_fake/faults",
        json={"kind": "redirect", "location": "https://moved.example/", "count": 1},
    )
    assert created.status_code == 201 and created.json()["status"] == 308
    assert post(http, fake).status_code == 308
    for kind in ("trickle", "huge_body", "redirect", "nonsense"):
        refused = http.post(f"{fake.url}/_fake/faults", json={"kind": kind})
        assert refused.status_code == 400, kind
    assert (
        http.post(
            f"{fake.url}/_fake/faults", json={"kind": "huge_body", "size": 1000, "count": 1}
        ).json()["status"]
        == 500
    )
    assert len(post(http, fake).content) == 1000
