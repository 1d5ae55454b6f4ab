"""The delivery machine's conversation with the broker about offsets and notes.

A private part of the delivery machine (docs/design.md, "The delivery machine"): which
offsets to commit and with which notes (`CommitSchedule`: when; `GroupBudget`: the note),
what the broker's answers confirm, and what the notes read back say (the previous owner's
budget and offsets done at assignment; the whole group's budget every view interval). It
returns `Commit` and `ReadNotes` effects; it never talks to the broker itself.

Invariants:
- a partition is claimed (`handover.py`) by its first confirmed commit;
- one whose previous note is unread (no coordinator at assignment) is neither committed
  nor claimed until it is read: our note would overwrite what the previous owner spent;
- notes are input from other processes: one that cannot be used is logged and ignored,
  never raised into the machine;
- while nothing a note tells changes (no start, no share, no pause, no delivery queued
  or ended: `_what_notes_tell`), the notes are committed every `idle_interval` instead of
  every commit interval. Only their write time would change, and that is what others
  judge a member's freshness by (`GroupBudget.fresh`, 2 x tail): the longest gap they
  can see is `idle_interval` plus a view interval, a tail's worth below it (a failed
  commit, sent again at the next interval, still fits). Those notes are not built again
  either (`_notes`): the ones built when it last changed are committed with a new write
  time, until a job ends, an offset is fetched, or one of their starts leaves its window.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Collection, Iterable, Mapping

from streamer.budget import PartitionNote, encode
from streamer.commits import CommitSchedule
from streamer.delivery_events import Commit, Effect, ReadNotes
from streamer.group_budget import GroupBudget
from streamer.handover import HandOver
from streamer.ledger import DeliveryLedger, Partition

log = logging.getLogger(__name__)


class CommitConversation:
    def __init__(
        self,
        *,
        schedule: CommitSchedule,
        budget: GroupBudget,
        handover: HandOver,
        ledger: DeliveryLedger,
    ) -> None:
        self.schedule, self.budget, self.handover, self.ledger = schedule, budget, handover, ledger
        self.unread: set[Partition] = set()  # assigned, the previous note not read yet
        # the group's notes as last read: a partition whose note cannot be read now keeps
        # its last one (its starts still count: a failed read is not a freed window)
        self._group: dict[Partition, tuple[int, str | None]] = {}
        self._sync: tuple[float, bool] | None = None  # a sync commit's built-at, complete
        # while the notes would tell the same, commit them this often (see the docstring)
        self.interval = schedule.interval
        self.idle_interval = max(self.interval, budget.tail_seconds - budget.view_interval)
        self._told: tuple[object, ...] | None = None  # at the last complete commit
        self._view_whole = False  # the last view read every partition's note
        # notes built while the stamp held (`_notes`), reused until `_built_until`
        self._built: dict[Partition, PartitionNote] = {}
        self._built_stamp: tuple[object, ...] = ()
        self._built_until = 0.0
        self._built_offset = 0.0  # wall - monotonic when they were built

    def due(
        self,
        now: float,
        wall: float,
        *,
        force: bool = False,
        partitions: Collection[Partition] | None = None,
    ) -> list[Effect]:
        """The commit (and note reads) due now; `force` (revoke, shutdown): a synchronous
        commit of everything terminal not yet confirmed."""
        effects: list[Effect] = []
        told = self._what_notes_tell(now)
        self.schedule.interval = self.interval if told != self._told else self.idle_interval
        view = not force and self.budget.view_due(now)
        if view and self.unread:  # the previous owners' notes, read again
            effects.append(ReadNotes(sorted(self.unread)))
        watermarks = self.ledger.commit_offsets()
        for p in self.unread:
            watermarks.pop(p, None)
        if not force:  # a revoke's final note stays the last word (answered after it, a
            # periodic commit built before `LetGo` would overwrite it with a non-final one)
            for p in [p for p in watermarks if self.handover.last_start(p) == -math.inf]:
                del watermarks[p]
        offsets = self.schedule.offsets_to_send(
            watermarks,
            now,
            force=force,
            only=partitions,
            notes=lambda due: self._notes(due, now, wall, final=force, told=told),
            claims=self.handover.unclaimed(),
        )
        alone = view and self._alone()
        if view and not alone:
            effects.append(ReadNotes((), group=True))
        # only a commit of every partition's note confirms the starts made before it
        complete = self.schedule.complete
        if complete:
            self._told = told
        if offsets:
            notes = self.schedule.notes
            if force:
                self._sync = (now, complete)
            else:
                self.schedule.sending(offsets)
                self.budget.sending(now if complete else None)
            commit = {p: (o, notes.get(p, "")) for p, o in offsets.items()}
            effects.append(Commit(commit, sync=force))
        if alone:  # what a view would read: our own notes only (after the commit, as then)
            self.group_read(self._group, (), now, wall)
        return effects

    def _notes(
        self,
        offsets: Mapping[Partition, int],
        now: float,
        wall: float,
        *,
        final: bool,
        told: tuple[object, ...],
    ) -> dict[Partition, str]:
        """Each partition's note for its commit at `offsets`. While nothing it says can
        have changed since it was built (what notes tell, no job ended, no offset fetched,
        none of its starts left its window), the note built then is committed again with
        its write time new: walking every waiting delivery and every start in the window
        for each idle commit was most of what waiting cost (bench/waiting.py)."""
        if final:  # a revoke's or shutdown's: built now, and nothing is reused after it
            self._built = {}
            return self.budget.notes(offsets, now, wall, final=True)
        ledger = self.ledger
        stamp = (
            told,
            self.schedule.changes,
            tuple((p, ledger.next_offset(p), ledger.commit_offset(p)) for p in ledger.partitions),
        )
        # times in a note are by the wall clock: one that stepped (NTP, a VM resumed)
        # since the notes were built makes them tell their starts by the old one (the
        # simulator's short seeds 9375 and 9656: 40 minutes old, read by the new write time)
        stepped = abs((wall - now) - self._built_offset) > 0.001
        if stamp != self._built_stamp or now >= self._built_until or stepped:
            self._built, self._built_stamp, self._built_until = {}, stamp, math.inf
            self._built_offset = wall - now
        missing = [p for p in offsets if p not in self._built]
        if missing:
            self._built.update(self.budget.partition_notes(missing, now, wall, final=False))
            for state in self.budget.destinations:  # the first start to leave its window
                for p in missing:
                    if starts := state.spent.get(p):
                        until = starts[0] + state.limiter.window
                        self._built_until = min(self._built_until, until)
        return {
            p: encode(dataclasses.replace(self._built[p], written=wall), o)
            for p, o in offsets.items()
        }

    def next_view(self) -> float:
        """When the next view is due. Alone, none wakes the loop while it waits (a view
        would read only our own notes): it is taken with the next commit."""
        return math.inf if self._alone() and not self.unread else self.budget.next_view()

    def _alone(self) -> bool:
        """Every partition the last view read (all of them, none failed) is ours: a view
        would read only our own notes, which `observe` skips, so none is asked for. A
        partition let go (a rebalance, a member joining) makes the next view a real one."""
        return (
            self._view_whole
            and bool(self._group)
            and self._group.keys() <= set(self.ledger.partitions)
        )

    def _what_notes_tell(self, now: float) -> tuple[object, ...]:
        """A cheap summary of what changes a note (its write time aside): starts, shares,
        pauses, deliveries waiting, fetched or in flight, recent demand, partitions. Equal
        summaries: the notes would say the same (the offsets and what ended since force
        a commit on their own: `CommitSchedule.soon`, `every`)."""
        recent = now - self.budget.recent
        told: list[object] = [
            tuple(self.ledger.partitions),
            self.ledger.unfinished(),
        ]
        for state in self.budget.destinations:
            limiter, paused = state.limiter, state.limiter.paused_until
            told += (
                state.last_start,
                len(state.ready),
                limiter.announced,
                limiter.tail,
                state.key_limiter.announced,
                paused if paused > now else 0.0,
                sum(1 for starts in state.spent.values() if starts and starts[-1] > recent),
            )
        return tuple(told)

    def answered(
        self, results: Mapping[Partition, tuple[int, str | None]], *, sync: bool, now: float
    ) -> None:
        """The broker's answer, per partition; a refusal is sent again at the next commit."""
        failed = []
        for p, (offset, error) in results.items():
            ok = error is None
            owned = self.ledger.holds(p)
            self.schedule.answered(p, offset, ok=ok, owned=owned)
            if ok and owned:
                self.handover.claimed(p, now)
            if not ok:
                failed.append(f"{p[0]}[{p[1]}]@{offset} ({error})")
        if failed:
            log.warning(
                "commit of %s failed; it is sent again at the next commit", ", ".join(failed)
            )
        if sync:
            built, self._sync = self._sync, None
            if built is not None and built[1] and not failed:
                self.budget.confirmed(built[0])
        else:
            self.budget.answered(ok=not failed)

    def not_sent(self, offsets: Mapping[Partition, int], *, sync: bool) -> None:
        """Sending raised (no coordinator mid-rebalance): nothing is on its way."""
        self.schedule.not_sent(offsets)
        if not sync:
            self.budget.not_sent()

    def group_read(
        self,
        notes: Mapping[Partition, tuple[int, str | None]],
        failed: Iterable[Partition],
        now: float,
        wall: float,
    ) -> None:
        """Every partition's committed note: what the group spent, where deliveries wait.
        A partition whose note failed to read counts as its last note said."""
        failed = list(failed)
        self._view_whole = not failed
        kept = {p: self._group[p] for p in failed if p in self._group}
        self._group = {**kept, **notes}
        try:  # other members' notes are input from elsewhere: never let them stop us
            self.budget.observe(
                self._group, now, wall, total_partitions=len(notes) + len(failed), unread=kept
            )
        except Exception:
            log.exception("the group's notes could not be read; shares stay as they were")

    def previous_read(
        self,
        notes: Mapping[Partition, tuple[int, str | None]],
        failed: Iterable[Partition],
        now: float,
        wall: float,
    ) -> None:
        """The previous owners' notes: their budget becomes ours, their offsets done are
        skipped; a partition whose note failed stays unread (read again at the next view)."""
        self._built = {}  # what the previous owners did becomes part of our notes
        for p in failed:
            log.warning("could not read the note of %s[%d] (read again soon)", p[0], p[1])
        for p, (offset, metadata) in notes.items():
            if p not in self.unread:
                continue  # read already, or no longer ours
            self.unread.discard(p)
            if offset < 0:
                continue
            try:  # the previous owner's note is input from elsewhere: it cannot stop us
                self.budget.take_over(p, metadata, offset, now, wall)
            except Exception:
                log.exception("the note of %s[%d] is ignored", p[0], p[1])

    def take(self, partitions: Iterable[Partition]) -> list[Effect]:
        """Newly assigned: their previous notes are to be read before anything commits."""
        taken = list(partitions)
        self.unread.update(taken)
        self._built = {}
        return [ReadNotes(taken)]

    def let_go(self, partitions: Collection[Partition]) -> None:
        self._built = {}
        self.schedule.forget(partitions)
        self.unread.difference_update(partitions)
        self.budget.let_go(partitions)
