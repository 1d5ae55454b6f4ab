"""The guarantees, checked against the simulated world after every step.

`Truth` knows every message produced and every fact the outside world holds about it
(an accepted arrival at incident.io, a dead letter on its topic), and checks:

- **no-loss** (at the end): every message is terminal: dropped by the rules, or each of
  its works accepted, dead-lettered, or superseded by a newer state of its key that was
  accepted;
- **commit-behind-terminal** (at each stored commit): a committed offset never passes a
  message that is not terminal; **skip-only-terminal**: a message a next owner skips as
  done (by the note's offset map) is terminal; **note-fits**: a note is within the
  broker's `offset.metadata.max.bytes` (4096; a larger one is refused, as Kafka does);
- **order-one-owner** (at each start): one member's requests for a key never overlap, and
  never go back in offsets within one assignment unless the newer one was dead-lettered;
  **order-final** (at the end): the last state incident.io accepted for each key is the
  newest it accepted; a regression caused by a request that arrived after its sender had
  lost the partition is **order-zombie**, and one where the older state's message fans
  out to two destinations (re-sent whole by a next owner) **order-fan-out**: both reported
  apart (switchable);
- **rate** (at each arrival): no window of the limit's length holds more arrivals at an
  alert source (or an API key) than its limit, across all members;
- **dead-letter-once** (at each letter): one letter per source offset and destination
  (issue 22 item 5; `--no-dead-letter-index` takes the shell's index away);
- **liveness** (at the end): once faults stop, everything is terminal within a bound;
  **throughput**: once faults stop and the group has settled, every two windows in which
  an alert source's backlog waits (at least two limits of works at the start, some still
  waiting at the end) hold at least `Checks.throughput` of the limit in arrivals;
  **machine-raised**: the machine never raises.

A violation is recorded with its time and what it concerns; the run stops at the first
one that is asserted. Reported-only invariants are counted.
"""

from __future__ import annotations

import logging
from collections import defaultdict, deque
from dataclasses import dataclass, field

from tests.simulation.alert_api import Arrival
from tests.simulation.broker import Broker, LetterRecord

log = logging.getLogger(__name__)

INVARIANTS = (
    "no-loss",
    "commit-behind-terminal",
    "skip-only-terminal",
    "note-fits",
    "order-one-owner",
    "order-final",
    "order-zombie",
    "order-fan-out",
    "rate",
    "dead-letter-once",
    "liveness",
    "throughput",
    "machine-raised",
)


# Counted but not failing a run unless asked (`--assert`): a late request from a member
# that lost its partition (Kafka fences commits, not requests), and a message that fans out
# re-sent whole by the next owner (an open bug found here).
REPORTED = frozenset({"order-zombie", "order-fan-out"})


@dataclass(frozen=True)
class Violation:
    invariant: str
    at: float
    detail: str

    def __str__(self) -> str:
        return f"{self.invariant} at t={self.at:.3f}: {self.detail}"


@dataclass
class Checks:
    """Which invariants fail a run (the others are only reported)."""

    asserted: frozenset[str] = frozenset(INVARIANTS) - REPORTED
    # the fraction of a limit a waiting backlog gets, settled: what holds today (idle
    # members keep a floor of the limit each, and a slot is kept a window after its answer)
    throughput: float = 0.25


@dataclass
class _KeyOrder:
    in_flight: int = 0
    last_started: int = -1


