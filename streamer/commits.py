"""When to commit, and which offsets the broker has really taken.

Invariant: an offset counts as committed only once the broker confirmed it. A commit can
fail (mid-rebalance the group's generation changes under it, or there is no coordinator):
an offset that was refused, or whose sending failed, is sent again at the next commit,
even if nothing new became terminal meanwhile. Which offsets may be committed at all is
the ledger's business (its watermarks never pass a message that is not terminal); this
core only decides when to send them and what is still unconfirmed.

A commit carries a note (its metadata: the budget spent and the offsets already terminal
above it, see `budget.py`); a partition whose offset stands still is committed again when
its note changed, so the next owner always learns what was spent.

Asynchronous commits are the steady state (every `interval` seconds, or after `every`
terminal messages, or `SOON` after a delivery or a dead letter: the offset map is then on
the broker before a kill could send it or write it twice); a
partition not yet claimed (`handover.py`) is committed as soon as its offset is known,
and again every `CLAIM_RETRY` seconds until the broker confirms it; a forced commit
(revoke, shutdown) sends everything not yet confirmed, even what an asynchronous commit
already has on its way.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

from streamer.ledger import Partition

CLAIM_RETRY = 0.5  # seconds between commits of a partition not yet claimed
SOON = 0.1  # seconds: `soon()` commits no more often than this


class CommitSchedule:
    def __init__(self, *, interval: float, every: int, now: float) -> None:
        self.interval, self.every = interval, every
        self.confirmed: dict[Partition, int] = {}  # the broker said yes
        # the last confirmed offset of every partition ever owned (summaries, the demo)
        self.last_confirmed: dict[Partition, int] = {}
        self._sending: dict[Partition, int] = {}  # sent asynchronously, no answer yet
        self.notes: dict[Partition, str] = {}  # the notes of the offsets last returned
        self.complete = False  # ... and they were every partition's (not a claim, not `only`)
        self._confirmed_notes: dict[Partition, str] = {}
        self._sending_notes: dict[Partition, str] = {}
        self._last = now
        self._terminal = 0
        self._soon = False
        self._claim_sent: dict[Partition, float] = {}
        # grows with every job that ended (`terminal`, `soon`): equal, no offset map changed
        self.changes = 0

    def terminal(self, count: int = 1) -> None:
        """`count` more messages reached a terminal state."""
        self._terminal += count
        self.changes += 1

    def next_due(self) -> float:
        """When a commit of every partition is due next, by time (`every` aside)."""
        return self._last + (SOON if self._soon else self.interval)

    def soon(self) -> None:
        """Commit within `SOON` (a delivery or a dead letter became terminal)."""
        self._soon = True
        self.changes += 1

    def offsets_to_send(
        self,
        watermarks: Mapping[Partition, int],
        now: float,
        *,
        force: bool = False,
        only: Collection[Partition] | None = None,
        notes: Callable[[Mapping[Partition, int]], Mapping[Partition, str]] | None = None,
        claims: Collection[Partition] = (),
    ) -> dict[Partition, int]:
        """What to commit now: nothing unless due (or forced, or a claim to make); never
        what is confirmed with the same note. `notes` gives the note of each candidate
        (in `self.notes`); `claims` are the partitions waiting for their first confirmed
        commit."""
        since = now - self._last
        soon = self._soon and since >= SOON
        due = since >= self.interval or self._terminal >= self.every or soon
        candidates = {p: o for p, o in watermarks.items() if only is None or p in only}
        self.complete = only is None and (force or due)
        if self.complete:  # every partition's turn: the schedule starts again
            self._last, self._terminal, self._soon = now, 0, False
        if not (force or due):  # only the claims to make
            candidates = {
                p: o
                for p, o in candidates.items()
                if p in claims
                and p not in self._sending
                and (p not in self._claim_sent or now - self._claim_sent[p] >= CLAIM_RETRY)
            }
            if not candidates:
                return {}
        for p in candidates:
            if p in claims:
                self._claim_sent[p] = now
        written = dict(notes(candidates)) if notes else {}
        self.notes = {}
        out = {}
        for p, offset in candidates.items():
            note = written.get(p, "")
            confirmed = (self.confirmed.get(p), self._confirmed_notes.get(p, ""))
            sending = (self._sending.get(p), self._sending_notes.get(p, ""))
            if (offset, note) != confirmed and (force or (offset, note) != sending):
                out[p] = offset
                self.notes[p] = note
        return out

    def sending(self, offsets: Mapping[Partition, int]) -> None:
        """These went out asynchronously; the answer comes through `answered`."""
        self._sending.update(offsets)
        self._sending_notes.update({p: self.notes.get(p, "") for p in offsets})

    def not_sent(self, offsets: Mapping[Partition, int]) -> None:
        """Sending raised: nothing is on its way, the next commit sends them again."""
        for p in offsets:
            self._sending.pop(p, None)
            self._sending_notes.pop(p, None)

    def answered(self, partition: Partition, offset: int, *, ok: bool, owned: bool) -> None:
        """The broker's answer for one partition. A refusal leaves it unconfirmed, so it is
        sent again; an answer for a partition no longer ours is not remembered."""
        note = self.notes.get(partition, "")
        if self._sending.get(partition) == offset:
            del self._sending[partition]
            note = self._sending_notes.pop(partition, note)
        if ok and owned:
            self.confirmed[partition] = offset
            self.last_confirmed[partition] = offset
            self._confirmed_notes[partition] = note

    def forget(self, partitions: Collection[Partition]) -> None:
        """Revoked or lost: the next owner commits from here on."""
        for p in partitions:
            self._claim_sent.pop(p, None)
            for known in (self.confirmed, self._sending):
                known.pop(p, None)
            for notes in (self._confirmed_notes, self._sending_notes, self.notes):
                notes.pop(p, None)
