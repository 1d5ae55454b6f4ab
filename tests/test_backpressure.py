"""Backpressure: memory is capped in messages and in bytes; the registry blocks alone."""

from __future__ import annotations

from streamer.backpressure import Backpressure

P0, P1 = ("events", 0), ("events", 1)


def test_the_message_cap_pauses_and_resumes_below_eighty_percent() -> None:
    bp = Backpressure(max_messages=100, max_bytes=10**9)
    assert bp.room(60, 0) == 40
    assert bp.check(99, 0) is None
    assert bp.check(100, 0) == "pause" and bp.room(100, 0) == 0
    assert bp.check(81, 0) is None  # not yet: the gap keeps it from flapping
    assert bp.check(80, 0) == "resume"
    assert bp.pauses == 1


def test_the_byte_cap_pauses_though_few_messages_are_unfinished() -> None:
    bp = Backpressure(max_messages=10_000, max_bytes=1_000_000)
    assert bp.room(10, 1_000_000) == 0  # ten 100 KiB events: no more fetching
    assert bp.check(10, 1_000_000) == "pause"
    assert bp.check(5, 900_000) is None
    assert bp.check(5, 800_000) == "resume"


def test_a_registry_block_is_per_partition_and_lifts_when_due() -> None:
    bp = Backpressure(max_messages=100, max_bytes=10**9)
    assert bp.registry_attempt(P0) == 1 and bp.registry_attempt(P0) == 2  # backoff grows
    bp.block_for_registry(P0, until=10.0)
    assert bp.blocked(P0) and not bp.blocked(P1)
    assert bp.resumable([P0, P1]) == [P1]  # the caps' resume leaves P0 paused
    assert bp.unblock_due(9.0) == []
    assert bp.unblock_due(10.0) == [P0] and not bp.blocked(P0)
    bp.registry_answered(P0)
    assert bp.registry_attempt(P0) == 1


def test_letting_a_partition_go_forgets_its_block() -> None:
    bp = Backpressure(max_messages=100, max_bytes=10**9)
    bp.block_for_registry(P0, until=10.0)
    bp.forget([P0])
    assert bp.blocked_count() == 0
