"""This member's part of what the consumer group shares through commit metadata.

Invariants (tests/test_group_budget.py):

1. **Whoever owns a partition next counts what was spent for it.** Every start is
   attributed to a partition (the one whose delivery took the slot). A partition's note
   (`budget.PartitionNote`, committed with its offset) lists its starts in the window and
   its destinations' 429 pauses; `take_over` adds them to this member's limiters, so a
   restart, a kill -9 or a rebalance never starts a window's budget afresh.
2. **A kill -9 hides at most `tail` starts per destination**: the limiters never make
   more than `tail` starts that no confirmed note covers (`RollingWindowLimiter.promise`),
   and a take-over from a writer that did not leave cleanly counts its tail as spent now.
3. **No member starts what the group has spent, or another member's share.** `observe`
   reads the notes of the partitions other members own (and of ours whose note is not
   taken over yet); each other member counts against each limiter's ceiling (the whole
   limit) as its starts in the window, but never less than the share its notes announce
   (a raise is announced before it is taken, and taken only `raise_after`, a note and a
   view, later): the room one member's old starts leave is taken by one member, not by
   two that each saw it free. Shares follow demand: a member whose partitions have
   waiting deliveries gets most of the limit, the others keep a floor to start with.
4. **Accepted work is skipped, not redone**: the offsets a note says were terminal above
   its committed offset are terminal at once for the next owner.

Monotonic time for decisions, wall-clock time in notes (another process reads them).
5. **Another member's clock is never trusted.** A time in a note is read relative to the
   note's own write time, anchored at when this member first saw that write time (by its
   own clock): `t - written + seen`. A note is seen after it was written, so inherited
   starts and pauses look younger than they are (they leave the window late, never early)
   whether the writer's clock runs ahead or behind, and a note that is never written again
   (a gone member's, an idle partition's) ages by the reader's clock and stops counting a
   window after it was first seen. Notes of writers that do not say when they wrote
   (`written` 0, an older version) are read by their clock, at most `SKEW` ahead.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections import deque
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from streamer.budget import PartitionNote, Spent, decode, encode, job_digest
from streamer.destinations import Destinations
from streamer.failure_policy import MAX_RETRY_AFTER as MAX_PAUSE
from streamer.ledger import DeliveryLedger, Partition
from streamer.offset_ranges import EMPTY as NO_OFFSETS
from streamer.offset_ranges import OffsetRanges

log = logging.getLogger(__name__)

SKEW = 5.0  # seconds: how far ahead of our clock another member's start times may be


@dataclass
class _Theirs:
    """What another member's notes tell of one destination."""

    starts: list[float] = field(default_factory=list)
    limit: int = 0  # its announced share of the alert source's limit
    key_limit: int = 0  # of its API key's


