"""The dead-letter index's decisions, with plain values: one letter per source offset."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest

from streamer.dead_letter_index import (
    DeadLetterIndex,
    SeenLetters,
    SourceOffset,
    Verdict,
    decide,
    source_of,
)
from streamer.dead_letters import DeadLetter, SourceMessage, fitted
from tests.conftest import ManualClock

SOURCE = SourceOffset("events", 2, 41)


@pytest.mark.parametrize(
    ("seen", "caught_up", "waited", "failing_for", "verdict"),
    [
        (True, False, 0.0, None, Verdict.WRITTEN),  # seen is proof, read far or not
        (True, True, 99.0, 99.0, Verdict.WRITTEN),
        (False, True, 0.0, None, Verdict.WRITE),  # read past the question: none there
        (False, False, 0.0, None, Verdict.WAIT),  # not read that far yet
        (False, False, 29.9, 29.9, Verdict.WAIT),
        (False, False, 30.0, None, Verdict.WRITE_UNCHECKED),  # waited long enough
        (False, False, 0.0, 30.0, Verdict.WRITE_UNCHECKED),  # unreadable for long enough
    ],
)
def test_decide(seen, caught_up, waited, failing_for, verdict) -> None:
    assert (
        decide(
            seen=seen, caught_up=caught_up, waited=waited, failing_for=failing_for, patience=30.0
        )
        is verdict
    )


def test_seen_letters_keep_the_newest_within_the_limit() -> None:
    seen = SeenLetters(limit=3)
    for offset in range(5):
        seen.add(SourceOffset("events", 0, offset))
    assert len(seen) == 3
    assert SourceOffset("events", 0, 1) not in seen
    assert all(SourceOffset("events", 0, o) in seen for o in (2, 3, 4))
    seen.add(SourceOffset("events", 0, 3))  # seen again: nothing changes
    seen.add(SourceOffset("events", 0, 5))
    assert SourceOffset("events", 0, 2) not in seen and SourceOffset("events", 0, 3) in seen
    # coordinates differ in any part: different letters
    seen.add(SourceOffset("other", 0, 5))
    seen.add(SourceOffset("events", 1, 5))
    assert SourceOffset("other", 0, 5) in seen and SourceOffset("events", 1, 5) in seen
    assert SourceOffset("other", 1, 5) not in seen and SourceOffset("nowhere", 0, 5) not in seen


def test_a_letters_headers_name_its_source_offset() -> None:
    message = SourceMessage("events", 2, 41, b"k", b"v", (("streamer.source_offset", b"7"),))
    record = fitted(DeadLetter(message, "decode:empty", "empty"), limit=1_000_000)
    assert source_of(record.headers) == SOURCE  # ours, not the original's copy
    assert source_of({"streamer.source_topic": "t", "streamer.source_partition": "1"}) is None
    assert source_of([("streamer.source_offset", b"x")]) is None
    assert source_of(None) is None


@dataclass
class PlainFollower:
    caught_up_at: float | None = None
    failing: float | None = None

    def caught_up(self, since: float) -> bool:
        return self.caught_up_at is not None and self.caught_up_at >= since

    def failing_since(self) -> float | None:
        return self.failing

    def problem(self) -> str:
        return "TOPIC_AUTHORIZATION_FAILED"

    def close(self) -> None:
        pass


def index_with(follower: PlainFollower, clock: ManualClock) -> DeadLetterIndex:
    return DeadLetterIndex("dlq", lambda handle: follower, clock=clock, patience=30.0)


def test_a_letter_waits_until_the_follower_read_past_its_question(clock) -> None:
    follower = PlainFollower(caught_up_at=clock() - 1)  # read up to a look before
    index = index_with(follower, clock)
    asked = clock()
    assert index.verdict(SOURCE, asked) is Verdict.WAIT
    clock.advance(0.1)
    follower.caught_up_at = asked  # a look asked at the question, reached
    assert index.verdict(SOURCE, asked) is Verdict.WRITE
    index.add(SOURCE)  # the follower read a letter for it (or we wrote it)
    assert index.verdict(SOURCE, clock()) is Verdict.WRITTEN


def test_an_unreadable_topic_is_not_checked_after_the_patience_and_says_so_once(
    clock, caplog
) -> None:
    follower = PlainFollower(failing=clock())
    index = index_with(follower, clock)
    asked = clock()
    assert index.verdict(SOURCE, asked) is Verdict.WAIT
    clock.advance(30)
    with caplog.at_level(logging.WARNING, logger="streamer.dead_letter_index"):
        assert index.verdict(SOURCE, asked) is Verdict.WRITE_UNCHECKED
        # a later letter does not wait again while the topic stays unreadable
        assert index.verdict(SourceOffset("events", 2, 42), clock()) is Verdict.WRITE_UNCHECKED
    warnings = [r for r in caplog.records if "without checking" in r.getMessage()]
    assert len(warnings) == 1 and "TOPIC_AUTHORIZATION_FAILED" in warnings[0].getMessage()


def test_two_letters_of_one_message_for_two_destinations_are_two_letters() -> None:
    """A message that fans out to two destinations that both refuse it has two letters:
    the second is not taken for the first (it would be in no letter, committed past)."""
    seen = SeenLetters(10)
    seen.add(SourceOffset("events", 0, 7, "to-a", "a"))
    assert SourceOffset("events", 0, 7, "to-a", "a") in seen
    assert SourceOffset("events", 0, 7, "to-b", "b") not in seen
    letter = [("streamer.source_topic", b"events")]  # only part of a letter's headers
    headers = [
        ("streamer.source_topic", b"events"),
        ("streamer.source_partition", b"0"),
        ("streamer.source_offset", b"7"),
        ("streamer.route", b"to-b"),
        ("streamer.destination", b"b"),
    ]
    assert source_of(headers) == SourceOffset("events", 0, 7, "to-b", "b")
    assert source_of(letter) is None