@dataclass
class Truth:
    broker: Broker
    windows: dict[str, tuple[float, int]]  # window name -> (seconds, limit)
    checks: Checks = field(default_factory=Checks)
    violations: list[Violation] = field(default_factory=list)
    reported: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    checked: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def __post_init__(self) -> None:
        self.accepted: set[tuple[int, int, str]] = set()  # (partition, offset, destination)
        self.lettered: dict[tuple[int, int, str | None], int] = defaultdict(int)
        self.newest_accepted: dict[tuple[int, str, str], int] = {}  # (p, dest, key) -> offset
        self.prefix: dict[int, int] = defaultdict(int)  # offsets below are terminal
        self.order: dict[tuple[str, str, str], _KeyOrder] = defaultdict(_KeyOrder)
        self.arrivals_in: dict[str, deque[float]] = defaultdict(deque)
        self.busiest: dict[str, int] = defaultdict(int)
        self.final_by_key: dict[tuple[int, str, str], list[tuple[float, int, str, bool]]] = (
            defaultdict(list)
        )
        self.flaps = 0
        self.failed = False

    # -- recording ------------------------------------------------------------------------

    def violate(self, invariant: str, at: float, detail: str) -> None:
        if invariant in self.checks.asserted:
            self.violations.append(Violation(invariant, at, detail))
            self.failed = True
            log.info("violation: %s", self.violations[-1])
        else:
            self.reported[invariant] += 1

    def arrival(
        self, arrival: Arrival, destination: str, sender_owns: bool, windows: list[str]
    ) -> None:
        """A request reached incident.io (`windows`: the rate windows it counts in;
        `sender_owns`: its sender owned the partition when it arrived)."""
        for name in windows:
            seconds, limit = self.windows[name]
            times = self.arrivals_in[name]
            times.append(arrival.at)
            while times and times[0] <= arrival.at - seconds:
                times.popleft()
            self.checked["rate"] += 1
            if len(times) > limit:
                self.violate(
                    "rate",
                    arrival.at,
                    f"{len(times)} arrivals at {name} in {seconds:g} s (limit {limit}), the "
                    f"last from {arrival.sender}",
                )
        if not arrival.accepted:
            return
        self.busiest[arrival.source] = max(
            self.busiest[arrival.source], len(self.arrivals_in.get(arrival.source, ()))
        )
        key = (arrival.partition, destination, arrival.key)
        history = self.final_by_key[key]
        newest = self.newest_accepted.get(key, -1)
        if arrival.offset < newest:
            self.flaps += 1
        history.append((arrival.at, arrival.offset, arrival.sender, sender_owns))
        self.accepted.add((arrival.partition, arrival.offset, destination))
        self.newest_accepted[key] = max(newest, arrival.offset)

    def dead_letter(self, record: LetterRecord) -> None:
        where = (record.partition, record.offset, record.destination)
        self.lettered[where] += 1
        self.checked["dead-letter-once"] += 1
        if self.lettered[where] > 1:
            self.violate(
                "dead-letter-once",
                record.at,
                f"letter #{self.lettered[where]} for partition {record.partition} offset "
                f"{record.offset} ({record.destination}), by {record.writer}",
            )

    def started(
        self, member: str, partition: int, offset: int, destination: str, key: str, at: float
    ) -> None:
        state = self.order[(member, destination, key)]
        self.checked["order-one-owner"] += 1
        if state.in_flight:
            self.violate(
                "order-one-owner",
                at,
                f"{member} starts {key}@{partition}:{offset} while another request of it runs",
            )
        if offset < state.last_started and (partition, state.last_started, destination) not in (
            self.lettered
        ):
            self.violate(
                "order-one-owner",
                at,
                f"{member} starts {key}@{partition}:{offset} after {state.last_started}, "
                "which was not dead-lettered",
            )
        state.in_flight += 1
        state.last_started = max(state.last_started, offset)

    def ended(self, member: str, destination: str, key: str) -> None:
        state = self.order[(member, destination, key)]
        state.in_flight = max(0, state.in_flight - 1)

    def assigned(self, member: str, partition: int) -> None:
        """A new assignment: order within it starts afresh (a re-send from the commit)."""
        for (who, _, _), state in self.order.items():
            if who == member:
                state.last_started = -1

    # -- terminal states ------------------------------------------------------------------

    def terminal(self, partition: int, offset: int) -> bool:
        message = self.broker.message(partition, offset)
        if message.kind == "dropped":
            return True
        if message.kind == "poison":
            return self.lettered.get((partition, offset, None), 0) > 0
        for key in message.keys:
            if (partition, offset, key.destination) in self.accepted:
                continue
            if self.lettered.get((partition, offset, key.destination), 0) > 0:
                continue
            newest = self.newest_accepted.get((partition, key.destination, key.name), -1)
            if newest > offset:
                continue  # superseded by a newer state that incident.io took
            return False
        return True

    def terminal_prefix(self, partition: int) -> int:
        end = self.broker.end(partition)
        at = self.prefix[partition]
        while at < end and self.terminal(partition, at):
            at += 1
        self.prefix[partition] = at
        return at

    def committed(self, partition: int, offset: int, member: str, at: float) -> None:
        self.checked["commit-behind-terminal"] += 1
        prefix = self.terminal_prefix(partition)
        if offset > prefix:
            self.violate(
                "commit-behind-terminal",
                at,
                f"{member} committed partition {partition} at {offset}, past offset {prefix} "
                f"({self.describe(partition, prefix)}), which is not terminal",
            )

    def skipped(self, partition: int, offset: int, member: str, at: float) -> None:
        self.checked["skip-only-terminal"] += 1
        if not self.terminal(partition, offset):
            self.violate(
                "skip-only-terminal",
                at,
                f"{member} skipped partition {partition} offset {offset} as done "
                f"({self.describe(partition, offset)}), which is not terminal",
            )

    def waiting(self, destination: str) -> int:
        """Works for `destination` not terminal now."""
        count = 0
        for partition, offset in self.unfinished():
            message = self.broker.message(partition, offset)
            for key in message.keys:
                if key.destination != destination:
                    continue
                if (partition, offset, destination) in self.accepted or self.lettered.get(
                    (partition, offset, destination), 0
                ):
                    continue
                if self.newest_accepted.get((partition, destination, key.name), -1) > offset:
                    continue
                count += 1
        return count

    def unfinished(self) -> list[tuple[int, int]]:
        out = []
        for partition in range(self.broker.partitions):
            start = self.terminal_prefix(partition)
            for offset in range(start, self.broker.end(partition)):
                if not self.terminal(partition, offset):
                    out.append((partition, offset))
        return out

    def describe(self, partition: int, offset: int) -> str:
        if offset >= self.broker.end(partition):
            return "not produced yet"
        m = self.broker.message(partition, offset)
        keys = ",".join(f"{k.destination}/{k.name}" for k in m.keys)
        return f"{m.kind} {keys} {m.status}{'' if m.valid else ' invalid'}".strip()

    # -- at the end ------------------------------------------------------------------------

    def finish(self, at: float) -> None:
        """At the liveness bound: what is not terminal now is late (liveness) or, if the
        committed offset passed it, lost (no-loss)."""
        left = self.unfinished()
        self.checked["no-loss"] += 1
        self.checked["liveness"] += 1
        lost = [(p, o) for p, o in left if self.broker.read_note(p)[0] > o]
        late = [(p, o) for p, o in left if (p, o) not in lost]
        for name, which in (("no-loss", lost), ("liveness", late)):
            if which:
                sample = ", ".join(f"{p}:{o} ({self.describe(p, o)})" for p, o in which[:5])
                self.violate(name, at, f"{len(which)} messages not terminal: {sample}")
        for (_partition, destination, key), history in sorted(self.final_by_key.items()):
            self.checked["order-final"] += 1
            last_at, last, sender, owner = history[-1]
            newest = max(offset for _, offset, _, _ in history)
            if last < newest:
                fans_out = len(self.broker.message(_partition, last).keys) > 1
                self.violate(
                    "order-zombie" if not owner else "order-fan-out" if fans_out else "order-final",
                    last_at,
                    f"{destination}/{key}: the last state accepted is offset {last} (from "
                    f"{sender}{'' if owner else ', no longer its owner'}), after {newest}",
                )
