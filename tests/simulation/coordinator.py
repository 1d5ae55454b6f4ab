"""The simulated group coordinator: membership, cooperative-sticky assignment, session
timeouts and static members.

What it promises, as Kafka's cooperative protocol does:

- **Revoke only what moves.** A rebalance computes a balanced target that keeps each
  member's partitions where it can (sticky). Phase one asks only the members that must
  give partitions up to revoke them (`Revoking` -> drain -> `Revoked` -> commit ->
  `LetGo` in the member shell) and waits until they have; phase two assigns the partitions
  nobody owns to their new members (`Assigned`). A partition is never owned by two live
  members of the group at once.
- **Session timeouts.** A member that stops heartbeating (kill -9) keeps its partitions
  until `session_timeout` after its last heartbeat; then they move. A member that leaves
  cleanly frees them at once, unless it is static.
- **Static members.** A member restarted with the same instance id within the session
  timeout takes its predecessor's place and partitions, without a rebalance (but not the
  partitions its predecessor was revoking: those go to their new owner).
- **Lost partitions.** `lose` drops a member as a session timeout would; the member is told
  its partitions are lost (`LetGo(lost=True)`) and rejoins as a new member.
- **Commits are fenced.** Only the member that owns a partition now may commit it.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.simulation.scheduler import Scheduler

log = logging.getLogger(__name__)


@dataclass
class Entry:
    member: str
    instance: str | None  # static membership: the stable name
    alive: bool = True  # heartbeating
    leaving: bool = False  # shutting down: takes nothing new
    owned: set[int] = field(default_factory=set)
    revoking: set[int] = field(default_factory=set)


class Coordinator:
    def __init__(
        self,
        scheduler: Scheduler,
        partitions: int,
        rng: random.Random,
        *,
        session_timeout: float,
        revoke: Callable[[str, list[int]], None],
        assign: Callable[[str, list[int]], None],
    ) -> None:
        self.scheduler, self.rng = scheduler, rng
        self.partitions = partitions
        self.session_timeout = session_timeout
        self._revoke, self._assign = revoke, assign
        self.entries: dict[str, Entry] = {}
        self.rebalancing = False  # in phase one (waiting for revocations)
        self._scheduled = False
        self._dirty = False
        self.rebalances = 0
        self.history: list[tuple[float, str]] = []  # (when, what) for reports

    # -- what members do ------------------------------------------------------------------

    def join(self, member: str, instance: str | None) -> None:
        old = self._by_instance(instance) if instance is not None else None
        entry = Entry(member, instance)
        self.entries[member] = entry
        if old is not None:  # a static member back within its session: same partitions
            del self.entries[old.member]
            # but not those its predecessor was giving up: they go to their new owner
            # (handed to both, two members owned one partition: the short seed 3839)
            entry.owned = old.owned - old.revoking
            self._note(f"{member} takes {old.member}'s place ({sorted(entry.owned)})")
            if entry.owned:
                self._assign(member, sorted(entry.owned))
            self._revocation_done(old, set(old.revoking))
            if self.rebalancing:
                self._maybe_phase_two()
            owned = {p for e in self.entries.values() for p in e.owned}
            if len(owned) < self.partitions:  # some wait for a live member: here is one
                self.request_rebalance()
            return
        self._note(f"{member} joins")
        self.request_rebalance()

    def leave(self, member: str) -> None:
        """A clean leave (after the member drained and let its partitions go)."""
        entry = self.entries.get(member)
        if entry is None:
            return
        if entry.instance is not None:
            # Static: stays in the group, owning its partitions (nobody delivers them) until
            # its session ends or it comes back; it committed them before it left.
            entry.alive = False
            self._note(f"{member} leaves (static: its session ends in {self.session_timeout}s)")
            self.scheduler.after(self.session_timeout, self._expire, member)
            if self.rebalancing:
                self._revocation_done(entry, set(entry.revoking))
            return
        self._note(f"{member} leaves")
        self._remove(entry)

    def shutting_down(self, member: str) -> None:
        entry = self.entries.get(member)
        if entry is not None:
            entry.leaving = True

    def died(self, member: str) -> None:
        """kill -9: heartbeats stop; its partitions move when its session times out."""
        entry = self.entries.get(member)
        if entry is None:
            return
        entry.alive = False
        self._note(f"{member} stops heartbeating")
        self.scheduler.after(self.session_timeout, self._expire, member)

    def lose(self, member: str) -> list[int]:
        """The member's session is over while it still runs: its partitions are lost."""
        entry = self.entries.get(member)
        if entry is None:
            return []
        owned = sorted(entry.owned)
        self._note(f"{member} loses {owned}")
        self._remove(entry)
        return owned

    def revoked(self, member: str, partitions: list[int]) -> None:
        entry = self.entries.get(member)
        if entry is None:
            return
        entry.owned.difference_update(partitions)
        self._revocation_done(entry, set(partitions))

    # -- what the broker asks -------------------------------------------------------------

    def owner(self, partition: int) -> str | None:
        for entry in self.entries.values():
            if partition in entry.owned:
                return entry.member
        return None

    def may_commit(self, member: str, partition: int) -> str | None:
        """None if `member` may commit `partition` now, else the broker's error."""
        entry = self.entries.get(member)
        if entry is None:
            return "UNKNOWN_MEMBER_ID"
        if partition not in entry.owned:
            return "ILLEGAL_GENERATION"
        return None

    # -- rebalancing ----------------------------------------------------------------------

    def request_rebalance(self) -> None:
        if self.rebalancing or self._scheduled:
            self._dirty = True
            return
        self._scheduled = True
        self.scheduler.after(self.rng.uniform(0.05, 0.5), self._phase_one)

    def _phase_one(self) -> None:
        self._scheduled = False
        self._dirty = False
        self.rebalances += 1
        target = self._target()
        revocations = {
            e.member: sorted(e.owned - target[e.member])
            for e in self._sorted()
            if e.alive and not e.leaving and e.owned - target[e.member]
        }
        if not revocations:
            self._phase_two()
            return
        self.rebalancing = True
        for member, partitions in revocations.items():
            self.entries[member].revoking = set(partitions)
            self._note(f"revoke {partitions} from {member}")
            self._revoke(member, partitions)

    def _revocation_done(self, entry: Entry, partitions: set[int]) -> None:
        entry.revoking.difference_update(partitions)
        if self.rebalancing:
            self._maybe_phase_two()

    def _maybe_phase_two(self) -> None:
        if any(e.revoking for e in self.entries.values()):
            return
        self.rebalancing = False
        self._phase_two()

    def _phase_two(self) -> None:
        target = self._target()
        owned = {p for e in self.entries.values() for p in e.owned}
        for entry in self._sorted():
            if not entry.alive or entry.leaving:
                continue
            if entry.owned - target[entry.member]:
                self._dirty = True  # membership changed meanwhile: another round
            adds = sorted(target[entry.member] - entry.owned - owned)
            if adds:
                entry.owned.update(adds)
                owned.update(adds)
                self._note(f"assign {adds} to {entry.member}")
                self._assign(entry.member, adds)
        if self._dirty:
            self._dirty = False
            self.request_rebalance()

    def _target(self) -> dict[str, set[int]]:
        """A balanced assignment that keeps what each live member owns where it can."""
        entries = self._sorted()
        target = {e.member: set(e.owned) for e in entries}
        active = [e for e in entries if e.alive and not e.leaving]
        frozen = {p for e in entries if not (e.alive and not e.leaving) for p in e.owned}
        pool = [p for p in range(self.partitions) if p not in frozen]
        if not active:
            return target
        base, extra = divmod(len(pool), len(active))
        # the members that own the most keep the extra partitions: fewer move
        by_owned = sorted(active, key=lambda e: (-len(e.owned & set(pool)), e.member))
        quota = {e.member: base + (1 if i < extra else 0) for i, e in enumerate(by_owned)}
        kept: set[int] = set()
        for e in active:
            keep = sorted(e.owned & set(pool))[: quota[e.member]]
            target[e.member] = set(keep)
            kept.update(keep)
        free = [p for p in pool if p not in kept]
        for e in active:
            while len(target[e.member]) < quota[e.member] and free:
                target[e.member].add(free.pop(0))
        return target

    def _expire(self, member: str) -> None:
        entry = self.entries.get(member)
        if entry is None or entry.alive:
            return
        self._note(f"{member}'s session timed out ({sorted(entry.owned)} move)")
        self._remove(entry)

    def _remove(self, entry: Entry) -> None:
        del self.entries[entry.member]
        if self.rebalancing:
            self._maybe_phase_two()
        self.request_rebalance()

    def _by_instance(self, instance: str) -> Entry | None:
        for entry in self.entries.values():
            if entry.instance == instance:
                return entry
        return None

    def _sorted(self) -> list[Entry]:
        return [self.entries[m] for m in sorted(self.entries)]

    def _note(self, what: str) -> None:
        self.history.append((self.scheduler.now, what))
        log.debug("%.3f coordinator: %s", self.scheduler.now, what)
