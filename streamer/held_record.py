"""A held target's record in the firing topic (streamer/held_targets.py): its key, what it
holds, and how a record read back is checked before it can ever be sent.

- **Keyed by its state's key.** `held\\x1f<destination>\\x1f<deduplication key>`; a record
  whose content names another key than the one it is filed under is not one (releasing it
  would tombstone the other key and send it again at every look).
- **Sent as written, only if it is an alert event.** Its body is checked as incident.io's
  payload (`AlertEventPayload`, a firing, its field limits) with the record's
  deduplication key; anything else is skipped with a warning (never POSTed).
- **It ends.** `until`: the target event's `ends_at`, else the time of holding plus
  `inhibition.resolve_timeout_seconds`, as for sources. A target past it has ended: it is
  dropped (tombstoned), never released as firing.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Protocol

from confluent_kafka import TopicPartition

from streamer.alert_event import FIELD_LIMITS, payload_errors
from streamer.ledger import OrderingKey, Partition
from streamer.silence_index import labels_of

__all__ = [
    "HELD_PREFIX",
    "NOWHERE",
    "At",
    "HeldTarget",
    "HeldWrite",
    "Produce",
    "Silences",
    "TakeHighs",
    "held_key",
    "high_watermarks",
    "releasable",
    "until_of",
]

HIGH_TIMEOUT_SECONDS = 2.0  # a take's high watermark: the broker's answer, waited this long
HIGH_AGAIN_SECONDS = 5.0  # not answered: asked again this much later (released meanwhile: none)

HELD_PREFIX = "held\x1f"


def held_key(key: OrderingKey) -> str:
    return f"{HELD_PREFIX}{key.destination}\x1f{key.deduplication_key}"


def _time(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name}: not a time")
    if not math.isfinite(float(value)):
        raise ValueError(f"{name}: not a finite time")
    return float(value)


@dataclass(frozen=True)
class HeldTarget:
    """An inhibited delivery's state, as written to the firing topic."""

    destination: str
    deduplication_key: str
    route: str
    body: Mapping[str, Any]
    alert_labels: Mapping[str, str]
    labels: Mapping[str, Any] | None  # what silences test
    topic: str
    partition: int
    offset: int
    event_time: float | None = None
    until: float | None = None  # when it ends if nothing says so before (None: old record)

    @property
    def key(self) -> OrderingKey:
        return OrderingKey(self.destination, self.deduplication_key)

    @property
    def source(self) -> Partition:
        return (self.topic, self.partition)

    def ends(self, resolve_timeout: float) -> float | None:
        """When it has ended: `until`; a record written without one, its event time plus
        `resolve_timeout`; None: unknown (released as before)."""
        if self.until is not None:
            return self.until
        return None if self.event_time is None else self.event_time + resolve_timeout

    def encode(self) -> bytes:
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True, default=str).encode()

    @classmethod
    def decode(cls, value: bytes, key: str | None = None) -> HeldTarget:
        """The record `value` filed under `key` (checked when given); ValueError if it is
        not a held target's."""
        try:
            r = json.loads(value)
            if not isinstance(r, dict):
                raise ValueError("not a map")
            target = cls._of(r)
        except (KeyError, TypeError, OverflowError, RecursionError) as e:
            raise ValueError(f"{type(e).__name__}: {e}") from None
        if key is not None and held_key(target.key) != key:
            raise ValueError("its destination and deduplication key are not its record key's")
        body = dict(target.body)
        # (an empty key, as routing keys a delivery without one: OrderingKey(dest, ""))
        if body.get("status") != "firing" or (body.get("deduplication_key") or "") != (
            target.deduplication_key
        ):
            raise ValueError("body: not a firing of its deduplication key")
        errors = payload_errors(body, require_deduplication_key=bool(target.deduplication_key))
        over = [f for f, limit in FIELD_LIMITS.items() if len(str(body.get(f) or "")) > limit]
        if errors or over:
            said = "; ".join([e.message for e in errors] + [f"{f}: too long" for f in over])
            raise ValueError(f"body: not an alert event: {said}")
        return target

    @classmethod
    def _of(cls, r: Mapping[str, Any]) -> HeldTarget:
        labels, body = r["alert_labels"], r["body"]
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise ValueError("alert_labels: not a map of texts")
        if not isinstance(body, dict) or not isinstance(r.get("labels") or {}, dict):
            raise ValueError("body, labels: not maps")
        offset, partition = r["offset"], r["partition"]
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in (offset, partition)):
            raise ValueError("partition, offset: not whole numbers")
        return cls(
            str(r["destination"]),
            str(r["deduplication_key"]),
            str(r["route"]),
            body,
            labels,
            r.get("labels"),
            str(r["topic"]),
            partition,
            offset,
            _time(r.get("event_time"), "event_time"),
            _time(r.get("until"), "until"),
        )

    @classmethod
    def routed(
        cls,
        key: OrderingKey,
        d: Any,
        own: Mapping[str, str],
        event: Mapping[str, Any],
        source: Any,
        until: float,
    ) -> HeldTarget:
        """A `RoutedAlert` `d` of `key` (of the alert `event` read at `source`), held."""
        event_time = event.get("event_time")
        return cls(
            key.destination,
            key.deduplication_key,
            d.route,
            d.payload.model_dump(mode="json", exclude_none=True),
            own,
            labels_of(event),
            source.topic,
            source.partition,
            source.offset,
            event_time.timestamp() if isinstance(event_time, datetime) else None,
            until,
        )

    @classmethod
    def of(cls, key: OrderingKey, delivery: Any, until: float | None = None) -> HeldTarget:
        """A routed `Delivery` (streamer/dispatch.py) of `key`, inhibited at its turn."""
        m = delivery.message
        return cls(
            key.destination,
            key.deduplication_key,
            delivery.route,
            dict(delivery.payload),
            dict(delivery.alert_labels or {}),
            delivery.labels,
            m.topic,
            m.partition,
            m.offset,
            delivery.event_time,
            until,
        )


