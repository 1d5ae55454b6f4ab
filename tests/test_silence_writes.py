"""What the silence CLI's writers may write over what the topic holds
(streamer/silence_writes.py): the bound on silences in force, an import that never revives
nor rolls back a silence, and tombstones for the long-expired ones."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from streamer.silence_writes import (
    MAX_IN_FORCE,
    forgettable,
    newer_than_topic,
    refuse_past_bound,
)
from streamer.silences import EXPIRED_KEPT, Silence, SilenceError, parse_matchers

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
MATCHERS, _ = parse_matchers(['alertname="DiskFull"'])


def silence(silence_id: str, *, updated: datetime = T0, hours: float = 2) -> Silence:
    s = Silence.new(MATCHERS, duration=timedelta(hours=hours), at=updated, starts_at=T0)
    return replace(s, id=silence_id)


def test_add_is_refused_past_the_bound_and_says_what_to_do() -> None:
    full = [silence(f"s{i}") for i in range(MAX_IN_FORCE)]
    refuse_past_bound("t", full[:-1], [silence("new")], T0)  # the last one fits
    with pytest.raises(SilenceError, match=r"t holds 10,000 silences active or pending.*"
                       r"at most 10,000.*nothing written.*silence expire"):  # fmt: skip
        refuse_past_bound("t", full, [silence("new")], T0)
    # expired ones do not count; neither does a silence written again, nor one being expired
    ended = [s.expired_at(T0) for s in full[:1]]
    refuse_past_bound("t", ended + full[1:], [silence("new")], T0)
    refuse_past_bound("t", full, [full[0]], T0)
    refuse_past_bound("t", full, [full[0].expired_at(T0)], T0)


def test_an_import_never_revives_an_expired_silence_nor_rolls_back_a_newer_one() -> None:
    # issue 24: re-importing an old amtool file once brought back a silence expired since
    old = silence("a", updated=T0)
    expired = old.expired_at(T0 + timedelta(minutes=5))
    newer = replace(silence("b", updated=T0 + timedelta(minutes=9)), comment="extended")
    now = T0 + timedelta(minutes=10)
    written, kept = newer_than_topic(
        [old, silence("b", updated=T0), silence("c")], [expired, newer], now
    )
    assert [s.id for s in written] == ["c"]
    assert kept[0].startswith("kept a as the topic has it: expired there")
    assert "does not revive it" in kept[0]
    assert kept[1].startswith("kept b as the topic has it: updated there at 2026-12-07 12:09")


def test_an_import_writes_a_later_or_same_version_and_one_without_updated_at() -> None:
    there = silence("a", updated=T0)
    later = replace(silence("a", updated=T0 + timedelta(minutes=1)), comment="later")
    unknown = replace(silence("a"), updated_at=None)
    for imported in (later, there, unknown):
        assert newer_than_topic([imported], [there], T0) == ([imported], [])


def test_silences_expired_past_the_retention_are_tombstoned_unless_written() -> None:
    ended = silence("old").expired_at(T0)
    recent = silence("recent").expired_at(T0 + timedelta(hours=1))
    later = T0 + EXPIRED_KEPT
    assert forgettable([ended, recent, silence("live")], [], later) == ["old"]
    assert forgettable([ended], [ended], later) == []
