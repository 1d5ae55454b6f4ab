"""The Kafka and schema-registry clients, configured one way for every command.

The engine, `dlq replay`, `send` and the start-up checks all build their clients here,
so a setting (a SASL mechanism, a registry's TLS files) applies to all of them or none.
Secrets come from `secret_properties` (env or files), never from the file itself. What
no-loss depends on (manual commits, offsets stored by us) is set last, so no property
in the file can switch it off.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from streamer.config import Config
from streamer.dead_letters import SourceMessage
from streamer.decoding import EventDecoder, RegistryWriterSchemas, load_schema
from streamer.ledger import Partition

log = logging.getLogger(__name__)


def registry_of(config: Config) -> RegistryWriterSchemas | None:
    """The schema registry client the configuration asks for, if any."""
    registry = config.file.schema_registry
    if registry is None:
        return None
    return RegistryWriterSchemas.connect(
        registry.url,
        **registry.properties,
        **{k: v.get_secret_value() for k, v in config.registry_secrets.items()},
    )


def decoders_of(config: Config, registry: RegistryWriterSchemas | None) -> dict[str, EventDecoder]:
    """A decoder per configured topic, by topic name."""
    decoders = {}
    for topic in config.file.topics:
        writer = (
            load_schema(config.path.parent / topic.writer_schema) if topic.writer_schema else None
        )
        decoders[topic.name] = EventDecoder(
            topic.format, config.reader_schema, registry=registry, writer_schema=writer
        )
    return decoders


def kafka_settings(config: Config) -> dict[str, Any]:
    """librdkafka settings shared by the consumer, the dead-letter producer and start-up
    checks; secrets come from the environment or files, never from the file itself."""
    return {
        "bootstrap.servers": config.file.kafka.bootstrap_servers,
        **config.file.kafka.properties,
        **{k: v.get_secret_value() for k, v in config.kafka_secrets.items()},
    }


def follower_settings(config: Config) -> dict[str, Any]:
    """The settings of a reader of a topic read in full (topic_follower.py)."""
    return {
        **kafka_settings(config),
        "group.id": config.file.kafka.group_id,  # one the ACLs allow; never joined
        "logger": logging.getLogger("librdkafka"),
    }


def consumer_settings(config: Config) -> dict[str, Any]:
    """Defaults an operator may override (properties:), then what no-loss depends on."""
    kafka = config.file.kafka
    instance = os.environ.get(kafka.group_instance_id_env) if kafka.group_instance_id_env else None
    if kafka.group_instance_id_env and not instance:
        log.warning(
            "kafka.group_instance_id_env names %s, which is not set: this member joins "
            "without a group.instance.id (dynamic membership)",
            kafka.group_instance_id_env,
        )
    return {
        "auto.offset.reset": "earliest",
        # Static members rejoin with their last assignment and no rebalance. Under the
        # cooperative protocol a partition revoked in its first round waits for a second
        # round; a member killed in between rejoins with its old assignment and that round
        # never comes: the partition stays unowned (seen in the kill -9 test). An eager
        # assignor hands out every partition in one round, so static members use it. It
        # follows the file, not the variable: one group cannot mix eager and cooperative
        # members (librdkafka refuses), and every member reads the same file.
        "partition.assignment.strategy": (
            "roundrobin" if kafka.group_instance_id_env else "cooperative-sticky"
        ),
        # a killed member's partitions move on after 10 s, not librdkafka's 45
        "session.timeout.ms": 10_000,
        "heartbeat.interval.ms": 2_000,
        **({"group.instance.id": instance} if instance else {}),
        **kafka_settings(config),
        "group.id": kafka.group_id,
        "enable.auto.commit": False,  # offsets move only behind terminal events
        "enable.auto.offset.store": False,
    }


def make_consumer(
    config: Config,
    *,
    on_commit: Callable[[KafkaError | None, list[TopicPartition]], None],
    on_statistics: Callable[[str], None],
) -> Consumer:
    """The service's consumer: its settings, commit answers, lag statistics, JSON logs."""
    return Consumer(
        {
            "statistics.interval.ms": 5000,  # consumer lag per partition, for the metric
            **consumer_settings(config),
            "on_commit": on_commit,
            "logger": logging.getLogger("librdkafka"),  # JSON, secrets masked
            "stats_cb": on_statistics,
        }
    )


def make_producer(config: Config) -> Producer:
    """The dead-letter producer (`producer_settings`), logging as JSON."""
    return Producer({**producer_settings(config), "logger": logging.getLogger("librdkafka")})


def producer_settings(config: Config) -> dict[str, Any]:
    """The dead-letter producer: a letter is terminal only once every replica has it."""
    return {**kafka_settings(config), "enable.idempotence": True, "acks": "all"}


def source_message(message: Message) -> SourceMessage | None:
    """A fetched record as plain values (None for records without coordinates). Made for
    every message fetched: the common case (bytes, no headers) takes no conversions."""
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    if topic is None or partition is None or offset is None:
        return None
    raw = message.headers()
    headers = _header_pairs(raw) if raw else ()
    key, value = message.key(), message.value()
    if isinstance(key, str):
        key = key.encode()
    if isinstance(value, str):
        value = value.encode()
    return SourceMessage(topic, partition, offset, key, value, headers)


def _header_pairs(
    raw: dict[str, str | bytes | None] | list[tuple[str, str | bytes | None]],
) -> tuple[tuple[str, bytes | None], ...]:
    pairs = raw.items() if isinstance(raw, dict) else raw
    return tuple((name, v.encode() if isinstance(v, str) else v) for name, v in pairs)


def topic_partitions(partitions: list[Partition]) -> list[TopicPartition]:
    return [TopicPartition(topic, partition) for topic, partition in partitions]


def names(partitions: list[TopicPartition] | list[Partition]) -> str:
    """`topic[0], topic[3]` for log lines."""
    out = []
    for p in partitions:
        topic, number = (p.topic, p.partition) if isinstance(p, TopicPartition) else p
        out.append(f"{topic}[{number}]")
    return ", ".join(out) or "nothing"


class PartitionCounts:
    """How many partitions each topic has (for rate-limit shares), asked once per topic."""

    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer
        self._counts: dict[str, int] = {}

    def total(self, topics: list[str]) -> int:
        """The partitions of these topics; 0 for a topic the broker could not tell us about."""
        for topic in topics:
            if topic not in self._counts:
                try:
                    metadata = self.consumer.list_topics(topic, timeout=5)
                    count = len(metadata.topics[topic].partitions)
                except Exception:
                    count = 0
                if count:
                    self._counts[topic] = count
        return sum(self._counts.get(topic, 0) for topic in topics)