def until_of(event: Mapping[str, Any], otherwise: float) -> float:
    """A target alert event's end: its `ends_at`, else `otherwise` (held at + resolve_timeout)."""
    alert = event.get("alert")
    ends_at = alert.get("ends_at") if isinstance(alert, Mapping) else None
    return ends_at.timestamp() if isinstance(ends_at, datetime) else otherwise


def high_watermarks(
    consumer: Any, partitions: Collection[Partition], timeout: float
) -> dict[Partition, int] | None:
    """`partitions`' high watermarks as the broker says now (a request each, at most
    `timeout` s: the consumer's cached value may be from an earlier assignment, older than
    what the previous owner wrote since); a partition not answered is missing. None: this
    consumer cannot tell (a test double)."""
    ask = getattr(consumer, "get_watermark_offsets", None)
    if ask is None:
        return None
    high = {}
    for topic, partition in partitions:
        try:
            marks = ask(TopicPartition(topic, partition), timeout=timeout, cached=False)
        except Exception:  # (not known: the release waits, asked again)
            continue
        if marks is not None and marks[1] >= 0:
            high[(topic, partition)] = int(marks[1])
    return high


class TakeHighs:
    """Per partition taken, its high watermark as the broker said after the take (asked
    once per take, only for a partition with a held target to release, `HIGH_TIMEOUT_SECONDS`
    at most; not answered: asked again `HIGH_AGAIN_SECONDS` later, and meanwhile it is
    missing, so its releases wait; the first not answered ends a look's asking).
    Forgotten when the partition is let go or taken again.
    The poll thread's."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._high: dict[Partition, int] = {}
        self._again: dict[Partition, float] = {}  # not answered: asked again from then

    def taken(self, partitions: Iterable[Partition]) -> None:
        for p in partitions:
            self._high.pop(p, None)
            self._again.pop(p, None)

    def owned(self, partitions: Collection[Partition]) -> None:
        self._high = {p: h for p, h in self._high.items() if p in partitions}
        self._again = {p: t for p, t in self._again.items() if p in partitions}

    def of(self, consumer: Any, held: Iterable[HeldTarget]) -> dict[Partition, int] | None:
        """The high watermarks of `held`'s partitions known for their take (None: this
        consumer cannot tell); asks the broker about those not asked yet."""
        sources, now = {h.source for h in held}, self._clock()
        if getattr(consumer, "get_watermark_offsets", None) is None:
            return None
        for p in sorted(
            q for q in sources if q not in self._high and self._again.get(q, now) <= now
        ):
            answered = high_watermarks(consumer, [p], HIGH_TIMEOUT_SECONDS) or {}
            if p not in answered:  # (the broker not answering: one wait per look, not per one)
                self._again[p] = now + HIGH_AGAIN_SECONDS
                break
            self._high[p] = answered[p]
        return {p: self._high[p] for p in sources if p in self._high}


def releasable(
    held: Iterable[HeldTarget],
    since: Mapping[Partition, float],
    caught_up: Callable[[float], bool],
    quiet: Callable[[HeldTarget], bool],
) -> list[HeldTarget]:
    """The held targets this member may release now: of a partition it owns (`since`: when
    it took it), the follower having read every record acknowledged before then, nothing
    keeping them quiet (`quiet`: inhibited or silenced now). Pure."""
    return [h for h in held if h.source in since and caught_up(since[h.source]) and not quiet(h)]


# what the topic takes: key, value (None: a tombstone), and what to call with its offset
# once acknowledged (None: not written); False when it could not be queued
Produce = Callable[[str, bytes | None, Callable[[int | None], None]], bool]
At = tuple[Partition | None, int]  # a state's event (None, -1: not known)
NOWHERE: At = (None, -1)


class Silences(Protocol):
    def matching(self, labels: Mapping[str, Any], at: Any) -> list[Any]: ...


@dataclass
class HeldWrite:
    """A write of a key's state by this member (held_targets.py, "Local first")."""

    target: HeldTarget | None  # None: a tombstone
    acked: int | None = None  # its record's offset, once acknowledged
    read: int = -1  # the key's latest offset the follower read since (acked or not)
    failed: int = 0  # attempts not written (kept, written again at the next look)
    failing: bool = False  # its latest attempt was not written
    # the state's place: the event held, or the one that settled it (-1: not known); a
    # failing write is dropped once its partition is let go, or a newer record is read
    at: At = NOWHERE

    def superseded_by(self, target: HeldTarget | None) -> bool:
        """Failing, and `target` (read) is a newer state of its partition: another's."""
        return (
            self.failing
            and target is not None
            and target.source == self.at[0]
            and (target.offset > self.at[1])
        )
