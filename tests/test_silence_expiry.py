"""Silences that expire when they match nothing for a while (streamer/silence_expiry.py),
group-wide: the marks a replica writes, when a replica may write the expiry, and the book
(streamer/silence_book.py) that reads marks and writes both, driven through a plain
follower whose records the test hands over as the topic would."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from streamer.silence_book import SilenceBook
from streamer.silence_expiry import (
    MARK_EVERY,
    MARK_PREFIX,
    UNMATCHED_GRACE,
    UnmatchedExpiry,
    mark_value,
)
from streamer.silence_index import labels_of
from streamer.silence_writes import forgettable
from streamer.silences import EXPIRED_KEPT, Silence, SilenceError, parse_matchers
from tests.test_silence_book import PlainFollower, Record

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
FOR = timedelta(minutes=10)
DISK = labels_of({"alert": {"labels": {"alertname": "DiskFull"}}})


def unmatched_silence(**changes) -> Silence:
    matchers, _ = parse_matchers(['alertname="DiskFull"'])
    return Silence.new(
        matchers, duration=timedelta(hours=4), at=T0, expire_if_unmatched_for=FOR, **changes
    )


def test_a_silence_that_never_matched_expires_its_duration_and_the_grace_after_its_start():
    s = unmatched_silence()
    expiry = UnmatchedExpiry()
    assert expiry.expiries_due([s], T0 + FOR + UNMATCHED_GRACE - timedelta(seconds=1)) == []
    (ended,) = expiry.expiries_due([s], T0 + FOR + UNMATCHED_GRACE)
    assert ended.id == s.id and ended.expired
    plain = Silence.new(s.matchers, duration=timedelta(hours=4), at=T0)
    assert expiry.expiries_due([plain], T0 + timedelta(hours=3)) == []  # without the option


def test_any_replica_s_mark_or_own_match_keeps_it_and_marks_are_written_once_a_minute():
    s = unmatched_silence()
    here, there = UnmatchedExpiry(), UnmatchedExpiry()
    t = T0 + timedelta(minutes=8)
    here.matched(s.id, t)
    assert here.marks_due() == [(s.id, t)]
    here.matched(s.id, t + MARK_EVERY - timedelta(seconds=1))
    assert here.marks_due() == []  # at most once a minute
    there.read_mark(s.id, t)  # the other replica reads the mark written here
    later = t + FOR + UNMATCHED_GRACE - timedelta(seconds=1)
    assert there.expiries_due([s], later) == [] and here.expiries_due([s], later) == []
    assert [x.id for x in there.expiries_due([s], t + FOR + UNMATCHED_GRACE)] == [s.id]
    # a replica does not mark what another marked less than a minute before
    there.matched(s.id, t + timedelta(seconds=30))
    assert there.marks_due() == []
    there.read_mark(s.id, None)  # the mark's tombstone
    assert there.marks_due() == [(s.id, t + timedelta(seconds=30))]


def test_the_option_travels_in_the_wire_form_and_is_checked() -> None:
    s = unmatched_silence()
    wire = json.loads(json.dumps(s.to_json()))
    assert wire["expireIfUnmatchedForSeconds"] == 600
    assert Silence.from_json(wire) == s
    for bad in (0, -1, "10m", True):
        with pytest.raises(SilenceError, match="expireIfUnmatchedForSeconds"):
            Silence.from_json({**wire, "expireIfUnmatchedForSeconds": bad})
    with pytest.raises(SilenceError, match="may not start with"):
        Silence.from_json({**wire, "id": MARK_PREFIX + "x"})


def replica(written: list) -> tuple[SilenceBook, PlainFollower]:
    followers: list[PlainFollower] = []

    def follower(handle):
        followers.append(PlainFollower(handle))
        followers[0].read_up_to = True
        return followers[0]

    book = SilenceBook("streamer.silences", follower, write=written.extend, tend_seconds=3600)
    return book, followers[0]


def hand(followers: list[PlainFollower], records: list) -> None:
    for key, value in records:
        for f in followers:
            f.handle(Record(key, value))


def test_two_replicas_expire_it_only_when_neither_saw_it_match() -> None:
    s = unmatched_silence()
    written: list = []
    (one, f1), (two, f2) = replica(written), replica(written)
    hand([f1, f2], [(s.id, json.dumps(s.to_json()).encode())])
    # replica one routes a matching alert at minute 8; two sees none of its partitions
    assert [x.id for x in one.matching(DISK, T0 + timedelta(minutes=8))] == [s.id]
    one.tend(T0 + timedelta(minutes=8, seconds=15))
    assert [k for k, _ in written] == [MARK_PREFIX + s.id]
    hand([f1, f2], written)
    written.clear()
    two.tend(T0 + FOR + UNMATCHED_GRACE + timedelta(minutes=1))  # 13 min: one's mark holds
    assert written == []
    two.tend(T0 + timedelta(minutes=8) + FOR + UNMATCHED_GRACE)
    ((key, value),) = written
    assert key == s.id and json.loads(value)["expired"] is True
    hand([f1, f2], written)
    assert one.matching(DISK, T0 + timedelta(minutes=21)) == []


def test_a_replica_that_cannot_read_the_topic_to_now_writes_no_expiry() -> None:
    s = unmatched_silence()
    written: list = []
    book, follower = replica(written)
    hand([follower], [(s.id, json.dumps(s.to_json()).encode())])
    follower.read_up_to = False  # another replica's marks may be unread
    book.read_to_now = lambda timeout, stop=None: False  # type: ignore[method-assign]
    book.tend(T0 + timedelta(hours=1))
    assert written == []


def test_a_bad_mark_is_skipped_with_a_warning(caplog) -> None:
    written: list = []
    book, follower = replica(written)
    hand([follower], [(MARK_PREFIX + "x", b"{"), (MARK_PREFIX + "y", mark_value(T0))])
    assert "is not a mark, skipped" in caplog.text
    assert book.silences(T0) == []  # a mark is no silence


def test_the_marks_of_a_forgotten_silence_are_tombstoned_with_it() -> None:
    s = unmatched_silence().expired_at(T0 + timedelta(minutes=1))
    later = T0 + timedelta(minutes=1) + EXPIRED_KEPT
    assert forgettable([s], [], later) == [s.id, MARK_PREFIX + s.id]


@pytest.mark.integration
def test_with_the_real_topic_a_silence_matched_on_one_replica_only_lives_and_then_expires(
    infrastructure, tmp_path, capsys
) -> None:
    """Two replicas' books on the real topic; the silence comes from `silence add
    --expire-if-unmatched-for 3s`. While one replica sees it match (the other never
    does), its marks keep it; once nothing matches, a replica expires it for the group."""
    import time
    import uuid

    import yaml

    from streamer.cli import build_parser
    from streamer.silence_book import ensure_topic, writer
    from streamer.topic_follower import TopicFollower

    topic = f"silences-{uuid.uuid4().hex[:8]}"
    settings = {"bootstrap.servers": infrastructure.bootstrap_servers, "group.id": "t"}
    ensure_topic(settings, topic)
    schema = Path(__file__).parent.parent / "schemas" / "monitoring_event.v2.avsc"
    config = tmp_path / "streamer.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "kafka": {
                    "bootstrap_servers": infrastructure.bootstrap_servers,
                    "silence_topic": topic,
                },
                "reader_schema": str(schema),
                "topics": [{"name": "events", "format": "json"}],
                "destinations": {"a": {"alert_source_config_id": "A", "token": {"env": "X"}}},
                "routes": [{"name": "all", "destination": "a"}],
            }
        )
    )

    def book() -> SilenceBook:
        return SilenceBook(
            topic,
            lambda handle: TopicFollower(settings, topic, handle, window_seconds=None).start(),
            write=writer(settings, topic),
            expiry=UnmatchedExpiry(every=timedelta(seconds=1), grace=timedelta(seconds=2)),
            tend_seconds=0.5,
        )

    one, two = book(), book()
    try:
        args = build_parser().parse_args(
            ["silence", "add", "--config", str(config), "--matcher", 'alertname="DiskFull"',
             "--duration", "1h", "--comment", "x", "--expire-if-unmatched-for", "3s"]
        )  # fmt: skip
        assert args.func(args) == 0, capsys.readouterr().err
        silence_id = capsys.readouterr().out.strip()
        assert one.read_to_now(30) and two.read_to_now(30)
        until = time.monotonic() + 8  # longer than 3 s + the grace: the marks keep it
        while time.monotonic() < until:
            assert [s.id for s in one.matching(DISK, datetime.now(UTC))] == [silence_id]
            time.sleep(0.2)
        assert two.active(datetime.now(UTC)) != []
        stopped = time.monotonic()
        while two.active(datetime.now(UTC)) or one.active(datetime.now(UTC)):
            assert time.monotonic() - stopped < 20, "not expired within 20 s"
            time.sleep(0.1)
        took = time.monotonic() - stopped
        args = build_parser().parse_args(
            ["silence", "list", "--config", str(config), "--all", "-o", "json"]
        )
        assert args.func(args) == 0
        (listed,) = json.loads(capsys.readouterr().out)
        assert listed["status"] == {"state": "expired"} and listed["expired"] is True
        print(f"expired {took:.1f} s after the last match (3 s, grace 2 s, a tick 0.5 s)")
    finally:
        one.close()
        two.close()
