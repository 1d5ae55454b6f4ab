"""The delivery machine's side of held targets (streamer/held_targets.py): releases become
jobs, and an inhibited delivery with nothing newer behind it becomes a held target.

A private part of the delivery machine (docs/design.md, "The delivery machine").

Invariants:
- **A release never overtakes a newer state of its key.** It becomes a job of its key
  (`DeliveryLedger.add_held`) behind whatever of the key waits, and what is fetched later
  waits behind it. It is made only for a partition this assignment owns, and only once
  this member has read past its source message (past the previous owner's committed
  offset, or what it fetched itself): a message read again after a hand-over routes its
  key again and says its state itself, so an older message read again is never sent
  after a release of a newer one.
- **One release of a key at a time.** A release of a key already being released here is
  ignored until that one ends (a shell asks level-triggered: again and again).
- **It moves no watermark** (ledger invariant 5) and is fenced like any job: a revoke
  drops it, and the next owner releases the record from the topic again.
- **A release kept quiet at its turn stays held**; one accepted or dead-lettered asks for
  its record's tombstone (`HeldSent`). A delivery inhibited at its turn is held
  (`HoldTarget`) only when no newer job of its key waits behind it (a later offset of its
  partition, or another partition): a newer one says the key's state; an older one (a
  resolve it stood for, revived) does not.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from streamer.dead_letters import SourceMessage
from streamer.delivery_events import Effect, HeldSent, HoldTarget, ReleaseHeld
from streamer.dispatch import Delivery
from streamer.ledger import DeliveryLedger, Job, OrderingKey, Partition

__all__ = ["HeldReleases"]


class HeldReleases:
    def __init__(self, ledger: DeliveryLedger) -> None:
        self._ledger = ledger
        self._releasing: dict[OrderingKey, Job] = {}
        self._read_from: dict[Partition, int] = {}  # the previous owner's committed offset

    def noted(self, notes: Mapping[Partition, tuple[int, str | None]]) -> None:
        """The previous owners' committed offsets (read at assignment)."""
        for p, (offset, _) in notes.items():
            if self._ledger.holds(p) and offset >= 0:
                self._read_from[p] = offset

    def release(self, event: ReleaseHeld, destinations: Collection[str]) -> list[Job]:
        """The jobs made for `event`'s targets that are active now."""
        active = []
        for target in event.targets:
            p, key = target.source, target.key
            if key in self._releasing or target.destination not in destinations:
                continue
            if not self._ledger.holds(p) or target.offset >= self._read_past(p):
                continue
            if p in self._read_from:  # an idle partition is claimed all the same
                self._ledger.read_from(p, self._read_from[p])
            delivery = Delivery(
                SourceMessage(target.topic, target.partition, target.offset, None, None, ()),
                target.route,
                target.destination,
                dict(target.body),
                event_time=target.event_time,
                labels=target.labels,
                alert_labels=target.alert_labels,
            )
            job, now_active = self._ledger.add_held(p, target.offset, key, delivery)
            self._releasing[key] = job
            if now_active:
                active.append(job)
        return active

    def _read_past(self, p: Partition) -> int:
        fetched = self._ledger.next_offset(p)
        return max(self._read_from.get(p, -1), -1 if fetched is None else fetched)

    def ended(self, job: Job, outcome: str) -> list[Effect]:
        """`job` ended with `outcome` (its key's next job, if any, is active already)."""
        if job.held:
            self.forget(job)
            if outcome in ("delivered", "dead-lettered") and job.key is not None:
                return [HeldSent(job.key, job.partition, job.offset)]
            return []  # kept quiet at its turn: it stays held
        key = job.key  # inhibited with nothing newer of its key behind it: its latest state
        if (
            outcome != "inhibited"
            or key is None
            or any(
                j.partition != job.partition or j.offset > job.offset  # (not a revived resolve)
                for j in self._ledger.queue_of(key)
            )
        ):
            return []
        return [HoldTarget(key, job.work)] if self._ledger.holds(job.partition) else []

    def forget(self, job: Job) -> None:
        """`job` ended or was fenced off."""
        if job.key is not None and self._releasing.get(job.key) is job:
            del self._releasing[job.key]

    def let_go(self, partitions: Collection[Partition]) -> None:
        for key, job in list(self._releasing.items()):
            if job.partition in partitions:
                del self._releasing[key]
        for p in partitions:
            self._read_from.pop(p, None)

    def __len__(self) -> int:
        return len(self._releasing)
