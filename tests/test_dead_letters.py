"""Dead letters: the original, unchanged, with headers that say why; always fitting the topic."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.dead_letters import DeadLetter, SourceMessage, fitted, read_headers

NOW = datetime(2026, 11, 29, tzinfo=UTC)


def letter(value: bytes, key: bytes | None = b"host-1", headers=()) -> DeadLetter:
    message = SourceMessage("events", 2, 41, key, value, tuple(headers))
    return DeadLetter(message, "decode:invalid-data", "bad bytes", attempts=1)


def size(record) -> int:
    return (
        len(record.key or b"")
        + len(record.value or b"")
        + sum(len(k) + len(v or b"") for k, v in record.headers)
    )


def test_a_letter_that_fits_is_the_original_unchanged() -> None:
    record = fitted(letter(b"x" * 100, headers=[("trace", b"t")]), limit=1_000_000, now=NOW)
    assert record.value == b"x" * 100 and record.key == b"host-1"
    headers = read_headers(record.headers)
    assert ("trace", b"t") in record.headers
    assert headers["reason"] == "decode:invalid-data" and headers["source_offset"] == "41"
    assert "value-truncated" not in headers


def test_a_letter_too_large_for_its_topic_is_cut_with_its_size_and_coordinates() -> None:
    record = fitted(letter(b"x" * 1_048_576), limit=1_000_000, now=NOW)
    headers = read_headers(record.headers)
    assert size(record) <= 1_000_000
    assert record.value == b"x" * len(record.value) and len(record.value) > 900_000
    assert headers["value-truncated"] == "true" and headers["original-size"] == "1048576"
    assert headers["source_topic"] == "events" and headers["source_partition"] == "2"
    assert headers["source_offset"] == "41" and headers["reason"] == "decode:invalid-data"


def test_huge_original_headers_and_key_are_given_up_before_our_own() -> None:
    record = fitted(
        letter(b"v", key=b"k" * 50_000, headers=[("h", b"x" * 50_000)]), limit=20_000, now=NOW
    )
    headers = read_headers(record.headers)
    assert size(record) <= 20_000
    assert headers["source_offset"] == "41" and headers["value-truncated"] == "true"


@settings(max_examples=100, deadline=None)
@given(
    value=st.binary(max_size=50_000),
    key=st.none() | st.binary(max_size=20_000),
    header=st.binary(max_size=20_000),
    limit=st.integers(16_384, 100_000),
)
def test_a_fitted_letter_never_exceeds_its_limit(value, key, header, limit) -> None:
    record = fitted(letter(value, key=key, headers=[("h", header)]), limit=limit, now=NOW)
    assert size(record) <= limit
    assert read_headers(record.headers)["source_offset"] == "41"