class GroupBudget:
    def __init__(
        self,
        destinations: Destinations,
        ledger: DeliveryLedger,
        *,
        tail_seconds: float,
        view_interval: float = 1.0,
        writer: str | None = None,
    ) -> None:
        self.destinations, self.ledger = destinations, ledger
        self.writer = writer or uuid.uuid4().hex[:12]
        # other members name this one by it (`/pending`'s writers, a stall's warning)
        log.info("this member's notes name it %s", self.writer)
        self.tail_seconds = tail_seconds  # how long a note may take to be confirmed
        self.recent = 2 * tail_seconds  # a partition that started this recently has demand
        self.view_interval = view_interval  # how often the group's notes are read
        # a raise waits until the others read our demand (a note and a view away)
        self.raise_after = tail_seconds + view_interval
        # A live member's notes are written again every commit interval, or every tail -
        # view interval while they would tell the same (commit_conversation.py): one whose
        # write time has not moved for this long by our clock (theirs may run wrong) is
        # gone (killed, or its partitions idle): its share is no longer kept for it.
        self.fresh = 2 * tail_seconds
        self._written: dict[str, tuple[float, float]] = {}  # writer: (latest, seen at)
        self._note_written: dict[Partition, tuple[str, float, float]] = {}  # writer, t, seen
        self._next_view = 0.0
        self._done: dict[Partition, OffsetRanges] = {}  # inherited offset maps
        # inherited partly done messages: offset -> digests of their jobs that ended
        self._partly: dict[Partition, Mapping[int, tuple[str, ...]]] = {}
        # writer: when its note whose tail was counted was written; a later one may hide a
        # new tail (short seed 12999: a live writer's hand-over counted it, its kill not)
        self._tails_taken: dict[str, float] = {}
        self._taken: set[Partition] = set()  # owned, the previous owner's note taken over
        # built-at times of commits on their way (None: not every partition's note)
        self._commits: deque[float | None] = deque()

    # -- what to commit -------------------------------------------------------------------

    def notes(
        self, offsets: Mapping[Partition, int], now: float, wall: float, *, final: bool
    ) -> dict[Partition, str]:
        """Each partition's note as the metadata of its commit at `offsets`."""
        built = self.partition_notes(offsets, now, wall, final=final)
        return {p: encode(built[p], o) for p, o in offsets.items()}

    def partition_notes(
        self, partitions: Collection[Partition], now: float, wall: float, *, final: bool
    ) -> dict[Partition, PartitionNote]:
        """Each partition's note as it stands now (demand walked once for all of them)."""
        waiting = self._waiting(now)
        return {
            p: self.note(p, now, wall, final=final, waiting=waiting.get(p, {})) for p in partitions
        }

    def note(
        self,
        partition: Partition,
        now: float,
        wall: float,
        *,
        final: bool,
        waiting: Mapping[str, int] | None = None,
    ) -> PartitionNote:
        # to the next millisecond up (later, never earlier): the same starts then make the
        # same note from one commit to the next, and its encoding is reused (budget.py)
        to_wall = math.ceil((wall - now) * 1000) / 1000
        if waiting is None:
            waiting = self._waiting(now).get(partition, {})
        spent = {}
        for state in self.destinations:
            starts = state.spent.get(partition)
            window = state.limiter.window
            while starts and starts[0] <= now - window:
                starts.popleft()
            paused = state.limiter.paused_until
            tail = 0 if final else state.limiter.tail or 0
            # a note that is not final tells every destination's share, spent or not
            if final and not starts and paused <= now and not waiting.get(state.name):
                continue
            # beyond the limit the window is full: the latest `limit` tell when it frees up
            latest = list(starts or ())[-state.spec.events_per_minute :]
            spent[state.name] = Spent(
                tuple(t + to_wall for t in latest),
                paused + to_wall if paused > now else 0.0,
                tail,
                waiting.get(state.name, 0),
                # a final note starts nothing more: no share to keep for its writer
                0 if final else state.limiter.announced,
                0 if final else state.key_limiter.announced,
            )
        done = self.ledger.terminal_above_watermark(partition)
        done |= self._done.get(partition, NO_OFFSETS)
        partly = dict(self._partly.get(partition, {}))  # inherited, and ours since
        for offset, keys in self.ledger.partly_done(partition).items():
            digests = [job_digest(k.destination, k.deduplication_key) for k in keys]
            partly[offset] = tuple(sorted([*partly.get(offset, ()), *digests]))
        return PartitionNote(self.writer, final, spent, done, written=wall, partly=partly)

    def _waiting(self, now: float) -> dict[Partition, dict[str, int]]:
        """Demand per partition and destination: the deliveries waiting, or 1 if one
        started recently (a hot key's next event is not queued while one is in flight)."""
        out: dict[Partition, dict[str, int]] = {}
        for state in self.destinations:
            for p, count in state.ready.per_partition().items():
                out.setdefault(p, {})[state.name] = count
            for p, starts in state.spent.items():
                if starts and starts[-1] > now - self.recent:
                    out.setdefault(p, {}).setdefault(state.name, 1)
        return out

    def sending(self, built_at: float | None) -> None:
        """A commit of notes built at `built_at` went out; None if it carried only some
        partitions' notes (it confirms no start)."""
        self._commits.append(built_at)

    def not_sent(self) -> None:
        """The commit just announced with `sending` could not be sent."""
        self._commits.pop()

    def answered(self, ok: bool) -> None:
        """The broker answered the oldest commit on its way (librdkafka answers in order)."""
        built_at = self._commits.popleft() if self._commits else None
        if ok and built_at is not None:
            self.confirmed(built_at)

    def confirmed(self, built_at: float) -> None:
        """Notes with every start up to `built_at` are on the broker."""
        for state in self.destinations:
            state.limiter.confirmed(built_at)
            state.key_limiter.confirmed(built_at)

    def share_by_ownership(self, total_partitions: int, now: float) -> None:
        """Shares by partitions owned: a cut at once, a raise announced first (others keep
        room for it) and taken `raise_after` later, as raises by demand are."""
        owned = len(self.ledger.partitions)
        total = total_partitions or max(1, owned)
        self.destinations.share(owned, total, now=now, raise_after=self.raise_after)
        self.promise_tails()

    def promise_tails(self) -> None:
        """Caps unconfirmed starts to what `tail_seconds` of each limit allows (at least 1)."""
        for state in self.destinations:
            for limiter in (state.limiter, state.key_limiter):
                rate = limiter.limit / limiter.window
                limiter.promise(math.ceil(rate * self.tail_seconds) + 1)

    # -- the rest of the group -------------------------------------------------------------

    def next_view(self) -> float:
        return self._next_view

    def view_due(self, now: float) -> bool:
        if now < self._next_view:
            return False
        self._next_view = now + self.view_interval
        return True

    def observe(
        self,
        committed: Mapping[Partition, tuple[int, str | None]],
        now: float,
        wall: float,
        *,
        total_partitions: int,
        unread: Collection[Partition] = (),
    ) -> None:
        """The group's committed notes, read again: the starts of partitions others own
        count against each limit's ceiling, and shares follow where deliveries wait.
        `unread`: partitions whose note could not be read this time (`committed` holds
        the last one read): their writers are not taken for gone while we cannot tell."""
        mine = set(self.ledger.partitions)
        limits = self._limits()
        taken = mine & self._taken  # their starts are in our limiters
        read = [(p, decode(m, o, limits)) for p, (o, m) in committed.items() if p not in taken]
        # ours, its note not taken over yet: its starts are in no limiter of ours (read as
        # ours, they counted nowhere: the simulator's short seed 1175)
        read = [(p, n) for p, n in read if p not in mine or n.writer not in ("", self.writer)]
        written: dict[str, tuple[float, float]] = {}  # writer: (latest write time, seen at)
        stepped_back, stale = set(), set()
        for p, note in read:
            # a partition's note written again, earlier by its writer's clock than the one
            # before: that clock stepped back, and what we knew of it is no longer safe
            last = self._note_written.get(p) or ("", 0.0, now)
            same = last[0] == note.writer
            if same and note.written < last[1]:
                stepped_back.add(note.writer)
            seen = last[2] if same and note.written == last[1] else now
            self._note_written[p] = (note.writer, note.written, seen)
            # not written again for `fresh` by our clock: no longer its writer's, who let it
            # go (its share stays in its notes since: the short seed 14492 kept 10 for good)
            if now - seen >= self.fresh and p not in unread:
                stale.add(p)
        for _, note in read:
            before = written.get(note.writer) or (
                None if note.writer in stepped_back else self._written.get(note.writer)
            )
            if before is None or note.written > before[0]:
                written[note.writer] = (note.written, now)
            else:
                written[note.writer] = before
        self._written = written  # writers in no note any more are forgotten
        # per other member, per destination: its starts and announced shares
        members: dict[str, dict[str, _Theirs]] = {}
        others: dict[str, int] = {}
        for p, note in read:
            shift, latest = self._reading(note, now, wall)
            for name, spent in note.spent.items():
                others[name] = others.get(name, 0) + (spent.waiting > 0)
                if note.writer == self.writer:
                    continue  # a partition we let go: its starts are in our limiters
                theirs = members.setdefault(note.writer, {}).setdefault(name, _Theirs())
                theirs.starts += [min(t + shift, latest) for t in spent.starts]
                if p not in stale:  # a live writer's share is in each note it writes
                    theirs.limit = max(theirs.limit, spent.limit)
                    theirs.key_limit = max(theirs.key_limit, spent.key_limit)
        # a note kept from an earlier read has not changed since: no news, not news of a
        # death (the simulator's short seed 703: every read failing for 6 s, a member
        # dropped its peers' shares and started 14 of 15 while they started 2)
        unseen = {note.writer for p, note in read if p in unread}
        for writer, theirs_by_name in members.items():
            if writer not in unseen and now - written[writer][1] >= self.fresh:
                for theirs in theirs_by_name.values():
                    theirs.limit = theirs.key_limit = 0
        # a partition whose note was never read (reads failed, none kept) may have demand
        # (read as none, a member new to the group took 21 of 22: the short seed 8480)
        unknown = max(0, total_partitions - len(mine | committed.keys()))
        demand = {}
        for state in self.destinations:
            waiting = set(state.ready.per_partition())
            waiting |= {p for p, s in state.spent.items() if s and s[-1] > now - self.recent}
            ours = len(waiting & mine)
            demand[state.name] = (ours, ours + others.get(state.name, 0) + unknown)
        # a raise waits for a view that read every note (long seed 1103: 3 raised unseen)
        after = math.inf if unread or unknown else self.raise_after
        self.destinations.share(len(mine), total_partitions, demand, now=now, raise_after=after)
        for state in self.destinations:
            named = [(w, t) for w, m in members.items() if (t := m.get(state.name))]
            counted, writers = [(t.starts, t.limit) for _, t in named], [w for w, _ in named]
            state.limiter.set_ceiling(state.spec.events_per_minute, counted, writers=writers)
        for limiter, limit, names in self.destinations.limiters():
            per_member = [(w, [m[n] for n in names if n in m]) for w, m in members.items()]
            per_member = [(w, ts) for w, ts in per_member if ts]
            starts = [[x for t in ts for x in t.starts] for _, ts in per_member]
            shares = [max(t.key_limit for t in ts) for _, ts in per_member]
            writers = [w for w, _ in per_member]
            limiter.set_ceiling(limit, zip(starts, shares, strict=True), writers=writers)

    # -- taking partitions over and letting them go ----------------------------------------

    def take_over(
        self, partition: Partition, metadata: str | None, committed: int, now: float, wall: float
    ) -> PartitionNote:
        """The previous owner's note for `partition`: its budget becomes ours, its offset
        map is skipped."""
        note = decode(metadata, committed, self._limits())
        self._taken.add(partition)
        shift, latest = self._reading(note, now, wall)
        known = self._written.get(note.writer)
        if note.writer != self.writer and known is not None and note.written < known[0]:
            # written earlier than a note of its writer we read before: its clock may have
            # stepped back, so the later of the two readings (as written just now). A note
            # seen written (the same write time) is read from when first seen (read as
            # written now, a dead writer's 429 pause was taken again whole at each
            # hand-over: the simulator's short seed 935)
            shift, latest = max(shift, now - note.written), max(latest, now + SKEW)
        if note.done:
            self._done[partition] = note.done
        if note.partly:
            self._partly[partition] = note.partly
        # our own note (an eager rebalance handed it back): its starts are in our limiters
        ours = note.writer == self.writer
        counted = self._tails_taken.get(note.writer)
        tail_counts = not ours and not note.final and (counted is None or note.written > counted)
        if tail_counts:
            self._tails_taken[note.writer] = note.written
        if note.overflow and not ours:  # its budget did not fit: every window counts as full
            for state in self.destinations:
                for limiter in (state.limiter, state.key_limiter):
                    limiter.inherit([now] * state.spec.events_per_minute)
        for name, spent in note.spent.items():
            try:
                state = self.destinations[name]
            except KeyError:
                continue  # a destination the configuration no longer has
            # read by the writer's write time (invariant 5): late, never early
            cut = now - state.limiter.window
            starts = [min(t + shift, latest) for t in spent.starts if t + shift > cut]
            if tail_counts:  # what the writer may have started unseen
                starts += [now] * min(spent.tail, state.spec.events_per_minute)
            starts = sorted(starts)[-state.spec.events_per_minute :]  # a full window at most
            if not ours:
                state.limiter.inherit(starts)
                state.key_limiter.inherit(starts)
            mine = state.spent.setdefault(partition, deque())
            mine.extend(starts)
            state.spent[partition] = deque(sorted(mine))
            if spent.paused_until:  # a 429's pause, never longer than any retry-after allows
                state.limiter.pause_until(min(spent.paused_until + shift, now + MAX_PAUSE))
        return note

    def _reading(self, note: PartitionNote, now: float, wall: float) -> tuple[float, float]:
        """How to read the times in `note` on our monotonic clock: `(shift, latest)`, a
        time `t` reads as `min(t + shift, latest)` (invariant 5). Ours are read exactly."""
        if note.writer == self.writer or note.written <= 0:
            return now - wall, now + SKEW
        written, seen = self._written.get(note.writer, (note.written, now))
        if note.written > written:  # newer than any note of its writer seen so far
            written, seen = note.written, now
        # nothing in a note is later than its writing (a start, rounded up, by a tick)
        return seen - written, seen + SKEW

    def _limits(self) -> dict[str, int]:
        """How many starts of each destination a note is read for (the latest: past the
        limit the window is full); destinations we do not have are not read at all."""
        return {state.name: state.spec.events_per_minute for state in self.destinations}

    def already_done(self, partition: Partition, offset: int) -> bool:
        """Terminal before the hand-over: the next owner must not deliver it again."""
        done = self._done.get(partition)
        return done is not None and offset in done

    def jobs_done(self, partition: Partition, offset: int) -> tuple[str, ...]:
        """Of a message that fans out, the digests of the jobs that ended before the
        hand-over (`budget.job_digest`): the next owner sends only its other jobs."""
        return self._partly.get(partition, {}).get(offset, ())

    def let_go(self, partitions: Collection[Partition]) -> None:
        for p in partitions:
            self._taken.discard(p)
            self._done.pop(p, None)
            self._partly.pop(p, None)
            for state in self.destinations:
                state.spent.pop(p, None)
