"""Silences that expire when they match nothing for a while (`--expire-if-unmatched-for`).

Each replica sees only the alerts of its own partitions, so no replica alone knows that a
silence matched nothing: the group says it in the silences topic. A replica whose events a
silence matched writes a small "matched at" mark (key `MARK_PREFIX` + the silence's id,
value `{"matchedAt": time}`), at most once per `MARK_EVERY` per silence, and none while a
mark of any replica less than `MARK_EVERY` old is known; every replica reads every mark
(the whole topic, streamer/silence_book.py). Any replica that has read the topic up to now
and knows no match of an active silence (its own, or a mark) since `UNMATCHED_GRACE` more
than the silence's `expire_if_unmatched_for` ago (counted from its start when it never
matched) writes its expiry (`Silence.expired_at`, the expired mark). Several replicas may
write it at once: the same expiry, harmless. A mark has its own key, so a mark written
from a stale copy can never revive an expired silence.

Invariant (tests/test_silence_expiry.py): a silence is expired by this only when no
replica's mark nor this replica's match is newer than `expire_if_unmatched_for` +
`UNMATCHED_GRACE` ago, and only by a replica that read the topic to now. The grace covers
a mark's delay (`MARK_EVERY`, a tick, the write and the read) and clocks up to ~30 s
apart (marks carry the writer's wall time); clocks further apart shorten the wait.

Pure: times are passed in; the book's thread does the I/O.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streamer.silences import Silence

__all__ = ["MARK_EVERY", "MARK_PREFIX", "UNMATCHED_GRACE", "UnmatchedExpiry", "mark_value"]

MARK_PREFIX = "matched@"  # no silence id starts with it (streamer/silences.py refuses one)
MARK_EVERY = timedelta(minutes=1)
UNMATCHED_GRACE = timedelta(minutes=2)


def mark_value(at: datetime) -> bytes:
    return json.dumps({"matchedAt": at.astimezone(UTC).isoformat()}).encode()


def read_mark(value: bytes) -> datetime:
    """The time of a mark's value; raises ValueError when it is not one."""
    data = json.loads(value)
    moment = datetime.fromisoformat(data["matchedAt"]) if isinstance(data, dict) else None
    if moment is None or moment.tzinfo is None:
        raise ValueError("a mark is {matchedAt: an RFC 3339 time with a zone}")
    return moment


class UnmatchedExpiry:
    """What one replica knows of when silences last matched, and what to write of it."""

    def __init__(self, every: timedelta = MARK_EVERY, grace: timedelta = UNMATCHED_GRACE) -> None:
        self.every, self.grace = every, grace
        self._marked: dict[str, datetime] = {}  # the latest mark read or written, per id
        self._matched: dict[str, datetime] = {}  # this replica's latest match, per id

    def read_mark(self, silence_id: str, at: datetime | None) -> None:
        """A mark read from the topic (None: its tombstone)."""
        if at is None:
            self._marked.pop(silence_id, None)
        elif at > self._marked.get(silence_id, at - self.every):
            self._marked[silence_id] = at

    def matched(self, silence_id: str, at: datetime) -> None:
        if at > self._matched.get(silence_id, at - self.every):
            self._matched[silence_id] = at

    def forget(self, silence_id: str) -> None:
        self._matched.pop(silence_id, None)
        self._marked.pop(silence_id, None)

    def marks_due(self) -> list[tuple[str, datetime]]:
        """The marks to write now: a match of this replica newer by `every` than the
        latest mark known (they count as written)."""
        due = []
        for silence_id, at in self._matched.items():
            last = self._marked.get(silence_id)
            if last is None or at - last >= self.every:
                due.append((silence_id, at))
                self._marked[silence_id] = at
        return due

    def expiries_due(self, silences: Iterable[Silence], now: datetime) -> list[Silence]:
        """The silences to expire now (`expired_at(now)`); ask only with the topic read to
        `now`, so every other replica's mark up to then is known."""
        out = []
        for s in silences:
            limit = s.expire_if_unmatched_for
            if limit is None or s.state(now) != "active":
                continue
            seen = [s.starts_at, *self._when(s.id)]
            if now - max(seen) >= limit + self.grace:
                out.append(s.expired_at(now))
        return out

    def _when(self, silence_id: str) -> list[datetime]:
        found = (self._marked.get(silence_id), self._matched.get(silence_id))
        return [at for at in found if at is not None]
