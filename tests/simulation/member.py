"""A member's shell: one process running the real `DeliveryMachine`, in simulated time.

It does what the engine does around the machine and nothing more: it feeds `Fetched` from
its fetch positions (never more than `room()`), routes each message into works unless the
machine says it need not (`needs_routing`), performs each effect through the simulated
world (a `Post` becomes an arrival at incident.io and later an `Answered`; a
`WriteDeadLetter` a record on the dead-letter topic and a `DeadLetterWritten`; a `Commit`
a commit at the broker and a `CommitAnswered`; a `ReadNotes` a `NotesRead`; `Pause`,
`Resume` and `PauseAt` move its fetch positions), and wakes the machine with `Tick` when
it asks (`next_wakeup`). A revoke or a SIGTERM is a drain as librdkafka's callback runs
it: `Revoking`, no fetching, until `drained` or the deadline, then `Revoked`, the sync
`Commit` it asks for, then `LetGo`. Events never re-enter the machine from inside
`handle`: every follow-up goes through the scheduler.

A killed member (`kill`) stops at once: whatever it had sent still arrives, whatever
comes back to it is dropped.
"""

from __future__ import annotations

import inspect
import logging
import random
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from streamer import delivery_events as ev
from streamer.telemetry import Telemetry
from tests.simulation.scheduler import MemberClock
from tests.simulation.workload import TOPIC

if TYPE_CHECKING:
    from tests.simulation.world import World

log = logging.getLogger(__name__)

MIN_TICK = 0.001  # seconds: a machine that asks to be woken "now" again is woken 1 ms on
MAX_BATCH = 500  # messages in one Fetched (the engine's consume() batch)


@dataclass
class Drain:
    kind: str  # "revoke" | "shutdown"
    partitions: list[int]
    deadline: float  # true time
    state: str = "draining"  # -> "ending" -> "committing" -> "done"


def new_machine(world: World, *, writer: str, rng: Any, now: float) -> Any:
    """The real machine, built as its constructor of the day asks (the interface moves)."""
    from streamer.delivery_machine import DeliveryMachine

    params = inspect.signature(DeliveryMachine).parameters
    kwargs: dict[str, Any] = {"writer": writer, "telemetry": Telemetry()}
    if "rng" in params:
        kwargs["rng"] = rng
    if "now" in params:
        kwargs["now"] = now
    config = world.config
    if "settings" in params:
        return DeliveryMachine(
            config.file.delivery, config.file.destinations, config.tokens, **kwargs
        )
    return DeliveryMachine(config, **kwargs)


def tp(partition: int) -> tuple[str, int]:
    return (TOPIC, partition)


