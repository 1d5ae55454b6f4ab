"""What a partition's next owner must know, carried in the metadata of its commits.

Invariants (property-tested in tests/test_budget.py):

1. **Spent budget is handed over, never under-counted.** A partition's note lists, per
   destination, the wall-clock start times of the requests started for that partition in
   the current window and the 429 pause in force. Times are stored rounded *up* (to
   `RESOLUTION`), so an inherited start never leaves the window earlier than the real one.
   A note that is not final (a periodic commit, not the one at revoke or shutdown) also
   carries `tail`: how many more starts its writer may make before its next note is
   confirmed. The writer keeps that promise (`RollingWindowLimiter.confirmed`), so after a
   kill -9 the next owner counts the tail as spent at take-over and never under-counts.
2. **Accepted work is not redone.** `done` lists the offsets above the committed offset
   that were already terminal; the next owner skips them (no POST, no second dead letter).
3. **It always fits.** The encoded text is at most `max_bytes` (the broker's
   `offset.metadata.max.bytes`, 4096 by default). When the offset map does not fit, only
   its runs nearest the committed offset are kept (the others are re-sent, as without a
   map: never skipped unknowingly);
   then each destination's starts are stored at its latest tick (counted later than they
   were, never earlier); and if even that does not fit (a partition feeding a hundred
   busy destinations), the note says `overflow` and its next owner counts every limit as
   spent for a window. Encoding never fails: a commit must not.
4. **Garbage reads as nothing, and numbers are bounded.** Notes come from other processes
   and could be anything: one that cannot be read (another version, another tool's
   metadata, a compression bomb, nesting past any sense) decodes to an empty note, and the
   next owner starts as it did before; one with numbers past sense (more starts than any
   limit, an offset map of more than `MAX_DONE` runs, times that are not finite) is
   refused as a whole the same way. A tail or waiting count is capped at `MAX_COUNT`,
   never refused: a destination with a huge limit (an unlimited one) has a huge tail, and
   refusing its note would lose the other destinations' budget with it. Decoding costs at
   most `MAX_TEXT` decompressed bytes.

Format: `s2:` + base64(zlib(JSON)); starts as distinct ticks with counts, offsets relative
to the committed offset, as runs. At most `MAX_STARTS` starts in a note (a writer keeps
the latest of each destination; only limits past ~100,000 a minute ever have more).
Pure: plain values in, plain values out.
"""

from __future__ import annotations

import base64
import collections
import functools
import hashlib
import itertools
import json
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from streamer.ledger import OrderingKey
from streamer.offset_ranges import EMPTY as NO_OFFSETS
from streamer.offset_ranges import OffsetRanges

PREFIX = "s2:"
OLD_PREFIX = "s1:"  # the previous format (one number per start): read, never written
RESOLUTION = 0.25  # seconds: the grain of stored start times
MAX_BYTES = 4096  # the broker's default offset.metadata.max.bytes
MAX_TEXT = 256 * 1024  # decompressed JSON a note may hold (a 4 KiB note holds far less)
MAX_STARTS = 100_000  # starts in one note, all destinations together
MAX_COUNT = 100_000  # a tail or a waiting count
MAX_DONE = 100_000  # runs in the offset map (a run may hold any number of offsets)
MAX_TICK = 2**45  # ~280 years of RESOLUTION ticks since the epoch


@dataclass(frozen=True)
class Spent:
    """One destination's budget spent for one partition (wall-clock seconds)."""

    starts: tuple[float, ...] = ()
    paused_until: float = 0.0
    tail: int = 0  # starts its writer may still make before its next note is confirmed
    waiting: int = 0  # the partition's deliveries waiting for this destination (demand)
    # the writer's announced shares (`RollingWindowLimiter.announced`) of the alert
    # source's limit and of its API key's; 0: not told (a final note, an older writer);
    # stored apart from the entry, where an earlier version's reader does not look
    limit: int = 0
    key_limit: int = 0


