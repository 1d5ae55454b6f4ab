"""Partition notes: what the next owner of a partition learns from its commit metadata."""

from __future__ import annotations

import base64
import json
import random
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer import budget
from streamer.budget import EMPTY, MAX_BYTES, RESOLUTION, PartitionNote, Spent, decode, encode
from streamer.offset_ranges import OffsetRanges

NOW = 1_790_000_000.0

spent = st.builds(
    Spent,
    starts=st.lists(st.floats(NOW - 60, NOW), max_size=300).map(tuple),
    paused_until=st.one_of(st.just(0.0), st.floats(NOW, NOW + 120)),
    tail=st.integers(0, 50),
    waiting=st.integers(0, 10_000),
    limit=st.integers(0, 10_000),
    key_limit=st.integers(0, 10_000),
)
notes = st.builds(
    PartitionNote,
    writer=st.text("0123456789abcdef", max_size=12),
    final=st.booleans(),
    spent=st.dictionaries(st.text(min_size=1, max_size=20), spent, max_size=5),
    done=st.frozensets(st.integers(100, 20_000), max_size=2_000).map(OffsetRanges.of_offsets),
)


@settings(max_examples=200, deadline=None)
@given(notes)
def test_a_note_comes_back_as_written_never_earlier_and_always_fits(note: PartitionNote) -> None:
    text = encode(note, committed=100)
    assert len(text) <= MAX_BYTES
    back = decode(text, committed=100)
    assert (back.writer, back.final) == (note.writer, note.final)
    assert back.spent.keys() == note.spent.keys()
    for name, spent_ in note.spent.items():
        got = back.spent[name]
        assert len(got.starts) == len(spent_.starts)
        # rounded up, never down: an inherited start never leaves the window early
        for real, stored in zip(sorted(spent_.starts), got.starts, strict=True):
            assert real <= stored + 1e-6 <= real + RESOLUTION + 1e-6
        assert got.paused_until >= spent_.paused_until - 1e-6
        assert (got.tail, got.waiting) == (spent_.tail, spent_.waiting)
        assert (got.limit, got.key_limit) == (spent_.limit, spent_.key_limit)
    # the offset map survives whole, or is dropped whole (re-sent, never skipped wrongly)
    assert back.done in (note.done, OffsetRanges())


def test_offsets_below_the_committed_one_are_not_kept() -> None:
    text = encode(PartitionNote(done=OffsetRanges.of_offsets({5, 9, 10, 11, 20})), committed=10)
    assert set(decode(text, committed=10).done) == {10, 11, 20}


def test_an_offset_map_too_large_to_fit_keeps_its_nearest_runs_and_the_budget() -> None:
    scattered = frozenset(random.Random(1).sample(range(1_000_000), 5_000))
    note = PartitionNote(
        spent={"a": Spent((NOW,), 0.0, 3, 1)}, done=OffsetRanges.of_offsets(scattered)
    )
    text = encode(note, committed=0)
    back = decode(text, committed=0)
    assert len(text) <= MAX_BYTES and 0 < back.done.count() < len(scattered)
    assert set(back.done) == set(sorted(scattered)[: back.done.count()])  # the nearest ones
    assert back.spent["a"].tail == 3


def test_anything_else_reads_as_an_empty_note() -> None:
    for metadata in (None, "", "hello", "s1:not base64!", "s1:aGVsbG8="):
        assert decode(metadata, committed=0) == EMPTY


# -- hostile notes: another process wrote them, so they can be anything ---------------------


HOSTILE = {
    "a list where a map belongs": {"w": "", "f": 1, "s": [], "d": []},
    "a string where a map belongs": {"w": "", "f": 1, "s": "x", "d": []},
    "an infinite tail": {"w": "", "f": 0, "s": {"a": [[], [], 0, 1e999, 0]}, "d": []},
    "a huge pause": {"w": "", "f": 1, "s": {"a": [[], [], 10**400, 0, 0]}, "d": []},
    "an offset map past any offset": {"w": "", "f": 1, "s": {}, "d": [0, 2**50]},
    "an offset map of too many runs": {"w": "", "f": 1, "s": {}, "d": [1, 1] * 100_001},
    "an infinite start": {"w": "", "f": 1, "s": {"a": [[float("inf")], [1], 0, 0, 0]}, "d": []},
    "a negative delta": {"w": "", "f": 1, "s": {"a": [[5, -9], [1, 1], 0, 0, 0]}, "d": []},
    "a billion starts in one tick": {"w": "", "f": 1, "s": {"a": [[5], [10**9], 0, 0, 0]}, "d": []},
    "too many starts together": {
        "w": "",
        "f": 1,
        "s": {name: [[5], [60_000], 0, 0, 0] for name in ("a", "b")},
        "d": [],
    },
    "counts that do not match the ticks": {
        "w": "",
        "f": 1,
        "s": {"a": [[5, 1], [1], 0, 0, 0]},
        "d": [],
    },
}


