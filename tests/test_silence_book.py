"""The silences book: what it reads from the topic, and fail open when it cannot read it.

The follower here is a plain one the test drives (the real `TopicFollower` has its own
tests, tests/test_topic_follower.py); the process tests (tests/test_silence_processes.py)
use the real topic."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

from streamer.silence_book import SilenceBook
from streamer.silence_index import labels_of
from streamer.silences import EXPIRED_KEPT, Silence, parse_matchers

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


class Record:
    def __init__(self, key: str, value: bytes | None) -> None:
        self._key, self._value = key.encode(), value

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return 7


class PlainFollower:
    def __init__(self, handle) -> None:
        self.handle = handle
        self.read_up_to = False
        self.failing: float | None = None
        self.closed = False

    def caught_up(self, since: float) -> bool:
        return self.read_up_to

    def failing_since(self) -> float | None:
        return self.failing

    def problem(self) -> str:
        return "no broker answers"

    def close(self) -> None:
        self.closed = True


def book() -> tuple[SilenceBook, PlainFollower]:
    followers: list[PlainFollower] = []

    def follower(handle):
        followers.append(PlainFollower(handle))
        return followers[0]

    return SilenceBook("streamer.silences", follower), followers[0]


def disk_silence(hours: float = 2) -> Silence:
    matchers, _ = parse_matchers(['alertname="DiskFull"'])
    return Silence.new(matchers, duration=timedelta(hours=hours), at=T0)


def write(follower: PlainFollower, silence: Silence) -> None:
    follower.handle(Record(silence.id, json.dumps(silence.to_json()).encode()))


DISK = labels_of({"alert": {"labels": {"alertname": "DiskFull"}}})


def test_a_silence_read_from_the_topic_mutes_what_it_matches_until_it_ends() -> None:
    b, f = book()
    s = disk_silence()
    write(f, s)
    assert b.matching(DISK, T0) == [s]
    assert b.matching(DISK, T0 + timedelta(hours=2)) == []


def test_the_latest_version_wins_and_a_tombstone_forgets() -> None:
    b, f = book()
    s = disk_silence()
    write(f, s)
    write(f, s.expired_at(T0 + timedelta(minutes=1)))
    assert b.matching(DISK, T0 + timedelta(minutes=2)) == []
    assert [x.id for x in b.silences(T0)] == [s.id]  # expired, still listed
    f.handle(Record(s.id, None))
    assert b.silences(T0) == []


def test_long_expired_silences_are_no_longer_listed() -> None:
    b, f = book()
    write(f, disk_silence(hours=1))
    assert len(b.silences(T0 + timedelta(hours=1) + EXPIRED_KEPT - timedelta(seconds=1))) == 1
    assert b.silences(T0 + timedelta(hours=1) + EXPIRED_KEPT) == []


def test_a_record_that_is_not_a_silence_is_skipped_not_raised(caplog) -> None:
    b, f = book()
    f.handle(Record("x", b"{not json"))
    f.handle(Record("y", json.dumps({"id": "y", "matchers": []}).encode()))
    assert b.silences(T0) == []
    assert "is not a silence" in caplog.text


def test_start_up_waits_until_the_topic_is_read() -> None:
    b, f = book()
    f.read_up_to = True
    assert b.wait_read(timeout=5)


def test_fail_open_an_unreadable_topic_at_start_up_delays_routing_a_bounded_time(
    caplog,
) -> None:
    b, f = book()
    f.failing = 0.0
    assert not b.wait_read(timeout=0.2)  # the replica goes on: alerts are delivered
    assert "may be delivered" in caplog.text and "no broker answers" in caplog.text
    assert b.matching(DISK, T0) == []


def test_a_start_up_stopped_while_it_waits_does_not_say_the_topic_was_slow(caplog) -> None:
    """A replica stopped during its start-up wait (a SIGTERM, the demo's end) is not a
    topic that could not be read within the bound (the warning said "not all read within
    10 s", 0.1 s after the start)."""
    b, _ = book()
    stop = threading.Event()
    stop.set()
    assert not b.wait_read(timeout=10, stop=stop)
    assert "not all read" not in caplog.text


def test_fail_open_silences_read_keep_applying_while_the_topic_is_unreadable() -> None:
    b, f = book()
    s = disk_silence()
    write(f, s)
    f.failing = 1.0  # the follower cannot read any more
    assert not b.readable()
    assert b.matching(DISK, T0 + timedelta(hours=1)) == [s]  # until it ends
    assert b.matching(DISK, T0 + timedelta(hours=2)) == []