@dataclass(frozen=True)
class PartitionNote:
    writer: str = ""  # the incarnation that wrote it (a take-over adds its tail once)
    final: bool = True  # written at revoke/shutdown: nothing was started after it
    spent: Mapping[str, Spent] = field(default_factory=dict)
    done: OffsetRanges = NO_OFFSETS  # terminal offsets above the committed offset
    # the budget did not fit in the metadata: every destination counts as full for a window
    overflow: bool = False
    written: float = 0.0  # wall clock (0: not told); a live writer's notes are recent
    # messages above the committed offset that fan out and are partly terminal: offset ->
    # digests (`job_digest`) of their jobs that ended, once per job (two jobs of one
    # message may share a key: two routes to one destination); the next owner sends the rest
    partly: Mapping[int, tuple[str, ...]] = field(default_factory=dict)


EMPTY = PartitionNote()
DIGEST_CHARS = 12  # a job's digest: 48 bits of its key's hash (collisions: ~never)


def job_digest(destination: str, deduplication_key: str) -> str:
    """A job's name in a note: its ordering key, hashed (keys are long and may be many)."""
    text = f"{destination}\0{deduplication_key}".encode()
    return hashlib.blake2b(text, digest_size=DIGEST_CHARS // 2).hexdigest()


def digest(key: OrderingKey) -> str:
    return job_digest(key.destination, key.deduplication_key)


W = TypeVar("W", bound=tuple[OrderingKey | None, Any])  # a work (`delivery_events.Work`)


def not_done(works: Sequence[W], done: Sequence[str]) -> list[W]:
    """`works` without the ones `done` names, each digest standing for one job: of two
    works of one key (two routes to one destination), one ended is one skipped."""
    left = collections.Counter(done)
    kept = []
    for work in works:
        key = work[0]
        if key is not None and left[d := digest(key)] > 0:
            left[d] -= 1
        else:
            kept.append(work)
    return kept


def _up(t: float) -> int:
    return math.ceil(t / RESOLUTION - 1e-9)


def _runs(done: OffsetRanges, base: int) -> list[int]:
    """[start, length, start, length, ...], starts relative to the previous run's end."""
    out: list[int] = []
    previous_end = base
    for start, end in done.from_(base).ranges:
        out += [start - previous_end, end - start]
        previous_end = end
    return out


def _from_runs(runs: list[int], base: int) -> OffsetRanges:
    ranges = []
    at = base
    for gap, length in zip(runs[::2], runs[1::2], strict=True):
        if gap < 0 or length < 1:
            raise ValueError("bad run")
        at += gap
        ranges.append((at, at + length))
        at += length
    return OffsetRanges.of(ranges)


CACHED_STARTS = 256  # a destination's starts up to this many: its encoding is reused


def _spent_json(spent: Spent, most: int, *, coarse: bool = False) -> list[Any]:
    """`_encode_spent`, reused while a partition's starts stay the same (a waiting group
    writes the same notes every commit interval); bounded in entries and in their size."""
    if len(spent.starts) <= CACHED_STARTS:
        return _cached_spent_json(spent, most, coarse)
    return _encode_spent(spent, most, coarse=coarse)


@functools.lru_cache(maxsize=512)
def _cached_spent_json(spent: Spent, most: int, coarse: bool) -> list[Any]:
    return _encode_spent(spent, most, coarse=coarse)


def _encode_spent(spent: Spent, most: int, *, coarse: bool = False) -> list[Any]:
    """[tick deltas, counts, pause, tail, waiting]: each distinct tick once with its count
    (a burst of a thousand starts in one tick is two numbers); the latest `most` starts.
    Coarse: all of them at the latest tick (they leave the window late, never early)."""
    latest = sorted(spent.starts)[-most:] if most > 0 else []
    if coarse and latest:
        latest = [latest[-1]] * len(latest)
    ticks = collections.Counter(_up(t) for t in latest)
    distinct = sorted(ticks)
    # first tick, then deltas: small numbers compress well
    deltas = distinct[:1] + [b - a for a, b in itertools.pairwise(distinct)]
    tail, waiting = min(spent.tail, MAX_COUNT), min(spent.waiting, MAX_COUNT)
    return [deltas, [ticks[t] for t in distinct], _up(spent.paused_until), tail, waiting]


def encode(note: PartitionNote, committed: int, max_bytes: int = MAX_BYTES) -> str:
    """The note as commit metadata for `committed` (the offset it is committed with)."""
    # more starts than a reader takes (limits of ~100,000 a minute): the latest of each
    most = MAX_STARTS
    if sum(len(s.starts) for s in note.spent.values()) > MAX_STARTS:
        most = MAX_STARTS // len(note.spent)
    body: dict[str, Any] = {
        "w": note.writer,
        "f": int(note.final),
        "s": {name: _spent_json(s, most) for name, s in sorted(note.spent.items())},
        "d": _runs(note.done, committed),
        # Keys a reader of an earlier version ignores (it reads the rest as before): when
        # it was written, and its writer's announced shares.
        "t": _up(note.written),
        "a": {
            name: [min(s.limit, MAX_COUNT), min(s.key_limit, MAX_COUNT)]
            for name, s in sorted(note.spent.items())
            if s.limit or s.key_limit
        },
        # messages that fan out and are partly done (later readers' key; earlier ignore it)
        "j": {
            str(offset - committed): sorted(digests)
            for offset, digests in sorted(note.partly.items())
            if offset >= committed and digests
        },
    }
    text = _pack(body)
    if len(text) > max_bytes and body["d"]:
        # The offset map does not fit: keep its runs nearest the committed offset (the
        # next owner reaches those first); re-sending the others is the safe loss.
        runs, fit, over = body["d"], 0, len(body["d"]) // 2 + 1
        while over - fit > 1:  # the most runs that fit: at least 0, fewer than `over`
            middle = (fit + over) // 2
            body["d"] = runs[: 2 * middle]
            if len(_pack(body)) <= max_bytes:
                fit = middle
            else:
                over = middle
        body["d"] = runs[: 2 * fit]
        text = _pack(body)
    if len(text) > max_bytes and body["j"]:  # then the partly done (re-sent whole, as before)
        body["j"] = {}
        text = _pack(body)
    if len(text) > max_bytes and body["a"]:  # many destinations: their shares go first
        body["a"] = {}  # (readers count the writer by its starts: the race it guards is rare)
        text = _pack(body)
    if len(text) > max_bytes:  # many busy destinations: each one's starts at its latest tick
        body["s"] = {n: _spent_json(s, most, coarse=True) for n, s in sorted(note.spent.items())}
        text = _pack(body)
    if len(text) > max_bytes:  # still too many: the next owner counts every limit as spent
        text = _pack({"w": note.writer, "f": int(note.final), "s": {}, "d": [], "x": 1})
        # (no shares: an overflowed note's writer is counted by what its notes can show)
    return text


def _pack(body: dict[str, Any]) -> str:
    raw = json.dumps(body, separators=(",", ":")).encode()
    return PREFIX + base64.b64encode(zlib.compress(raw, 9)).decode()


def decode(
    text: str | None, committed: int, keep: Mapping[str, int] | None = None
) -> PartitionNote:
    """The note committed with offset `committed`; EMPTY if there is none, or it is
    unreadable or out of bounds (see invariant 4). With `keep`, only the destinations it
    names are read, each for its latest `keep[name]` starts (a reader's limits: the rest
    cannot matter to it), so reading costs what the reader's limits allow, whatever the
    note says."""
    if not text or text[:3] not in (PREFIX, OLD_PREFIX) or len(text) > 4 * MAX_TEXT:
        return EMPTY
    try:
        inflate = zlib.decompressobj()
        raw = inflate.decompress(base64.b64decode(text[3:], validate=True), MAX_TEXT)
        if inflate.unconsumed_tail:
            return EMPTY  # more than any note holds: a bomb, not a note
        return _note(json.loads(raw), committed, keep, old=text.startswith(OLD_PREFIX))
    except Exception:  # garbage of any kind (RecursionError included) is no note at all
        return EMPTY


def _count(value: Any, limit: int) -> int:
    if value.__class__ is not int or not 0 <= value <= limit:
        raise ValueError("a count out of bounds")
    return int(value)


def _shares(value: Any) -> tuple[int, int]:
    """An announced [share, key share]; anything else is not told (0, 0): shares only
    ever keep room for their writer, so a bad pair loses nothing the note hands over."""
    if not isinstance(value, list) or len(value) < 2:
        return 0, 0
    try:
        return min(_count(value[0], MAX_TICK), MAX_COUNT), min(
            _count(value[1], MAX_TICK), MAX_COUNT
        )
    except ValueError:
        return 0, 0


def _note(body: Any, committed: int, keep: Mapping[str, int] | None, *, old: bool) -> PartitionNote:
    if not isinstance(body, dict) or not isinstance(body["s"], dict):
        raise ValueError("not a note")
    spent, starts = {}, 0
    shares = body.get("a", {})  # not told: s1, or s2 before shares were announced
    if not isinstance(shares, dict):
        raise ValueError("shares are not a map")
    for name, entry in body["s"].items():
        if old:  # s1: one delta per start
            deltas, paused, tail, waiting = entry
            counts = [1] * len(deltas) if isinstance(deltas, list) else None
        else:  # fields a later version may add are not read
            deltas, counts, paused, tail, waiting, *_ = entry
        if not isinstance(deltas, list) or not isinstance(counts, list):
            raise ValueError("starts are not lists")
        runs: list[tuple[int, int]] = []
        tick = 0
        for d, count in zip(deltas, counts, strict=True):
            tick += _count(d, MAX_TICK)
            starts += _count(count, MAX_STARTS)
            if starts > MAX_STARTS or tick > MAX_TICK:
                raise ValueError("more starts than any limit allows")
            runs.append((tick, count))
        if keep is not None and str(name) not in keep:
            continue  # a destination the reader does not have
        most = MAX_STARTS if keep is None else keep[str(name)]
        times: list[float] = []
        for tick, count in reversed(runs):  # the latest `most`
            take = min(count, most - len(times))
            if take <= 0:
                break
            times += (tick * RESOLUTION,) * take
        spent[str(name)] = Spent(
            tuple(reversed(times)),
            _count(paused, MAX_TICK) * RESOLUTION,
            min(_count(tail, MAX_TICK), MAX_COUNT),  # a huge limit's tail: counted, capped
            min(_count(waiting, MAX_TICK), MAX_COUNT),
            *_shares(shares.get(str(name))),
        )
    done_runs = body["d"]
    if not isinstance(done_runs, list) or len(done_runs) > 2 * MAX_DONE:
        raise ValueError("an offset map out of bounds")
    done_runs = [_count(x, MAX_TICK) for x in done_runs]
    return PartitionNote(
        partly=_partly(body.get("j", {}), committed),
        writer=str(body["w"])[:64],
        final=bool(body["f"]),
        written=_count(body.get("t", 0), MAX_TICK) * RESOLUTION,
        spent=spent,
        done=_from_runs(done_runs, committed),
        overflow=body.get("x") == 1,
    )


def _partly(value: Any, committed: int) -> dict[int, tuple[str, ...]]:
    """The partly done messages; anything malformed reads as none told (the next owner then
    sends such a message whole, as before this was told)."""
    if not isinstance(value, dict) or len(value) > MAX_DONE:
        return {}
    partly: dict[int, tuple[str, ...]] = {}
    for relative, digests in value.items():
        if not isinstance(digests, list) or len(digests) > MAX_COUNT:
            return {}
        digits = isinstance(relative, str) and relative.isascii() and relative.isdigit()
        if not digits or len(relative) > 15:
            return {}
        kept = [d for d in digests if isinstance(d, str) and len(d) == DIGEST_CHARS]
        partly[committed + int(relative)] = tuple(sorted(kept))
    return partly
