"""`streamer dlq replay`: put dead letters back where they came from, after a fix.

It reads the dead-letter topic from the beginning up to its end *as it was when the
replay started* (so letters written meanwhile, including by this replay's own failures,
are not read again), keeps those matching the filters, and re-produces each one's
original key, value and headers to its source topic (the `streamer.source_topic`
header) or to `--to-topic`. The running service then consumes it like any event.

The replay reads with its own throwaway consumer and commits nothing, so it can be run
again; every run re-sends what matches, so narrow it with --since/--until/--key/--reason
rather than replaying twice. A `streamer-replayed-from` header says where a replayed
message came from (`topic[partition]@offset` of its dead letter).
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from streamer.config import Config
from streamer.dead_letters import PREFIX, read_headers
from streamer.engine import kafka_settings

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

    def as_json(self) -> dict[str, Any]:
        return {
            "scanned": self.scanned,
            "matched": self.matched,
            "replayed": self.replayed,
            "by_reason": dict(self.by_reason),
            "to_topics": dict(self.to_topics),
            "skipped_without_source_topic": self.skipped_no_source,
        }


def replay(
    config: Config,
    wanted: ReplayFilter,
    *,
    to_topic: str | None = None,
    dry_run: bool = False,
    timeout: float = 10.0,
) -> ReplayReport:
    dlq = config.file.kafka.dead_letter_topic
    settings = kafka_settings(config)
    consumer = Consumer(
        {
            **settings,
            "group.id": f"streamer-replay-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    producer = Producer(settings)
    report = ReplayReport()
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
            letter = read_headers(headers)
            key = message.key()
            key_bytes = key.encode() if isinstance(key, str) else key
            if not wanted.matches(key_bytes, letter):
                continue
            report.matched += 1
            report.by_reason[letter.get("reason", "?")] += 1
            target = to_topic or letter.get("source_topic")
            if not target:
                report.skipped_no_source += 1
                continue
            report.to_topics[target] += 1
            if dry_run:
                continue
            original: list[tuple[str, str | bytes | None]] = [
                (k, v) for k, v in headers if not k.startswith(PREFIX) and k != REPLAYED_FROM
            ]
            original.append((REPLAYED_FROM, f"{dlq}[{partition}]@{offset}".encode()))
            producer.produce(target, key=key_bytes, value=message.value(), headers=original)
            producer.poll(0)
            report.replayed += 1
        if producer.flush(timeout * 3) != 0:
            raise RuntimeError("some replayed messages were not acknowledged; run again")
    finally:
        consumer.close()
    return report
