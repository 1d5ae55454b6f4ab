"""Red team of the shared topics (issue 24): records another writer (or an older version)
may have left on the silences and firing topics. None may crash the follower, raise out of
its handler, mute every alert, inhibit forever, or make the book unusable; a silence that
ends near year 9999 (a "forever" import) must not break listing, writing or start-up."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from streamer.cli.silence import duration, table
from streamer.silence_index import Silences
from streamer.silences import Silence, SilenceError, parse_matchers
from tests.test_firing_state import RULES, WARNING, ZONE_DOWN
from tests.test_firing_state import Message as FiringRecord
from tests.test_firing_state import state as firing_state
from tests.test_silence_book import Record, book

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def _silence(silence_id: str, **fields: Any) -> bytes:
    record = {
        "id": silence_id,
        "matchers": [{"name": "team", "value": "db"}],
        "startsAt": "2026-01-01T00:00:00Z",
        "endsAt": "2027-01-01T00:00:00Z",
        **fields,
    }
    return json.dumps(record).encode()


HOSTILE_SILENCES = {
    "nested": b"[" * 100_000 + b"]" * 100_000,
    "nested-matchers": ('{"id":"n","matchers":' + "[" * 50_000 + "]" * 50_000 + "}").encode(),
    "not-utf8": b"\xff\xfe",
    "huge-int": b"1" * 5000,
    "empty": b"",
    "no-matchers": _silence("no-matchers", matchers=[]),
    "match-all": _silence("match-all", matchers=[{"name": "team", "value": ".*", "isRegex": True}]),
    "not-equal": _silence("not-equal", matchers=[{"name": "team", "value": "x", "isEqual": False}]),
    "past-9999-in-utc": _silence("past-9999-in-utc", endsAt="9999-12-31T23:00:00-05:00"),
    "before-year-1-in-utc": _silence("before-year-1-in-utc", startsAt="0001-01-01T00:00:00+05:00"),
    "nan-id": b'{"id": NaN}',
    "key-is-not-id": _silence("another-id"),
    "id-with-a-line-break": _silence("id-with-a-line-break\nERROR forged log line"),
    "id-with-a-terminal-escape": _silence("id-with-a-terminal-escape\x1b]0;owned\x07"),
    "id-too-long": _silence("x" * 10_000),
}


@pytest.mark.parametrize("key", sorted(HOSTILE_SILENCES))
def test_a_record_that_is_no_valid_silence_is_skipped_without_raising(key: str) -> None:
    silences, follower = book()
    value = HOSTILE_SILENCES[key]
    if key.startswith("id-"):  # keyed by its (bad) id, as a writer would
        key = json.loads(value)["id"]
    follower.handle(Record(key, value))  # never raises
    labels = {"alert": {"labels": {"team": "db"}}}
    assert silences.matching(labels, NOW) == []
    assert silences.matching({"alert": {"labels": {}}}, NOW) == []
    assert silences.silences(NOW) == []


def test_a_silence_ending_near_year_9999_mutes_and_is_listed_without_overflow() -> None:
    silences, follower = book()
    follower.handle(Record("forever", _silence("forever", endsAt="9999-12-31T23:00:00Z")))
    assert [s.id for s in silences.silences(NOW)] == ["forever"]  # forget_old did not raise
    assert [s.id for s in silences.matching({"alert": {"labels": {"team": "db"}}}, NOW)] == [
        "forever"
    ]
    silences.follower.read_up_to = False  # type: ignore[attr-defined]
    assert silences.wait_read(0.0) is False  # the warning counts the silences read
    book_of = Silences(silences.silences(NOW))
    assert book_of.forget_old(NOW) == []


def test_a_silence_new_past_year_9999_is_refused_by_name() -> None:
    matchers, _ = parse_matchers(['team="db"'])
    with pytest.raises(SilenceError, match="duration"):
        Silence.new(matchers, duration=timedelta(days=3_000_000), at=NOW)


@pytest.mark.parametrize("text", ["99999999999999y", "9999999999999999999999w"])
def test_a_duration_too_long_is_an_argument_error_not_a_traceback(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="too long"):
        duration(text)


HOSTILE_FIRING = {
    "nested": b"[" * 100_000 + b"]" * 100_000,
    "until-inf": json.dumps({"labels": ZONE_DOWN, "at": 0, "until": "inf"}).encode(),
    "until-infinity": b'{"labels": {"alertname": "ZoneDown", "zone": "eu-1"}, "at": 0, '
    b'"until": Infinity}',
    "until-nan": b'{"labels": {"alertname": "ZoneDown", "zone": "eu-1"}, "at": 0, "until": NaN}',
    "labels-list": b'{"labels": [], "at": 0, "until": 1}',
    "not-an-object": b"[1, 2]",
    "not-utf8": b"\xff",
}


@pytest.mark.parametrize("key", sorted(HOSTILE_FIRING))
def test_a_firing_record_that_is_no_valid_source_inhibits_nothing(key: str) -> None:
    firing, _ = firing_state()
    firing._read(FiringRecord(key.encode(), HOSTILE_FIRING[key]))  # never raises
    assert firing.inhibition(RULES, WARNING) is None
    assert firing.firing(RULES) == []


def test_the_same_board_is_inhibited_by_a_valid_record() -> None:  # the control of the above
    firing, _ = firing_state()
    valid = json.dumps({"labels": ZONE_DOWN, "at": 0, "until": 1e12}).encode()
    firing._read(FiringRecord(b"zone", valid))
    assert firing.inhibition(RULES, WARNING) is not None


class _Unwritable:
    """A producer whose records are never acknowledged (the firing topic's leader is gone):
    each flush waits its whole timeout."""

    def __init__(self) -> None:
        self.waited: list[float] = []
        self.queued = 0

    def produce(self, topic: str, **_: Any) -> None:
        self.queued += 1

    def flush(self, timeout: float) -> int:
        self.waited.append(timeout)
        return self.queued


def test_a_commit_does_not_wait_again_for_records_an_earlier_commit_gave_up_on() -> None:
    producer = _Unwritable()
    firing, _ = firing_state(producer)  # type: ignore[arg-type]
    firing.observe({"alert": {"status": "FIRING", "labels": ZONE_DOWN}}, RULES)
    for _ in range(4):  # four commits while the topic cannot be written
        firing.before_commit()
    assert producer.waited == [5.0]  # the poll thread blocked once, not at every commit
    firing.observe({"alert": {"status": "RESOLVED", "labels": ZONE_DOWN}}, RULES)
    firing.before_commit()  # a record produced since: waited for (bounded) once more
    firing.before_commit()
    assert producer.waited == [5.0, 5.0]


def test_silence_list_shows_an_author_and_comment_from_the_topic_with_controls_escaped() -> None:
    matchers, _ = parse_matchers(['team="db"'])
    silence = Silence.new(
        matchers,
        duration=timedelta(hours=1),
        at=NOW,
        created_by="ops\x1b[2J",
        comment="maintenance\rERROR forged\x1b]0;owned\x07",
    )
    shown = table([silence], NOW)
    assert "\x1b" not in shown and "\r" not in shown and "\x07" not in shown
    assert "ops\\x1b[2J" in shown and "maintenance\\rERROR forged" in shown


@pytest.mark.parametrize(
    "content", [b"[" * 100_000 + b"]" * 100_000, b"\xff\xfe[]"], ids=["nested", "not-utf8"]
)
def test_silence_import_of_a_file_that_is_no_json_is_an_error_not_a_traceback(
    content: bytes, tmp_path: Any, capsys: Any
) -> None:
    from streamer.cli import build_parser

    path = tmp_path / "silences.json"
    path.write_bytes(content)
    args = build_parser().parse_args(
        ["silence", "import", "--config", "examples/streamer.yaml", str(path)]
    )
    assert args.func(args) == 1  # refused before the topic is touched
    assert "not amtool's JSON" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["resolve_timeout_seconds", "startup_read_seconds"])
def test_an_infinite_inhibition_setting_is_refused_at_load(name: str) -> None:
    # .inf: a start-up that waits forever for an unreadable topic (no longer fail open), or
    # firing records that say `Infinity` (refused by every reader: the source event itself
    # was dead-lettered on its writer)
    import pydantic
    import yaml

    from streamer.config.model import InhibitionSettings

    with pytest.raises(pydantic.ValidationError, match="finite"):
        InhibitionSettings(**yaml.safe_load(f"{name}: .inf"))
