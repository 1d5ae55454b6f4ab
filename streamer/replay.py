"""`streamer dlq replay`: put dead letters back where they came from, after a fix.

It reads the dead-letter topic from the beginning up to its end *as it was when the
replay started* (so letters written meanwhile, including by this replay's own failures,
are not read again), keeps those matching the filters, and re-produces each one's
original key, value and headers to its source topic (the `streamer.source_topic`
header) or to `--to-topic`. The running service then consumes it like any event.

With `deliver=True` (`--deliver`) it skips the topic: each letter is decoded and routed
with the current rules and its alert events are POSTed to incident.io from here, one at
a time, under the destinations' rate limits and the failure policy. Only the route and
destination the letter names are sent (a fan-out's other deliveries went through the
first time). What still fails is reported and stays in the dead-letter topic.

The replay reads with its own throwaway consumer and commits nothing, so it can be run
again; every run re-sends what matches, so narrow it with --since/--until/--key/--reason
rather than replaying twice. A `streamer-replayed-from` header says where a replayed
message came from (`topic[partition]@offset` of its dead letter).
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from streamer.config import Config
from streamer.dead_letters import PREFIX, read_headers
from streamer.decoding import DecodeError, RegistryUnavailable
from streamer.destinations import Destinations
from streamer.failure_policy import Accepted, Backoff, FailurePolicy, RateLimited, Retry, decide
from streamer.incident_io import Answer, IncidentIoClient, PostsAlertEvents
from streamer.kafka_clients import decoders_of, kafka_settings, registry_of

REPLAYED_FROM = "streamer-replayed-from"


@dataclass(frozen=True)
class ReplayFilter:
    since: datetime | None = None
    until: datetime | None = None
    key: str | None = None
    reason: str | None = None  # a prefix: "http-4", "decode:"

    def matches(self, key: bytes | None, letter: dict[str, str]) -> bool:
        if self.key is not None and (key or b"").decode("utf-8", "replace") != self.key:
            return False
        if self.reason is not None and not letter.get("reason", "").startswith(self.reason):
            return False
        if self.since or self.until:
            try:
                at = datetime.fromisoformat(letter["dead_lettered_at"])
            except (KeyError, ValueError):
                return False
            if (self.since and at < self.since) or (self.until and at >= self.until):
                return False
        return True


@dataclass
class ReplayReport:
    scanned: int = 0
    matched: int = 0
    replayed: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)
    to_topics: Counter[str] = field(default_factory=Counter)
    skipped_no_source: int = 0
    # letters whose source topic the configuration does not name (and no --to-topic)
    skipped_unknown_topics: Counter[str] = field(default_factory=Counter)
    # deliver mode: alert events sent per destination, accepted, and what failed
    to_destinations: Counter[str] = field(default_factory=Counter)
    delivered: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        out = {
            "scanned": self.scanned,
            "matched": self.matched,
            "replayed": self.replayed,
            "by_reason": dict(self.by_reason),
            "to_topics": dict(self.to_topics),
            "skipped_without_source_topic": self.skipped_no_source,
            "skipped_unknown_topics": dict(self.skipped_unknown_topics),
        }
        if self.to_destinations or self.failed:
            out["to_destinations"] = dict(self.to_destinations)
            out["delivered"] = self.delivered
            out["failed"] = self.failed
        return out


@dataclass(frozen=True)
class Letter:
    """One dead letter: where it sits, the original message, and its streamer.* headers."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    about: dict[str, str]  # read_headers: reason, route, destination, source_topic, ...

    def original_headers(self) -> list[tuple[str, bytes]]:
        return [(k, v) for k, v in self.headers if not k.startswith(PREFIX) and k != REPLAYED_FROM]


