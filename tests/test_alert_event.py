from streamer.alert_event import AlertEventPayload, payload_errors


def test_a_documented_example_payload_is_valid() -> None:
    body = {
        "deduplication_key": "4293868629",
        "description": "We've detected a number of timeouts on hello.world.com",
        "metadata": {"service": "hello.world.com", "team": ["my-team"]},
        "source_url": "https://www.my-alerting-platform.com/alerts/my-alert-123",
        "status": "firing",
        "title": "*errors.withMessage: PG::Error failed to connect",
    }
    assert payload_errors(body, require_deduplication_key=True) == []
    assert AlertEventPayload.model_validate(body).status == "firing"


def test_missing_required_fields_are_named() -> None:
    errors = payload_errors({}, require_deduplication_key=True)
    assert {(e.code, e.field) for e in errors} == {
        ("is_required", "title"),
        ("is_required", "status"),
        ("is_required", "deduplication_key"),
    }


def test_status_outside_the_enum_and_wrong_types_are_invalid() -> None:
    body = {"title": 1, "status": "open", "metadata": "x", "deduplication_key": "k"}
    errors = payload_errors(body, require_deduplication_key=True)
    assert {(e.code, e.field) for e in errors} == {
        ("invalid_value", "title"),
        ("invalid_value", "status"),
        ("invalid_value", "metadata"),
    }


def test_deduplication_key_is_optional_for_older_sources() -> None:
    assert (
        payload_errors({"title": "t", "status": "resolved"}, require_deduplication_key=False) == []
    )


def test_a_body_that_is_not_an_object_is_one_error() -> None:
    [error] = payload_errors(["title"], require_deduplication_key=True)
    assert error.code == "invalid_value"
