"""Which source alerts of inhibit rules fire, shared by every replica through a compacted topic.

Sources and targets sit on different partitions owned by different replicas, so the
replica that reads a source event tells every other one: it writes the source's state to
`kafka.firing_topic` (default `streamer.firing`, compacted, created by `streamer run` when
missing and the rules have inhibit rules; a reload that adds the first ones does not create
it: create it beforehand, or restart), keyed by the source's fingerprint (its labels,
streamer/inhibition.py), and every replica follows that topic whole (`TopicFollower`,
`window_seconds=None`, outside the consumer group) into its board of firing sources
(`FiringSources`).

- What is written: for an alert event whose labels match the source side of a rule in
  force, `{"labels", "at", "until"}` (JSON) while it fires, a tombstone once it resolves
  (its status is RESOLVED, or its `ends_at` has passed). `until` is the event's `ends_at`
  when it has one, else the time of writing plus `inhibition.resolve_timeout_seconds`
  (Alertmanager's `resolve_timeout`, 5 min): a source whose resolve never comes stops
  inhibiting then. Firing events resent more often than that keep it firing. Events that
  match no rule's source side write nothing (the firehose costs no produce).
- Write order (no loss of state across a kill): the record is produced when the source
  event is routed, before its offset can be committed, and the engine waits for every
  record produced so far to be acknowledged before it sends a commit (`before_commit`,
  bounded by `FLUSH_SECONDS`). A replica killed before the commit leaves the offset
  uncommitted: the next owner reads the event again and writes the state again. Records of
  one source are written in its partition's order, so the topic's latest record is the
  source's latest state. If acknowledgements do not come within `FLUSH_SECONDS` (the
  firing topic alone unwritable) the commit goes on, with a warning: the state may be lost
  (a firing: its targets are delivered; a resolve: they stay quiet until `until`). Later
  commits do not wait for those records again, only for records produced since.
- Fail open (README, "Inhibition"): while the topic cannot be read (`failing_since`), and
  from the start until it has been read to its end once, nothing is inhibited: targets are
  delivered. An alert that wakes someone beats one that is lost. At start the engine waits
  at most `inhibition.startup_read_seconds` for the topic to be read before consuming.

The writing replica also applies its own record at once, so a target right behind its
source on the same replica is inhibited without waiting for the follower; the follower
reads the same record later (idempotent). Targets kept quiet are held in the same topic,
under keys of their own, until released (streamer/held_targets.py).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from confluent_kafka import KafkaError, Message

from streamer.config import Config
from streamer.held_targets import HELD_PREFIX, HeldTargets
from streamer.inhibition import (
    FiringSource,
    FiringSources,
    Inhibition,
    InhibitRule,
    alert_labels,
    fingerprint,
    source_state,
)
from streamer.kafka_clients import follower_settings, kafka_settings
from streamer.silence_book import ensure_topic
from streamer.telemetry import Telemetry
from streamer.topic_follower import Followers, Follows, following, read_to_now

log = logging.getLogger(__name__)

__all__ = ["FiringState", "source_record"]

FLUSH_SECONDS = 5.0  # a commit waits at most this long for firing records' acknowledgements


class Produces(Protocol):
    """What the state needs of a confluent_kafka `Producer`."""

    def produce(self, topic: str, *args: Any, **kwargs: Any) -> None: ...
    def flush(self, timeout: float) -> int: ...


def source_record(
    event: Mapping[str, Any], labels: Mapping[str, str], now: float, resolve_timeout: float
) -> bytes | None:
    """The firing topic's value for a source alert event at `now` (None: a tombstone)."""
    source = source_state(event, labels, now, resolve_timeout)
    if source is None:
        return None
    record = {"labels": dict(source.labels), "at": source.at, "until": source.until}
    return json.dumps(record, ensure_ascii=False, sort_keys=True).encode()


def _source_of(value: bytes) -> FiringSource:
    record = json.loads(value)
    labels = record["labels"]
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise ValueError("labels: not a map of texts")
    at, until = float(record["at"]), float(record["until"])
    if not (math.isfinite(at) and math.isfinite(until)):  # `until` inf: inhibits forever
        raise ValueError("at, until: not finite times")
    return FiringSource(labels, at, until)


