"""Held targets: the latest inhibited state of each key, kept in the firing topic until its
source stops inhibiting it, then delivered (issue 24: "When the source resolves, the
targets' latest state is delivered"; README, "Inhibition"; the record: held_record.py).

- **Written.** A firing delivery an inhibit rule keeps quiet (at routing, or at its turn
  when no newer job of its key waits behind it) writes a *held* record to
  `kafka.firing_topic` with what sending it later takes, and its `until`. Written before
  its event's offset can be committed (`FiringState.before_commit`).
- **Superseded.** A newer delivery of the same key made at routing (sent, a resolve,
  silenced) tombstones it; a newer inhibited one replaces it. So a held record is always
  its key's latest state (per partition: two partitions have no order anyway).
- **Released** (`due`, level-triggered: when a source resolves, and every
  `CHECK_SECONDS` while something is held) by the member that owns the record's source
  partition, once nothing inhibits nor silences it, the topic reads, and the follower
  has read every record acknowledged before this member took the partition; the machine
  also waits until its partition is fetched to the high watermark (`ReleaseHeld.high`),
  and drops it at its turn if its record was settled since. Once accepted or
  dead-lettered, the record is tombstoned if it is still the one released (`HeldSent`).
  Killed between incident.io's 202 and that tombstone, the next owner sends it again.
- **Ended.** Past its `until` it is tombstoned, never sent (counted, logged at info).
- **Local first.** The writer applies its records at once; what the follower reads of a
  key this member wrote is not applied until it has read that write back (an older
  record read late must not bring back a state tombstoned since). A write that fails
  keeps its local word and is written again at each look (a failed tombstone never lets
  the older firing out again), until its partition is let go or a newer record of its
  partition's key is read (the next owner's word is never written over).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from streamer import held_record as record
from streamer.dead_letters import SourceMessage
from streamer.delivery_events import HeldSent, HoldTarget, ReleaseHeld
from streamer.held_record import HELD_PREFIX, HeldTarget, held_key, releasable, until_of
from streamer.inhibition import InhibitRule, alert_labels
from streamer.ledger import OrderingKey, Partition
from streamer.telemetry import Tally, Telemetry

log = logging.getLogger(__name__)

__all__ = ["HELD_PREFIX", "HeldTarget", "HeldTargets", "held_key", "releasable"]

# while something is held, looked at this often (a source past its `until`, a hand-over's
# read done, a silence expired): each look asks the board about every held target
CHECK_SECONDS = 5.0
SOON_SECONDS = 0.1  # after a change (a source resolved, a partition taken): this soon
WAITING_SECONDS = 1.0  # a release held back for its partition's fetch: asked again so often
FAILED_SAID_EVERY = 12  # a write that keeps failing: warned at its 1st, 13th... attempt


class HeldTargets:
    """The held records as the firing topic says (this member's writes first), their
    writer, and when to release them. `read` runs on the follower's thread; the rest on
    the poll thread."""

    def __init__(
        self,
        produce: record.Produce | None,
        caught_up: Callable[[float], bool],
        readable: Callable[[], bool],
        inhibited: Callable[[tuple[InhibitRule, ...], Mapping[str, str]], bool],
        *,
        wall_clock: Callable[[], float] = time.time,
        resolve_timeout: float = 300.0,
    ) -> None:
        self._produce, self._caught_up, self._readable = produce, caught_up, readable
        self.resolve_timeout = resolve_timeout  # how long a target without an end is held
        self._inhibited, self.wall_clock = inhibited, wall_clock
        self._lock = threading.Lock()
        self._read: dict[str, tuple[HeldTarget, int]] = {}  # as read: the record's offset
        self._mine: dict[str, record.HeldWrite] = {}  # written here, not read back yet
        self._since: dict[Partition, float] = {}  # owned, since when (seen by `due`)
        self._owned: list[Partition] = []  # as `due` was last told
        self._taken: set[Partition] = set()  # assigned since (`taken`)
        self.highs = record.TakeHighs()  # each take's high watermarks (`released`)
        self._checked = -math.inf
        self._changed = self._gave = False  # (`_gave`: the last look released some)
        self._rules: Callable[[], tuple[InhibitRule, ...]] = tuple
        self._silences: record.Silences | None = None
        # the routes a time interval keeps quiet at a time (the engine's rules): a release
        # waits while its route is muted, as a notification would (README "Which time")
        self.muted_routes: Callable[[datetime], Iterable[tuple[Any, ...]]] = lambda at: ()
        self.routes: Callable[[], Mapping[str, str | None]] = dict  # path: its destination
        self.counts: dict[str, int] = {}  # `ended` (dropped), `write_failed`
        self._tally: Any = None  # streamer.telemetry.Tally, once shown

    @classmethod
    def beside(cls, firing: Any) -> HeldTargets:
        """The held targets of a `FiringState`: written with its producer, read by its
        follower, inhibited by its sources."""
        return cls(
            firing._produce if firing.producer is not None else None,
            lambda since: bool(firing.follower.caught_up(since)),
            lambda: bool(firing.readable()),
            lambda rules, labels: firing.inhibition(rules, labels) is not None,
            wall_clock=firing.wall_clock,
            resolve_timeout=firing.resolve_timeout,
        )

    # -- the view --------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.targets())

    def targets(self) -> list[HeldTarget]:
        with self._lock:
            view: dict[str, HeldTarget | None] = {k: t for k, (t, _) in self._read.items()}
            view.update((k, w.target) for k, w in self._mine.items())
            return [t for t in view.values() if t is not None]

    def _current(self, key: str) -> HeldTarget | None:
        with self._lock:
            if key in self._mine:
                return self._mine[key].target
            read = self._read.get(key)
            return read[0] if read is not None else None

    def read(self, key: str, value: bytes | str | None, offset: int) -> None:
        """A record read from the topic (the follower's thread)."""
        target = None
        if value is not None:
            try:
                raw = value.encode() if isinstance(value, str) else value
                target = HeldTarget.decode(raw, key)
            except (ValueError, KeyError, TypeError, RecursionError, OverflowError) as e:
                log.warning("a held target's record @%d is not one, skipped: %s", offset, e)
                return
        with self._lock:
            if target is None:
                self._read.pop(key, None)
            else:
                self._read[key] = (target, offset)
            mine = self._mine.get(key)
            if mine is not None and mine.superseded_by(target):
                del self._mine[key]  # a newer state of its key, written by another
                return
            if mine is not None:
                mine.read = max(mine.read, offset)  # (its acknowledgement may come later)
                if mine.acked is not None and offset >= mine.acked:
                    del self._mine[key]  # our latest write read back: the topic says it now

    def taken(self, partitions: Collection[Partition]) -> None:
        """Partitions assigned (again, maybe lost and taken back within one poll): released
        only once the follower has read every record acknowledged before the next look."""
        self._taken.update(partitions)
        self.highs.taken(partitions)  # (the cached high may be of an earlier take)

    def changed(self) -> None:
        """Something that may release a target happened (a source resolved)."""
        self._changed = True

    # -- writes ----------------------------------------------------------------------------

    def holds(self, key: OrderingKey, source: Partition, offset: int) -> bool:
        """Whether the record of `source`@`offset` is still `key`'s held state (a release's
        turn: a newer delivery of its key may have settled it since it was made)."""
        current = self._current(held_key(key))
        return current is not None and (current.source, current.offset) == (source, offset)

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1
        if self._tally is not None:
            self._tally.add(1, {"what": what})

    def _write(
        self, key: str, target: HeldTarget | None, failed: int = 0, at: record.At = record.NOWHERE
    ) -> bool:
        """Writes `key`'s state (`at`: a tombstone's settling event); False if it could not
        be queued (kept: written again)."""
        at = (target.source, target.offset) if target is not None else at
        write = record.HeldWrite(target, failed=failed, at=at)
        with self._lock:
            if self._produce is None:  # nothing to read back: this view is the only one
                self._read.pop(key, None)
                if target is None:
                    self._mine.pop(key, None)
                    return True
            self._mine[key] = write
        if self._produce is None:
            return True

        def acked(offset: int | None) -> None:
            with self._lock:
                if self._mine.get(key) is not write:
                    return  # a later write of the key decides
                if offset is None:  # not written: our word stands, written again
                    self._failed(key, write)
                    return
                write.acked = offset
                if write.read >= offset:  # read back before it was acknowledged
                    del self._mine[key]

        if not self._produce(key, None if target is None else target.encode(), acked):
            with self._lock:
                if self._mine.get(key) is write:
                    self._failed(key, write)
            return False
        return True

    def _failed(self, key: str, write: record.HeldWrite) -> None:
        """A write not done (its delivery report an error, or the producer's queue full): the
        older word in the topic must not come back (a tombstone's older firing released
        after its resolve), so ours is kept and written again at each look."""
        write.failed, write.failing = write.failed + 1, True
        self._count("write_failed")
        if write.failed % FAILED_SAID_EVERY == 1:
            log.warning(
                "a held target's %s was not written to the firing topic (attempt %d): kept "
                "here, written again every %.0f s",
                "tombstone" if write.target is None else "record",
                write.failed,
                CHECK_SECONDS,
            )

    def _rewrite(self) -> None:
        """The writes that failed, again (the first one refused at once ends this look's:
        a full queue costs one wait per look, not one per record)."""
        with self._lock:
            failing = [(k, w) for k, w in self._mine.items() if w.failing]
        for key, write in failing:
            with self._lock:
                if self._mine.get(key) is not write:
                    continue
            if not self._write(key, write.target, write.failed, write.at):
                return

    def _let_go(self, partitions: Collection[Partition]) -> None:
        """Failing writes of partitions let go (or lost and taken back) are dropped: the
        next owner says their keys' states now, and must never be written over."""
        with self._lock:
            for key, write in list(self._mine.items()):
                if write.failing and write.at[0] in partitions:
                    del self._mine[key]

    def hold(self, target: HeldTarget) -> None:
        """`target` is its key's latest state, inhibited: held until released. Not over a
        later event of its partition held already (an older job of the key inhibited at its
        turn after a newer event was held at routing)."""
        name = held_key(target.key)
        current = self._current(name)
        if current is None or current.source != target.source or current.offset <= target.offset:
            self._write(name, target)

    def settle(
        self,
        key: OrderingKey,
        partition: Partition,
        offset: int = -1,
        *,
        target: Callable[[], bool] = lambda: True,
    ) -> None:
        """A newer delivery of `key` was made at routing: its held state (if any) is stale.
        Written when one is known, or, for a `target()` of an inhibit rule, when this member
        may not know yet (it has not read the topic since it took `partition`)."""
        name = held_key(key)
        if self._current(name) is None:
            since = self._since.get(partition)
            if (since is not None and self._caught_up(since)) or not target():
                return
        self._write(name, None, at=(partition, offset))

    def perform(self, effect: HoldTarget | HeldSent) -> None:
        """The machine's word: a delivery inhibited at its turn, or a release ended."""
        if isinstance(effect, HoldTarget):
            until = self.wall_clock() + self.resolve_timeout  # (its event's end is not known)
            self.hold(HeldTarget.of(effect.key, effect.delivery, until))
            return
        name = held_key(effect.key)
        current = self._current(name)
        if current is not None and (current.source, current.offset) == (
            effect.partition,
            effect.offset,
        ):
            self._write(name, None, at=(effect.partition, effect.offset))

    def routed(
        self,
        source: SourceMessage,
        event: Mapping[str, Any],
        deliveries: Collection[Any],
        inhibited: Collection[Any],
        rules: tuple[InhibitRule, ...],
        silenced: Collection[Any] = (),
    ) -> None:
        """A routed event's deliveries (`RoutedAlert`s): those `inhibited` are held, and
        those `silenced` of a key held (its latest state: released once neither silenced
        nor inhibited); the others settle their keys. Only alert events count."""
        own = alert_labels(event) if deliveries else None
        if own is None:
            return

        def target() -> bool:  # (asked only while this member may not know what is held)
            return any(rule.matches_target(own) for rule in rules)

        for d in deliveries:
            key = OrderingKey(d.destination, d.payload.deduplication_key or "")
            if d in inhibited or (d in silenced and self._current(held_key(key)) is not None):
                until = until_of(event, self.wall_clock() + self.resolve_timeout)
                self.hold(HeldTarget.routed(key, d, own, event, source, until))
            else:
                self.settle(key, (source.topic, source.partition), source.offset, target=target)

    # -- release ---------------------------------------------------------------------------

    def due(self, owned: list[Partition], now: float, waiting: bool = False) -> list[HeldTarget]:
        """The held targets to release now (called at every step of the poll loop: cheap
        unless a change or `CHECK_SECONDS` calls for a look, and something is held);
        `waiting`: the machine held one back for its partition's fetch (asked again, at most
        every WAITING_SECONDS: a backlog to fetch needs the poll thread)."""
        waited = waiting and self._gave  # (the last look's release waits)
        if owned != self._owned or self._taken:  # (a rebalance: rare; else one comparison)
            self._let_go((set(self._owned) - set(owned)) | self._taken)
            self._owned, taken, self._taken = list(owned), self._taken, set()
            self.highs.owned(owned)
            self._since = {p: now if p in taken else self._since.get(p, now) for p in owned}
            self._changed = True
            if self._since:
                self._caught_up(max(self._since.values()))  # the follower looks from now
        soon = self._changed and now - self._checked >= SOON_SECONDS
        soon = soon or (waited and now - self._checked >= WAITING_SECONDS)
        if not soon and now - self._checked < CHECK_SECONDS:
            return []
        self._checked, self._changed, self._gave = now, False, False
        self._rewrite()
        held = self.targets()
        if not held or not self._readable():
            return []
        sinces = {self._since[h.source] for h in held if h.source in self._since}
        if not all(self._caught_up(since) for since in sinces):
            self._changed = True  # the follower is looking: asked again soon, not in 5 s
        mine = releasable(held, self._since, self._caught_up, self._ended)
        at = datetime.fromtimestamp(self.wall_clock(), UTC)
        muted = {r[0] for r in self.muted_routes(at)} if mine else set()  # (once per look)
        if muted:  # a route a reload renamed or removed: muted while one to its destination is
            known = self.routes()
            to = {known.get(path) for path in muted}
            muted |= {h.route for h in mine if h.route not in known and h.destination in to}
        due = [h for h in mine if h.route not in muted and not self._quiet(h, at)]
        self._gave = bool(due)
        return due

    def _ended(self, h: HeldTarget) -> bool:
        """A target past its end (`HeldTarget.ends`) is dropped, never released as firing
        (Alertmanager notifies nothing for an alert resolved before it was sent)."""
        wall, end = self.wall_clock(), h.ends(self.resolve_timeout)
        if end is None or end > wall:
            return False
        log.info(
            "a held target of %s ended %.0f s ago while inhibited: dropped, not sent",
            h.destination,
            wall - end,
            extra={"destination": h.destination, "deduplication_key": h.deduplication_key},
        )
        self._count("ended")
        self._write(held_key(h.key), None, at=(h.source, h.offset))
        return True

    def released(self, held: list[HeldTarget], consumer: Any) -> ReleaseHeld:
        """`held` for the machine, with their partitions' high watermarks as the broker said
        after this member took them (`TakeHighs`)."""
        return ReleaseHeld(held, self.highs.of(consumer, held))

    def _quiet(self, target: HeldTarget, at: datetime) -> bool:
        if self._inhibited(self._rules(), target.alert_labels):
            return True
        if self._silences is None or target.labels is None:
            return False
        return bool(self._silences.matching(target.labels, at))

    def show(
        self,
        telemetry: Telemetry,
        silences: record.Silences | None,
        rules: Callable[[], tuple[InhibitRule, ...]],
    ) -> None:
        """`/pending` counts the held targets (`inhibition_held`), and so does a gauge;
        what keeps one quiet: these silences, and the inhibit rules in force (`rules()`)."""
        self._silences, self._rules = silences, rules
        self._tally = Tally(
            telemetry.provider.get_meter("streamer"),
            "streamer.inhibition.held_outcomes",
            "Held targets dropped (`what`: ended, past their until) or whose record was not "
            "written (write_failed: kept, written again)",
        )
        pending = telemetry.pending
        telemetry.pending = lambda: {**pending(), "inhibition_held": len(self)}
        telemetry.gauge("streamer.inhibition.held", lambda: [(float(len(self)), {})])