def replay(
    config: Config,
    wanted: ReplayFilter,
    *,
    to_topic: str | None = None,
    dry_run: bool = False,
    deliver: bool = False,
    timeout: float = 10.0,
    max_attempts: int = 5,
) -> ReplayReport:
    report = ReplayReport()
    dlq = config.file.kafka.dead_letter_topic
    letters = _matching_letters(config, wanted, report, timeout)
    if deliver:
        _LetterDelivery(config, report, max_attempts, dry_run).run(letters)
        return report
    producer = Producer(kafka_settings(config))
    known = {topic.name for topic in config.file.topics}
    for letter in letters:
        target, unknown = target_topic(letter.about, to_topic, known)
        if unknown is not None:
            report.skipped_unknown_topics[unknown] += 1
            continue
        if not target:
            report.skipped_no_source += 1
            continue
        report.to_topics[target] += 1
        if dry_run:
            continue
        headers: list[tuple[str, str | bytes | None]] = [*letter.original_headers()]
        headers.append((REPLAYED_FROM, f"{dlq}[{letter.partition}]@{letter.offset}".encode()))
        producer.produce(target, key=letter.key, value=letter.value, headers=headers)
        producer.poll(0)
        report.replayed += 1
    if producer.flush(timeout * 3) != 0:
        raise RuntimeError("some replayed messages were not acknowledged; run again")
    return report


def target_topic(
    about: dict[str, str], to_topic: str | None, known: set[str]
) -> tuple[str | None, str | None]:
    """(where a letter is produced, or None) and (the unknown topic it names, or None).

    A letter's `streamer.source_topic` header is data, and a letter can be written by anyone
    who can write the dead-letter topic: without `--to-topic`, only a topic the configuration
    consumes is produced to, so a replay cannot be pointed at another application's topic."""
    if to_topic:
        return to_topic, None
    source = about.get("source_topic")
    if not source:
        return None, None
    if source not in known:
        return None, source if len(source) <= 249 else source[:248] + "…"  # Kafka's longest
    return source, None