@pytest.mark.parametrize("body", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_note_with_numbers_past_sense_reads_as_no_note(body) -> None:
    text = budget._pack(body) if "inf" not in repr(body) else _pack_loose(body)
    assert budget.decode(text, committed=10) == budget.EMPTY


def test_an_unlimited_destinations_huge_tail_is_capped_not_the_whole_note_refused() -> None:
    """A destination allowing a million a minute promises a tail of ~100k starts: its note
    (and every other destination's budget in it) must still reach the next owner."""
    note = PartitionNote(
        "w1",
        final=False,
        spent={"a": Spent((NOW,), 0.0, 7, 2), "b": Spent((), 0.0, 183_008, 0)},
    )
    back = decode(encode(note, committed=4), committed=4)
    assert back.spent["a"] == Spent((NOW,), 0.0, 7, 2)
    assert back.spent["b"].tail == budget.MAX_COUNT
    written = {"w": "", "f": 0, "s": {"a": [[], [], 0, 10**9, 0]}, "d": []}  # by anyone
    assert decode(budget._pack(written), committed=0).spent["a"].tail == budget.MAX_COUNT


def test_a_burst_is_stored_as_one_tick_and_more_starts_than_a_reader_takes_are_cut() -> None:
    burst = PartitionNote(spent={"a": Spent((NOW,) * 5_000, 0.0, 0, 0)})
    text = encode(burst, committed=0)
    assert len(text) < 200 and decode(text, committed=0).spent["a"].starts == (NOW,) * 5_000
    # a limit of millions a minute: each destination keeps its latest starts, and it reads
    older, newer = (NOW,) * 80_000, (NOW + 1,) * 80_000
    huge = PartitionNote(spent={n: Spent(older + newer, 0.0, 0, 0) for n in ("a", "b")})
    back = decode(encode(huge, committed=0), committed=0)
    assert back.spent["a"].starts == (NOW + 1,) * (budget.MAX_STARTS // 2)


def test_a_compression_bomb_or_deep_nesting_reads_as_no_note() -> None:
    nested = budget.PREFIX + base64.b64encode(zlib.compress(b"[" * 200_000)).decode()
    bomb = budget.PREFIX + base64.b64encode(zlib.compress(b" " * 50_000_000)).decode()
    assert budget.decode(nested, committed=0) == budget.EMPTY
    assert budget.decode(bomb, committed=0) == budget.EMPTY


def _pack_loose(body) -> str:
    raw = json.dumps(body).encode()  # Infinity is not JSON, but a writer could send it
    return budget.PREFIX + base64.b64encode(zlib.compress(raw)).decode()


def test_a_note_in_the_previous_format_is_still_read() -> None:
    """s1 wrote one number per start: an upgrade's first hand-over must not forget them."""
    old = {"w": "w0", "f": 0, "s": {"a": [[budget._up(NOW), 0, 4], 0, 3, 1]}, "d": [1, 2]}
    text = "s1:" + budget._pack(old)[len(budget.PREFIX) :]
    note = decode(text, committed=10)
    assert note.spent["a"] == Spent((NOW, NOW, NOW + 1.0), 0.0, 3, 1)
    assert note.writer == "w0" and not note.final and set(note.done) == {11, 12}


def test_shares_are_announced_where_an_earlier_reader_does_not_look() -> None:
    """A rolling upgrade: replicas of the previous version read each entry as five numbers
    and ignore other keys; notes without shares read as shares not told (0)."""
    note = PartitionNote("w0", False, {"a": Spent((NOW,), 0.0, 3, 1, 40, 90)}, written=NOW)
    body = json.loads(zlib.decompress(base64.b64decode(encode(note, 0)[3:])))
    assert len(body["s"]["a"]) == 5 and body["a"] == {"a": [40, 90]}
    back = decode(encode(note, 0), 0)
    assert (back.spent["a"].limit, back.spent["a"].key_limit, back.written) == (40, 90, NOW)
    del body["a"], body["t"]
    earlier = decode(budget._pack(body), 0)
    assert earlier.spent["a"] == Spent((NOW,), 0.0, 3, 1) and earlier.written == 0.0


def test_a_bad_share_or_a_later_field_loses_nothing_else_of_the_note() -> None:
    body = {"w": "w0", "f": 0, "s": {"a": [[budget._up(NOW)], [2], 0, 3, 1, 99]}, "d": [0, 1]}
    for shares in ({"a": [2**60, "x"]}, {"a": [1]}, {"zz": [1, 2, 3]}):
        note = decode(budget._pack(body | {"a": shares}), committed=10)
        assert note.spent["a"] == Spent((NOW, NOW), 0.0, 3, 1) and set(note.done) == {10}


def test_a_reader_reads_only_its_destinations_and_their_latest_starts() -> None:
    """A hostile (or buggy) 91-byte note claiming 100,000 starts in one tick costs a reader
    no more than its own limit."""
    note = PartitionNote(
        spent={"a": Spent((NOW,) * 99_000 + (NOW + 1,), 0.0, 0, 0), "z": Spent((NOW,))}
    )
    text = encode(note, committed=0)
    assert len(text) < 200
    back = decode(text, committed=0, keep={"a": 3})
    assert back.spent["a"].starts == (NOW, NOW, NOW + 1)
    assert "z" not in back.spent


def test_encoding_never_fails_however_many_destinations_are_busy() -> None:
    """A commit must not fail: past 4 KiB each destination's starts move to its latest
    tick (counted later, never earlier); past that the note says it overflowed."""
    rng = random.Random(7)
    busy = {
        f"dest-{i}": Spent(tuple(sorted(NOW + rng.randrange(240) / 4 for _ in range(120))))
        for i in range(60)
    }
    back = decode(encode(PartitionNote("w", False, busy), committed=0), committed=0)
    assert len(back.spent) == 60 and not back.overflow
    assert back.spent["dest-7"].starts == (max(busy["dest-7"].starts),) * 120
    many = {f"dest-{i}": Spent((NOW,), 0.0, 5, 3) for i in range(2_000)}
    text = encode(PartitionNote("w", False, many), committed=0)
    assert len(text) <= MAX_BYTES and decode(text, committed=0).overflow


def test_shares_are_the_first_thing_a_note_too_large_leaves_out() -> None:
    """They only keep room for their writer: its starts and pauses matter more."""
    many = {f"dest-{i}": Spent((NOW + i,), 0.0, 3, 1, 40 + i, 900 + i) for i in range(300)}
    back = decode(encode(PartitionNote("w", False, many, written=NOW), 0), 0)
    assert not back.overflow and back.spent["dest-299"].starts == (NOW + 299,)
    assert back.spent["dest-0"].limit == 0


def test_a_billion_terminal_offsets_in_one_run_are_read_as_one_run() -> None:
    """A topic whose rules drop nearly everything, behind one waiting key: the map is a
    few numbers whatever the number of offsets, and is read, not refused."""
    done = OffsetRanges(((11, 10**9),))
    note = decode(encode(PartitionNote(done=done), committed=10), committed=10)
    assert note.done == done and 10 not in note.done and 10**9 - 1 in note.done


def test_partly_done_messages_come_back_and_garbage_reads_as_none_told() -> None:
    digest = budget.job_digest("a", "host-1//disk")
    note = PartitionNote(partly={12: (digest, digest), 9: (digest,)})
    back = decode(encode(note, committed=10), committed=10)
    assert back.partly == {12: (digest, digest)}  # once per job; below the committed: dropped
    for hostile in ([1, 2], {"x": [digest]}, {"1": "abc"}, {"1": [digest] * 200_000}):
        body = {"w": "w0", "f": 1, "s": {}, "d": [], "j": hostile}
        assert decode(budget._pack(body), committed=10).partly == {}


def test_a_partly_done_entry_with_a_non_ascii_digit_loses_only_itself() -> None:
    body = {"w": "w0", "f": 1, "s": {}, "d": [0, 1], "j": {"²": ["abcdefabcdef"]}}
    note = decode(budget._pack(body), committed=10)
    assert note.partly == {} and set(note.done) == {10}  # the rest of the note is read
