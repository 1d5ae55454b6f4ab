"""The delivery machine's side of held targets (streamer/held_targets.py): releases become
jobs, and an inhibited delivery with nothing newer behind it becomes a held target.

A private part of the delivery machine (docs/design.md, "The delivery machine").

Invariants:
- **A release never overtakes a newer state of its key.** It becomes a job of its key
  (`DeliveryLedger.add_held`) behind whatever of the key waits, and what is fetched later
  waits behind it. It is made only for a partition this assignment owns, and only once
  this member has read past its source message (past the previous owner's committed
  offset, or what it fetched itself) and up to the partition's high watermark as the
  broker said after this take (`ReleaseHeld.high`, held_record.TakeHighs): a message read
  again after a hand-over, or waiting in the backlog, routes its key first and says its state itself
  (settling the record), so an older state is never released after a newer one was sent.
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

import logging
from collections.abc import Callable, Collection, Iterable, Mapping

from streamer.dead_letters import SourceMessage
from streamer.delivery_events import Effect, HeldSent, HoldTarget, ReleaseHeld
from streamer.dispatch import Delivery
from streamer.ledger import DeliveryLedger, Job, OrderingKey, Partition

log = logging.getLogger(__name__)

__all__ = ["HeldReleases", "Quiet", "Stale"]

Quiet = Callable[[Delivery, float], str | None]  # at a delivery's turn: an outcome, or None
Stale = Callable[[OrderingKey, Partition, int], bool]  # a release's record settled since


class HeldReleases:
    def __init__(self, ledger: DeliveryLedger) -> None:
        self._ledger = ledger
        self.configured: Collection[str] = ()  # the destinations configured now
        self._releasing: dict[OrderingKey, Job] = {}
        self._read_from: dict[Partition, int] = {}  # the previous owner's committed offset
        # per key asked about: its partition's high watermark when first asked (fetched up
        # to it before its release: a newer state behind it, read again or in the backlog,
        # is routed first and settles it)
        self._high: dict[OrderingKey, int] = {}
        self._posted: dict[int, Job] = {}  # releases in flight (a drain waits for them)
        self.waiting = False  # a target was held back for its partition's fetch: ask again

    def noted(self, notes: Mapping[Partition, tuple[int, str | None]]) -> None:
        """The previous owners' committed offsets (read at assignment)."""
        for p, (offset, _) in notes.items():
            if self._ledger.holds(p) and offset >= 0:
                self._read_from[p] = offset
        self._high.clear()  # (a take: its gates are asked again, with the take's watermarks)

    def release(self, event: ReleaseHeld, effects: list[Effect]) -> list[Job]:
        """The jobs made for `event`'s targets that are active now. A target of a
        destination no longer configured is dropped (its tombstone asked: `HeldSent`)."""
        active = []
        asked = {t.key for t in event.targets}
        self._high = {k: h for k, h in self._high.items() if k in asked}
        self.waiting = False
        for target in event.targets:
            p, key = target.source, target.key
            if target.destination not in self.configured and self._ledger.holds(p):
                log.warning(
                    "a held target of destination %s, no longer configured, is dropped",
                    target.destination,
                    extra={
                        "destination": target.destination,
                        "deduplication_key": key.deduplication_key,
                    },
                )
                effects.append(HeldSent(key, p, target.offset))
                continue
            if key in self._releasing:
                continue
            if not self._ledger.holds(p) or target.offset >= self._read_past(p):
                continue
            if event.high is not None and not self._fetched_to_high(key, p, event.high):
                self.waiting = True
                continue
            self._high.pop(key, None)
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

    def _fetched_to_high(
        self, key: OrderingKey, p: Partition, high: Mapping[Partition, int]
    ) -> bool:
        if key not in self._high:
            if high.get(p, -1) < 0:
                return False  # not known yet (no fetch answered since the take)
            self._high[key] = high[p]
        return self._read_past(p) >= self._high[key]

    def posted(self, jobs: Iterable[Job]) -> None:
        self._posted.update((id(job), job) for job in jobs if job.held)

    def answered(self, job: Job) -> None:
        self._posted.pop(id(job), None)

    def in_flight(self, partitions: Collection[Partition]) -> bool:
        """A release of `partitions` is posted and not answered yet."""
        return any(job.partition in partitions for job in self._posted.values())

    def at_turn(self, quiet: Quiet, stale: Stale | None) -> Quiet:
        """The question asked at a delivery's turn: a release whose record was settled since
        it was made (a newer delivery of its key: its resolve fetched behind it) ends
        `settled`, with no request and no tombstone asked (the settle wrote one); else the
        shell's silences and inhibit rules (`quiet`)."""

        def asked(delivery: Delivery, wall: float) -> str | None:
            job = self._releasing.get(  # (a record's key is its body's: held_record.py)
                OrderingKey(
                    delivery.destination, str(delivery.payload.get("deduplication_key") or "")
                )
            )
            if job is None or job.work is not delivery or job.key is None or stale is None:
                return quiet(delivery, wall)
            return "settled" if stale(job.key, job.partition, job.offset) else quiet(delivery, wall)

        return asked

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
        self._high.clear()  # (asked again, with watermarks of the new assignment)

    def __len__(self) -> int:
        return len(self._releasing)
