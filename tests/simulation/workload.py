"""What the simulated producers write, and how the member shells route it into works.

A simulated message is a plain record (`SimMessage`): which alert keys it speaks for (one
or two destinations), the state it carries (`firing`/`resolved`), whether incident.io will
take its payload (`valid`), or that it is a poison pill (undecodable: a dead letter with no
key) or dropped by the rules (no works). Each alert key lives on one partition, as Kafka's
key hashing puts it. Routing is a pure function of the message, so every member routes a
message alike and the checker knows, for every offset, what "terminal" means.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any, Literal

from streamer.dead_letters import DeadLetter, SourceMessage
from streamer.ledger import OrderingKey

try:  # the machine may move `Delivery`; the shells only need to build one
    from streamer.dispatch import Delivery
except ImportError:  # pragma: no cover
    from streamer.delivery import Delivery  # type: ignore[no-redef]

log = logging.getLogger(__name__)

TOPIC = "events"
Kind = Literal["event", "poison", "dropped"]


@dataclass(frozen=True)
class AlertKey:
    destination: str  # the destination's name in the configuration
    name: str  # the deduplication key
    partition: int


@dataclass(frozen=True)
class SimMessage:
    seq: int  # production order, across partitions
    partition: int
    kind: Kind
    keys: tuple[AlertKey, ...] = ()  # one per work (two: fans out to two destinations)
    status: str = "firing"
    valid: bool = True  # False: incident.io answers 422 (a dead letter with the body)
    critical: bool = False

    def works_for(self, offset: int) -> list[tuple[OrderingKey | None, Any]]:
        """The jobs of this message at `offset`, as the engine's intake would make them."""
        source = SourceMessage(
            TOPIC, self.partition, offset, f"k{self.seq}".encode(), f"v{self.seq}".encode(), ()
        )
        if self.kind == "dropped":
            return []
        if self.kind == "poison":
            return [(None, DeadLetter(source, "decode:poison", "a simulated undecodable message"))]
        works: list[tuple[OrderingKey | None, Any]] = []
        for key in self.keys:
            payload: dict[str, Any] = {
                "title": f"{key.name} is {self.status}",
                "status": self.status if self.valid else "bogus",
                "deduplication_key": key.name,
                "metadata": {
                    "severity": "critical" if self.critical else "warning",
                    "sim_partition": self.partition,
                    "sim_offset": offset,
                    "sim_seq": self.seq,
                },
            }
            works.append(
                (
                    OrderingKey(key.destination, key.name),
                    Delivery(source, "sim", key.destination, payload),
                )
            )
        return works


@dataclass(frozen=True)
class WorkloadShape:
    partitions: int
    destinations: tuple[str, ...]
    keys: int
    messages: int
    production_seconds: float
    poison: float = 0.03
    dropped: float = 0.15
    invalid: float = 0.05
    fan_out: float = 0.05
    critical: float = 0.2
    # A message that fans out may be refused by both destinations. Off by default: the
    # dead-letter index keys letters by source offset, so the second destination's letter
    # is taken as written (an open bug; tests/test_simulation.py tracks it).
    invalid_fan_out: bool = False


def alert_keys(shape: WorkloadShape, rng: random.Random) -> list[AlertKey]:
    keys = []
    for i in range(shape.keys):
        destination = shape.destinations[i % len(shape.destinations)]
        keys.append(AlertKey(destination, f"alert-{i}", rng.randrange(shape.partitions)))
    return keys


def production(shape: WorkloadShape, rng: random.Random) -> list[tuple[float, SimMessage]]:
    """(time, message) in time order: the backlog the producers write over the run."""
    keys = alert_keys(shape, rng)
    by_partition: dict[int, list[AlertKey]] = {}
    for key in keys:
        by_partition.setdefault(key.partition, []).append(key)
    last_status: dict[str, str] = {}
    times = sorted(rng.uniform(0, shape.production_seconds) for _ in range(shape.messages))
    out = []
    for seq, at in enumerate(times):
        roll = rng.random()
        if roll < shape.poison:
            message = SimMessage(seq, rng.randrange(shape.partitions), "poison")
        elif roll < shape.poison + shape.dropped:
            message = SimMessage(seq, rng.randrange(shape.partitions), "dropped")
        else:
            key = rng.choice(keys)
            chosen = [key]
            if rng.random() < shape.fan_out:  # a second destination, same partition
                others = [
                    k for k in by_partition[key.partition] if k.destination != key.destination
                ]
                if others:
                    chosen.append(rng.choice(others))
            status = "resolved" if last_status.get(key.name) == "firing" else "firing"
            if rng.random() < 0.2:  # repeated states happen (re-notifications)
                status = last_status.get(key.name, "firing")
            last_status[key.name] = status
            message = SimMessage(
                seq,
                key.partition,
                "event",
                tuple(chosen),
                status,
                valid=(rng.random() >= shape.invalid)
                or (len(chosen) > 1 and not shape.invalid_fan_out),
                critical=rng.random() < shape.critical,
            )
        out.append((at, message))
    return out


def stale_note_production(
    shape: WorkloadShape, rng: random.Random, burst: int, kill_at: float, window: float
) -> list[tuple[float, SimMessage]]:
    """Issue 22 item 2's shape: a burst of `burst` events for destination `a` on partition 0
    (the first member's) before `kill_at`, then partition 0 stays idle (its note is never
    written again) while a backlog for `a` builds on the other partitions after the kill."""
    destination = shape.destinations[0]
    keys0 = [AlertKey(destination, f"burst-{i}", 0) for i in range(burst)]
    others = [
        AlertKey(destination, f"alert-{i}", 1 + i % (shape.partitions - 1))
        for i in range(shape.keys)
    ]
    out: list[tuple[float, SimMessage]] = []
    for i, key in enumerate(keys0):
        at = kill_at - 0.8 * window + 0.5 * window * i / max(1, burst)
        out.append((at, SimMessage(i, 0, "event", (key,), "firing")))
    start = kill_at + 1.0
    last: dict[str, str] = {}
    for j in range(shape.messages):
        key = rng.choice(others)
        status = "resolved" if last.get(key.name) == "firing" else "firing"
        last[key.name] = status
        at = start + shape.production_seconds * j / shape.messages
        out.append((at, SimMessage(burst + j, key.partition, "event", (key,), status)))
    return out