def _matching_letters(
    config: Config, wanted: ReplayFilter, report: ReplayReport, timeout: float
) -> Iterator[Letter]:
    """The dead-letter topic up to its end at the start, filtered, in offset order."""
    dlq = config.file.kafka.dead_letter_topic
    consumer = Consumer(
        {
            **kafka_settings(config),
            "group.id": f"streamer-replay-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        metadata = consumer.list_topics(dlq, timeout=timeout)
        topic = metadata.topics.get(dlq)
        if topic is None or topic.error is not None:
            raise RuntimeError(
                f"the dead-letter topic {dlq} does not exist (kafka.dead_letter_topic)"
            )
        ends: dict[int, int] = {}
        starts = []
        for partition in topic.partitions:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(dlq, partition), timeout=timeout
            )
            if high > low:
                ends[partition] = high
                starts.append(TopicPartition(dlq, partition, low))
        consumer.assign(starts)
        while ends:
            message = consumer.poll(timeout)
            if message is None:
                raise RuntimeError(
                    f"reading {dlq} stalled for {timeout:.0f} s; nothing was committed"
                )
            partition, offset = message.partition(), message.offset()
            if message.error() is not None or partition is None or offset is None:
                continue
            if offset + 1 >= ends.get(partition, 0):
                ends.pop(partition, None)
            report.scanned += 1
            raw_headers = message.headers() or []
            pairs = raw_headers.items() if isinstance(raw_headers, dict) else raw_headers
            headers = [(k, v.encode() if isinstance(v, str) else v) for k, v in pairs]
            about = read_headers(headers)
            key = message.key()
            key_bytes = key.encode() if isinstance(key, str) else key
            if not wanted.matches(key_bytes, about):
                continue
            report.matched += 1
            report.by_reason[about.get("reason", "?")] += 1
            value = message.value()
            yield Letter(
                partition,
                offset,
                key_bytes,
                value.encode() if isinstance(value, str) else value,
                [(k, v) for k, v in headers if v is not None],
                about,
            )
    finally:
        consumer.close()


class _LetterDelivery:
    """Straight to incident.io: decode, route, POST each letter's alert events in turn.

    The same cores as the service: `Destinations` (limits, 429 pauses, holds) and the
    failure policy; time comes from the injected clocks and `sleep`.
    """

    def __init__(
        self,
        config: Config,
        report: ReplayReport,
        max_attempts: int,
        dry_run: bool,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        settings = config.file.delivery
        self.config, self.report, self.dry_run = config, report, dry_run
        self.max_attempts = max_attempts
        self.clock, self.wall_clock, self.sleep = clock, wall_clock, sleep
        self.decoders = decoders_of(config, registry_of(config))
        self.http: PostsAlertEvents = IncidentIoClient(timeout=settings.request_timeout_seconds)
        self.policy = FailurePolicy(
            Backoff(settings.backoff_base_seconds, settings.backoff_cap_seconds),
            max_retry_seconds=None,
        )
        # The full limits (no share): the running service takes its share too, and any
        # 429 that results is waited out as incident.io says.
        self.destinations = Destinations(settings)
        self.destinations.configure(config.file.destinations, config.tokens)

    def run(self, letters: Iterator[Letter]) -> None:
        try:
            for letter in letters:
                self._deliver(letter)
        finally:
            self.http.close()

    def _fail(self, letter: Letter, reason: str, destination: str = "") -> None:
        dlq = self.config.file.kafka.dead_letter_topic
        self.report.failed.append(
            {
                "letter": f"{dlq}[{letter.partition}]@{letter.offset}",
                "destination": destination or letter.about.get("destination", ""),
                "reason": reason,
            }
        )

    def _deliver(self, letter: Letter) -> None:
        topic = letter.about.get("source_topic", "")
        decoder = self.decoders.get(topic)
        if decoder is None:
            self.report.skipped_no_source += 1
            self._fail(letter, f"its source topic {topic or '?'} is not in the configuration")
            return
        try:
            event = decoder.decode(letter.value, letter.original_headers())
        except (DecodeError, RegistryUnavailable) as e:
            self._fail(letter, f"decode: {e}")
            return
        # time intervals asked about now, as the service would ask
        decision = self.config.rules.evaluate(event, datetime.fromtimestamp(self.wall_clock(), UTC))
        route, destination = letter.about.get("route"), letter.about.get("destination")

        def named(r: str, d: str | None) -> bool:  # the route the letter was written for
            return (not route or r == route) and (not destination or d == destination)

        for failure in decision.failures:
            if named(failure.route, failure.destination):
                self._fail(letter, f"{failure.code}: {failure.reason}", failure.destination or "")
        deliveries = [d for d in decision.deliveries if named(d.route, d.destination)]
        muted = [m for m in decision.muted if named(m.route, m.destination)]
        for m in muted:  # the rules say this route is quiet now: replay it after the interval
            self._fail(
                letter,
                f"muted now on route {m.route} by {m.by} {', '.join(m.intervals)}",
                m.destination,
            )
        if not deliveries and not decision.failures and not muted:
            self._fail(letter, "the current rules make no alert event of it (dropped)")
        for delivery in deliveries:
            self.report.to_destinations[delivery.destination] += 1
            if self.dry_run:
                continue
            outcome = self._post(
                delivery.destination, delivery.payload.model_dump(exclude_none=True)
            )
            if outcome is None:
                self.report.delivered += 1
                self.report.replayed += 1
            else:
                self._fail(letter, outcome, delivery.destination)

    def _post(self, destination: str, payload: dict[str, Any]) -> str | None:
        """None when incident.io accepted it, else why not."""
        state = self.destinations[destination]
        first = self.wall_clock()
        attempt = 1
        while True:
            if state.held_reason is not None:  # no use waiting for its probe here
                return f"destination held: {state.held_reason}"
            now = self.clock()
            if not state.take_slot(now):
                self.sleep(max(0.0, state.earliest_start(now) - now))
                continue
            try:
                answer: Answer | Exception = self.http.post_alert_event(
                    state.spec.url, state.spec.alert_source_config_id, state.token, payload
                )
            except Exception as e:  # the policy decides
                answer = e
            now_wall = self.wall_clock()
            decision = decide(self.policy, answer, attempt, first, now_wall)
            state.answered(
                decision,
                was_probe=state.request_ended(now, self.clock()),
                now=self.clock(),
                hold_retry=self.config.file.delivery.hold_retry_seconds,
            )
            if isinstance(decision, Accepted):
                return None
            if isinstance(decision, RateLimited):
                state.rate_limited(self.clock() + max(0.0, decision.retry_at - now_wall))
                continue
            if isinstance(decision, Retry) and attempt < self.max_attempts:
                attempt += 1
                self.sleep(decision.delay)
                continue
            reason = decision.reason
            return f"{reason} (after {attempt} attempt{'s' if attempt > 1 else ''})"