class Member:
    def __init__(
        self,
        world: World,
        name: str,
        incarnation: int,
        clock: MemberClock,
        *,
        static: bool,
    ) -> None:
        self.world = world
        self.name, self.incarnation = name, incarnation
        self.id = f"{name}.{incarnation}"  # the process
        self.instance = name if static else None
        self.group_id = self.id  # its member id in the group (a new one after a loss)
        self.clock = clock
        self.machine = new_machine(
            world,
            writer=self.id,
            rng=random.Random(f"{world.seed}:{self.id}").random,
            now=clock.monotonic(world.scheduler.now),
        )
        self.alive = True
        self.stopped = False  # left cleanly
        self.positions: dict[int, int] = {}
        self.fed: dict[int, int] = {}  # one past the last offset fed (this assignment)
        self.paused: set[int] = set()
        self.producing = 0  # dead letters written, not yet acknowledged
        self.commit_stored_at = self.commit_answered_at = 0.0  # commits stay in order
        self.drain: Drain | None = None
        self.ops: deque[tuple[str, list[int]]] = deque()
        self._fetch_due = False
        self._tick_at: float | None = None
        self.handled = 0
        self._rejoins = 0

    def __repr__(self) -> str:
        return f"Member({self.id})"

    # -- the one door -----------------------------------------------------------------------

    def handle(self, event: Any) -> list[Any]:
        if not self.alive:
            return []
        world = self.world
        t = world.scheduler.now
        try:
            effects = self.machine.handle(event, self.clock.monotonic(t), self.clock.wall(t))
        except Exception as e:  # the real engine would crash: a violation, then a kill
            log.debug("%s raised on %s", self.id, event, exc_info=True)
            world.truth.violate("machine-raised", t, f"{self.id} on {type(event).__name__}: {e!r}")
            world.crash(self)
            return []
        self.handled += 1
        world.trace(self, event, effects)
        for effect in effects:
            self._perform(effect)
        if isinstance(event, (ev.CommitAnswered, ev.CommitNotSent)) and event.sync:
            drain = self.drain
            if drain is not None and drain.state == "committing":
                world.scheduler.after(0, self._let_go, drain)
        self._after_step()
        return list(effects)

    def _perform(self, effect: Any) -> None:
        world = self.world
        if isinstance(effect, ev.Post):
            world.post(self, effect)
        elif isinstance(effect, ev.WriteDeadLetter):
            world.write_dead_letter(self, effect)
        elif isinstance(effect, ev.Commit):
            world.commit(self, effect)
        elif isinstance(effect, ev.ReadNotes):
            world.read_notes(self, effect)
        elif isinstance(effect, ev.Pause):
            self.paused.update(p for _, p in effect.partitions)
        elif isinstance(effect, ev.Resume):
            for (_, p), offset in effect.partitions.items():
                if offset is not None and p in self.positions:
                    self.positions[p] = offset
                self.paused.discard(p)
        elif isinstance(effect, ev.PauseAt):
            _, p = effect.partition
            self.paused.add(p)
            if p in self.positions:
                self.positions[p] = effect.offset
        else:
            raise AssertionError(f"unknown effect {effect!r}")

    def _after_step(self) -> None:
        if not self.alive:
            return
        drain = self.drain
        if drain is not None and drain.state == "draining":
            parts = [tp(p) for p in drain.partitions]
            if self.machine.drained(parts, producing=self.producing > 0):
                drain.state = "ending"
                self.world.scheduler.after(0, self._end_drain, drain)
        self.maybe_fetch()
        self._schedule_tick()

    # -- time -----------------------------------------------------------------------------

    def _schedule_tick(self) -> None:
        t = self.world.scheduler.now
        now = self.clock.monotonic(t)
        wakeup = self.machine.next_wakeup(now)
        delay = min(max(wakeup - now, MIN_TICK), self.world.max_tick)
        at = t + delay
        if self._tick_at is not None and t < self._tick_at <= at:
            return
        self._tick_at = at
        self.world.scheduler.at(at, self._tick, at)

    def _tick(self, at: float) -> None:
        if self._tick_at != at:
            return
        self._tick_at = None
        self.handle(ev.Tick())

    # -- fetching -------------------------------------------------------------------------

    def _fetchable(self) -> list[int]:
        broker = self.world.broker
        return [
            p
            for p in sorted(self.positions)
            if p not in self.paused and self.positions[p] < broker.end(p)
        ]

    def maybe_fetch(self) -> None:
        if not self.alive or self._fetch_due or self.drain is not None:
            return
        if not self._fetchable() or self.machine.room() <= 0:
            return
        self._fetch_due = True
        self.world.scheduler.after(self.world.rng.uniform(0.001, 0.02), self._fetch)

    def _fetch(self) -> None:
        self._fetch_due = False
        if not self.alive or self.drain is not None:
            return
        room = min(self.machine.room(), MAX_BATCH)
        broker = self.world.broker
        parts = self._fetchable()
        batch: list[ev.Incoming] = []
        skipped: list[tuple[int, int]] = []
        while room > 0 and parts:
            for p in list(parts):
                offset = self.positions[p]
                if offset >= broker.end(p):
                    parts.remove(p)
                    continue
                self.positions[p] = offset + 1
                message = broker.message(p, offset)
                works: Any = None
                if self.machine.needs_routing(tp(p), offset):
                    works = message.works_for(offset)
                elif offset >= self.fed.get(p, 0):  # not a re-fetch: skipped as done?
                    skipped.append((p, offset))
                if works is not None:
                    self.fed[p] = max(self.fed.get(p, 0), offset + 1)
                batch.append(ev.Incoming(tp(p), offset, size=64, works=works))
                room -= 1
                if room <= 0:
                    break
        if not batch:
            return
        effects = self.handle(ev.Fetched(batch))
        refused = {e.partition[1]: e.offset for e in effects if isinstance(e, ev.PauseAt)}
        paused = {p for e in effects if isinstance(e, ev.Pause) for _, p in e.partitions}
        for p, offset in skipped:
            if p in paused or (p in refused and refused[p] <= offset):
                continue  # not skipped: it will be read again
            self.fed[p] = max(self.fed.get(p, 0), offset + 1)
            self.world.truth.skipped(p, offset, self.id, self.world.scheduler.now)

    # -- the group ------------------------------------------------------------------------

    def assign(self, partitions: list[int]) -> None:
        if not self.alive:
            return
        for p in partitions:
            committed, _ = self.world.broker.read_note(p)
            self.positions[p] = max(committed, 0)
            self.fed.pop(p, None)
            self.paused.discard(p)
            self.world.truth.assigned(self.id, p)
        self.handle(ev.Assigned([tp(p) for p in partitions], self.world.broker.partitions))

    def revoke(self, partitions: list[int]) -> None:
        self.ops.append(("revoke", partitions))
        self._next_op()

    def terminate(self) -> None:
        """SIGTERM: stop fetching, drain within the grace period, commit, leave."""
        self.ops.append(("shutdown", []))
        self._next_op()

    def _next_op(self) -> None:
        if not self.alive or self.drain is not None or not self.ops:
            return
        kind, partitions = self.ops.popleft()
        settings = self.world.settings
        if kind == "shutdown":
            self.world.coordinator.shutting_down(self.group_id)
            partitions, seconds = sorted(self.positions), settings.shutdown_grace_seconds
        else:
            partitions = [p for p in partitions if p in self.positions]
            seconds = settings.revoke_drain_seconds
        t = self.world.scheduler.now
        drain = self.drain = Drain(kind, partitions, t + seconds)
        self.world.scheduler.at(t + seconds, self._drain_deadline, drain)
        deadline = self.clock.monotonic(t) + seconds
        self.handle(ev.Revoking([tp(p) for p in partitions], deadline))

    def _drain_deadline(self, drain: Drain) -> None:
        if self.drain is drain and drain.state == "draining":
            drain.state = "ending"
            self._end_drain(drain)

    def _end_drain(self, drain: Drain) -> None:
        if not self.alive or self.drain is not drain or drain.state != "ending":
            return
        drain.state = "committing"
        effects = self.handle(ev.Revoked([tp(p) for p in drain.partitions]))
        if not any(isinstance(e, ev.Commit) and e.sync for e in effects):
            self._let_go(drain)

    def _let_go(self, drain: Drain) -> None:
        if not self.alive or self.drain is not drain or drain.state != "committing":
            return
        drain.state = "done"
        self.handle(ev.LetGo([tp(p) for p in drain.partitions]))
        for p in drain.partitions:
            self.positions.pop(p, None)
            self.paused.discard(p)
        self.drain = None
        if drain.kind == "shutdown":
            self.world.coordinator.leave(self.group_id)
            self.alive = False
            self.stopped = True
            self.world.stopped(self)
            return
        self.world.coordinator.revoked(self.group_id, drain.partitions)
        self._next_op()
        self.maybe_fetch()

    def lose(self, partitions: list[int]) -> None:
        """The group took these partitions away (session lost): nothing is committed."""
        if not self.alive:
            return
        for p in partitions:
            self.positions.pop(p, None)
            self.paused.discard(p)
        if self.drain is not None:  # a drain of lost partitions is over
            self.drain.partitions = [p for p in self.drain.partitions if p not in partitions]
        self.ops = deque((k, [p for p in ps if p not in partitions]) for k, ps in self.ops)
        self.handle(ev.LetGo([tp(p) for p in partitions], lost=True))

    def rejoin(self) -> None:
        if not self.alive:
            return
        self._rejoins += 1
        self.group_id = f"{self.id}/{self._rejoins}"
        self.world.coordinator.join(self.group_id, self.instance)

    def kill(self) -> None:
        self.alive = False