class FiringState:
    """The board of firing sources as the topic says, and the writer of this replica's
    sources. `observe` and `inhibition` run on the poll thread; the follower feeds the board
    from its own thread."""

    def __init__(
        self,
        topic: str,
        producer: Produces | None,
        follower: Callable[[Callable[[Message], None]], Follows],
        *,
        resolve_timeout: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.topic, self.producer, self.resolve_timeout = topic, producer, resolve_timeout
        self.clock, self.wall_clock = clock, wall_clock
        self._lock = threading.Lock()
        self._board = FiringSources()
        self._started = clock()
        self._read_once = False  # the topic was read to its end once (else: fail open)
        self._unacked = 0  # records produced, not acknowledged yet
        self._produced = 0  # records produced so far
        self._given_up = 0  # `_produced` when a commit last stopped waiting for them
        self._failed_writes = 0
        self._open_said = False  # a warning said inhibition fails open
        self.held = HeldTargets.beside(self)  # inhibited targets, under keys of their own
        self.follower = follower(self._read)

    @classmethod
    def following(
        cls,
        settings: Mapping[str, Any],
        topic: str,
        producer: Produces | None,
        resolve_timeout: float = 300.0,
        followers: Followers | None = None,
    ) -> FiringState:
        follower = following(settings, topic, window_seconds=None, followers=followers)
        return cls(topic, producer, follower, resolve_timeout=resolve_timeout)

    @classmethod
    def of(
        cls, config: Config, producer: Produces | None, followers: Followers | None = None
    ) -> FiringState:
        """The configured firing topic (created, compacted, when missing and the rules have
        inhibit rules), followed (by `followers` when given); written with `producer`."""
        kafka = config.file.kafka
        try:  # only where inhibit rules are used: no topic (nor ACL warning) for others
            if config.rules.inhibit_rules and ensure_topic(
                kafka_settings(config), kafka.firing_topic
            ):
                log.info("created the firing topic %s (compacted)", kafka.firing_topic)
        except Exception as e:  # fail open: the follower reports it, nothing is inhibited
            log.warning(
                "the firing topic %s could not be checked or created (%s)",
                kafka.firing_topic,
                e,
                extra={"topic": kafka.firing_topic},
            )
        timeout = config.file.inhibition.resolve_timeout_seconds
        settings = follower_settings(config)
        return cls.following(settings, kafka.firing_topic, producer, timeout, followers)

    # -- the follower's side (its thread) -------------------------------------------------

    def _read(self, message: Message) -> None:
        key, value = message.key(), message.value()
        if not key:
            return
        fp = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
        if fp.startswith(HELD_PREFIX):  # a held target's record (held_targets.py)
            self.held.read(fp, value, message.offset() or 0)
            return
        if value is None:
            self.take(fp, None)
            return
        try:
            source = _source_of(value if isinstance(value, bytes) else value.encode())
        except (ValueError, KeyError, TypeError, RecursionError) as e:
            log.warning(
                "%s[%d]@%d is not a firing record, skipped: %s",
                self.topic,
                message.partition() or 0,
                message.offset() or 0,
                e,
                extra={"topic": self.topic},
            )
            return
        self.take(fp, source)

    def take(self, fp: str, source: FiringSource | None) -> None:
        """The latest word on source `fp` (None: resolved)."""
        with self._lock:
            if source is None:
                self._board.resolve(fp)
                self.held.changed()  # its targets may be released
            else:
                self._board.fire(source)

    # -- the poll thread's side -----------------------------------------------------------

    def observe(self, event: Mapping[str, Any], rules: tuple[InhibitRule, ...]) -> str | None:
        """Writes the state of `event` if it is a source alert of one of `rules`; its
        fingerprint (None: not a source, nothing written)."""
        if not rules:
            return None
        labels = alert_labels(event)
        if labels is None or not any(rule.matches_source(labels) for rule in rules):
            return None
        fp = fingerprint(labels)
        value = source_record(event, labels, self.wall_clock(), self.resolve_timeout)
        self.take(fp, None if value is None else _source_of(value))
        if self.producer is not None:
            self._produce(fp, value)
        return fp

    def _produce(
        self, fp: str, value: bytes | None, acked: Callable[[int | None], None] | None = None
    ) -> bool:
        # Never raises: a source event must not be dead-lettered because its state could
        # not be queued (the producer's queue full: wait for it once, then give up, said);
        # `acked`: told the record's offset once acknowledged (None: not written)
        def delivered(error: KafkaError | None, message: Message) -> None:
            self._acknowledged(error, message)
            if acked is not None:
                acked(None if error is not None else message.offset())

        for attempt in (1, 2):
            try:
                self.producer.produce(  # type: ignore[union-attr]
                    self.topic, key=fp.encode(), value=value, on_delivery=delivered
                )
            except BufferError:
                if attempt == 1:
                    self.producer.flush(FLUSH_SECONDS)  # type: ignore[union-attr]
                    continue
            except Exception as e:
                log.warning("a firing record for %s was not written: %s", self.topic, e)
                return False
            else:
                self._unacked += 1
                self._produced += 1
                return True
        self._failed_writes += 1
        log.warning(
            "a firing record for %s was not written: the producer's queue stays full",
            self.topic,
            extra={"topic": self.topic},
        )
        return False

    def _acknowledged(self, error: KafkaError | None, message: Message) -> None:
        # on the thread that polls the producer (the poll thread: producer.poll/flush)
        self._unacked -= 1
        if error is not None:
            self._failed_writes += 1
            log.warning(
                "a firing record for %s could not be written (%s): other replicas may not "
                "know this source's state",
                self.topic,
                error.str(),
                extra={"topic": self.topic},
            )

    def before_commit(self) -> None:
        """Every firing record produced so far acknowledged (bounded), so a committed
        source event never outlives its state (see the module docstring)."""
        if self._unacked <= 0 or self.producer is None:
            return
        if self._produced == self._given_up:
            # every record still unacknowledged was given up on by an earlier commit: waiting
            # again would stall the poll thread FLUSH_SECONDS at every commit until they time
            # out (message.timeout.ms, 5 min) while the firing topic cannot be written
            return
        left = self.producer.flush(FLUSH_SECONDS)
        if left:
            self._given_up = self._produced
            log.warning(
                "%d records (firing state or dead letters) not acknowledged within %.0f s; "
                "committing anyway: a source's firing state may be lost",
                left,
                FLUSH_SECONDS,
                extra={"topic": self.topic},
            )

    def inhibition(
        self, rules: tuple[InhibitRule, ...], labels: Mapping[str, str]
    ) -> Inhibition | None:
        """Which rule and firing source inhibit an alert with `labels` now (None: none, or
        the topic is not readable: fail open)."""
        if not rules or not self.readable():
            return None
        with self._lock:
            self._board.use_rules(rules)
            return self._board.inhibition(rules, labels, self.wall_clock())

    def readable(self) -> bool:
        """Read to its end once, and not failing now; else inhibition fails open."""
        if not self._read_once:
            self._read_once = self.follower.caught_up(self._started)
        readable = self._read_once and self.follower.failing_since() is None
        if readable == self._open_said:  # changed: say so once
            self._open_said = not readable
            if readable:
                log.info("%s reads: inhibition applies", self.topic)
            else:
                log.warning(
                    "%s cannot be read (%s): nothing is inhibited until it reads (fail open: "
                    "targets are delivered)",
                    self.topic,
                    self.follower.problem(),
                    extra={"topic": self.topic},
                )
        return readable

    def read_to_now(self, timeout: float, stop: threading.Event | None = None) -> bool:
        """Waits (bounded) until every record written before now is read."""
        if not read_to_now(self.follower, self.clock, timeout, stop):
            return False
        self._read_once = True
        return True

    def wait_read(self, timeout: float, stop: threading.Event | None = None) -> bool:
        """`read_to_now`, and when it did not, a warning: nothing is inhibited until the
        topic is read (fail open)."""
        if self.read_to_now(timeout, stop):
            return True
        log.warning(
            "the firing topic %s was not read within %.0f s (%s): nothing is inhibited until "
            "it is (targets are delivered)",
            self.topic,
            timeout,
            self.follower.problem(),
            extra={"topic": self.topic},
        )
        return False

    def sources(self) -> list[FiringSource]:
        """Every source firing now, as read so far."""
        with self._lock:
            self._board.expire(self.wall_clock())
            return list(self._board)

    def firing(self, rules: tuple[InhibitRule, ...]) -> list[dict[str, Any]]:
        """What inhibits right now, per rule and source (for `/pending` and the gauge)."""
        now = self.wall_clock()
        with self._lock:
            self._board.expire(now)
            sources = list(self._board)
        out = []
        for rule in rules:
            for source in sources:
                if rule.matches_source(source.labels):
                    out.append(
                        {
                            "rule": rule.name,
                            "source": source.fingerprint,
                            "labels": dict(source.labels),
                            "firing_for_seconds": round(max(0.0, now - source.at), 1),
                            "until_in_seconds": round(source.until - now, 1),
                        }
                    )
        return out

    def show(
        self,
        telemetry: Telemetry,
        rules: Callable[[], tuple[InhibitRule, ...]],
        silences: Any = None,
    ) -> None:
        """`/pending` lists the firing sources of `rules()` (the rules in force) under
        `inhibiting`; a gauge counts them per rule, another says whether the topic reads
        (0: nothing is inhibited, fail open); and the held targets (`silences` and `rules()`
        keep them quiet)."""
        pending = telemetry.pending
        telemetry.pending = lambda: {**pending(), "inhibiting": self.firing(rules())}

        def per_rule() -> list[tuple[float, dict[str, str]]]:
            counts = {rule.name: 0 for rule in rules()}
            for source in self.firing(rules()):
                counts[str(source["rule"])] += 1
            return [(float(n), {"rule": rule}) for rule, n in counts.items()]

        telemetry.gauge("streamer.inhibition.sources_firing", per_rule)
        telemetry.gauge("streamer.inhibition.readable", lambda: [(float(self.readable()), {})])
        self.held.show(telemetry, silences, rules)

    def close(self) -> None:
        self.follower.close()
