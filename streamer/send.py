"""`streamer send`: produce monitoring events the way a well-behaved producer does.

For smoke tests in a real cluster and for load tests: an event file (JSON, as `rules test`
reads it) becomes Kafka messages in the wire format the configuration gives the topic, keyed
by the identity of the alerting thing. The invariants are the producers' rules
(README, "Writing events"):

- the key is what the built-in deduplication key is made of (`alert.fingerprint`, or
  `check.host/check.service/check.check`), so every event about one alerting thing lands in
  one partition, in order;
- `confluent` values are framed with the id the registry gives the reader schema under the
  topic's subject (`<topic>-value`, Confluent's default subject name strategy), registering it
  when it is not there yet; `single-object` with the reader schema's fingerprint; `raw` with
  the topic's writer schema;
- every message is decoded again, before anything is produced, by the decoder the service
  uses for the topic: a message `send` writes is one `streamer run` reads.

Each message gets a fresh `event_id` and the current `event_time` (so latency is measured
from the send); everything else is the file's. Clients come from `streamer.kafka_clients`.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import fastavro

from streamer.config import Config, ConfigError, Topic, load_config
from streamer.decoding import (
    SINGLE_OBJECT_MAGIC,
    DecodeError,
    EventDecoder,
    RegistryUnavailable,
    RegistryWriterSchemas,
    load_schema,
    single_object_fingerprint,
)
from streamer.errors import StreamerError
from streamer.kafka_clients import producer_settings
from streamer.templates import DEFAULT_TEMPLATES, CompiledTemplate, variables_of

__all__ = ["Message", "SendError", "encode", "identity_key", "main", "send"]

_KEY = CompiledTemplate(DEFAULT_TEMPLATES["deduplication_key"])


class SendError(StreamerError):
    """Something the user must fix (the file, the configuration, the registry); `code` is
    the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Message:
    """One Kafka message, its value kept as the parts of its framing, to show or join."""

    key: bytes
    parts: tuple[tuple[str, bytes], ...]  # (what the bytes are, the bytes)

    @property
    def value(self) -> bytes:
        return b"".join(part for _, part in self.parts)


def identity_key(event: dict[str, Any]) -> bytes:
    """The alerting thing's identity: the built-in deduplication key, rendered."""
    return _KEY.render(variables_of(event)).encode()


def _avro(schema: dict[str, Any], event: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(schema), event)
    return buffer.getvalue()


def _registry_client(config: Config) -> Any:
    registry = config.file.schema_registry
    if registry is None:
        raise SendError("the confluent format needs schema_registry: in the configuration")
    from confluent_kafka.schema_registry import SchemaRegistryClient

    secrets = {k: v.get_secret_value() for k, v in config.registry_secrets.items()}
    return SchemaRegistryClient({"url": registry.url, **registry.properties, **secrets})


def _schema_id(client: Any, subject: str, schema: dict[str, Any], register: bool) -> int:
    from confluent_kafka.schema_registry import Schema
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    avro = Schema(json.dumps(schema), "AVRO")
    try:
        if register:  # the id it already has when it is registered
            return int(client.register_schema(subject, avro))
        return int(client.lookup_schema(subject, avro).schema_id)
    except SchemaRegistryError as e:
        hint = "" if register else " (a send without --dry-run registers it)"
        raise SendError(f"the registry has no id for the schema under {subject}{hint}: {e}") from e
    except Exception as e:  # connection refused, DNS, TLS
        raise SendError(f"the schema registry is unreachable: {type(e).__name__}: {e}", 2) from e


def encode(
    config: Config, topic: Topic, event: dict[str, Any], schema_id: int | None = None
) -> Message:
    """`event` (valid under the reader schema) framed as `topic`'s format says."""
    key = identity_key(event)
    reader = config.reader_schema
    name = f"{reader.get('namespace', '')}.{reader['name']}".lstrip(".")
    if topic.format == "json":
        return Message(key, (("a JSON object, UTF-8", _json(event)),))
    if topic.format == "raw":
        writer = (
            load_schema(config.path.parent / topic.writer_schema) if topic.writer_schema else reader
        )
        where = topic.writer_schema or "the reader schema"
        return Message(key, ((f"Avro, written with {where}", _avro(writer, event)),))
    body = _avro(reader, event)
    if topic.format == "single-object":
        return Message(
            key,
            (
                ("magic C3 01: Avro single-object encoding", SINGLE_OBJECT_MAGIC),
                (f"CRC-64-AVRO fingerprint of {name}", single_object_fingerprint(reader)),
                (f"Avro, written with {name}", body),
            ),
        )
    assert schema_id is not None
    return Message(
        key,
        (
            ("magic byte 0: a 4-byte schema id follows", b"\x00"),
            (f"schema id {schema_id} (subject {topic.name}-value)", schema_id.to_bytes(4, "big")),
            (f"Avro, written with {name}", body),
        ),
    )


def _json(event: dict[str, Any]) -> bytes:
    def millis(value: Any) -> Any:
        if hasattr(value, "timestamp"):
            return round(value.timestamp() * 1000)
        raise TypeError(f"{type(value).__name__} is not JSON")

    return json.dumps(event, default=millis, separators=(",", ":")).encode()


def _read_event(path: Path, decoder: EventDecoder) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise SendError(f"{path}: cannot read the event: {e.strerror}") from e
    try:
        event = json.loads(raw)
        decoder.decode(raw)  # the whole file must be a valid event
    except (ValueError, DecodeError) as e:
        raise SendError(f"{path}: not an event under the reader schema: {e}") from e
    if not isinstance(event, dict):
        raise SendError(f"{path}: an event is a JSON object")
    return event


def _fresh(template: dict[str, Any], decoder: EventDecoder) -> dict[str, Any]:
    """The file's event with a new event_id and event_time, as the reader schema reads it."""
    fresh = {**template, "event_id": str(uuid.uuid4()), "event_time": int(time.time() * 1000)}
    return decoder.decode(json.dumps(fresh).encode())


def _show(message: Message, topic: Topic, out: TextIO) -> None:
    value = message.value
    print(f"topic    {topic.name} (format {topic.format})", file=out)
    print(f"key      {message.key!r}: the alerting thing (the deduplication key)", file=out)
    print(f"value    {len(value)} bytes", file=out)
    start = 0
    for what, part in message.parts:
        shown = part[:8].hex(" ") + (" …" if len(part) > 8 else "")
        span = f"[{start}:{start + len(part)}]"
        print(f"  {span:<11} {shown:<26} {what} ({len(part)} bytes)", file=out)
        start += len(part)


def main(args: argparse.Namespace) -> int:
    """`streamer send`, as the CLI parsed it."""
    if args.count < 1 or (args.rate is not None and args.rate <= 0):
        print("streamer send: --count and --rate must be positive", file=sys.stderr)
        return 1
    return send(
        Path(args.config),
        args.topic,
        Path(args.event),
        count=args.count,
        rate=args.rate,
        dry_run=args.dry_run,
    )


def send(
    config_path: Path,
    topic_name: str,
    event_path: Path,
    *,
    count: int = 1,
    rate: float | None = None,
    dry_run: bool = False,
    out: TextIO = sys.stdout,
) -> int:
    """Produces `count` copies of the event (at `rate` per second); returns the exit status."""
    try:
        return _send(config_path, topic_name, event_path, count, rate, dry_run, out)
    except SendError as e:
        print(f"streamer send: {e}", file=sys.stderr)
        return e.code
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1


def _send(
    config_path: Path,
    topic_name: str,
    event_path: Path,
    count: int,
    rate: float | None,
    dry_run: bool,
    out: TextIO,
) -> int:
    config = load_config(config_path, check_secrets=not dry_run)
    topic = next((t for t in config.file.topics if t.name == topic_name), None)
    if topic is None:
        known = ", ".join(t.name for t in config.file.topics)
        raise SendError(f"{config_path}: no topic {topic_name} (its topics: {known})")
    as_json = EventDecoder("json", config.reader_schema)
    template = _read_event(event_path, as_json)
    client, schema_id, registry = None, None, None
    if topic.format == "confluent":
        client = _registry_client(config)
        registry = RegistryWriterSchemas(client)
        schema_id = _schema_id(client, f"{topic.name}-value", config.reader_schema, not dry_run)
    writer = load_schema(config.path.parent / topic.writer_schema) if topic.writer_schema else None
    decoder = EventDecoder(
        topic.format, config.reader_schema, registry=registry, writer_schema=writer
    )
    first = encode(config, topic, _fresh(template, as_json), schema_id)
    try:
        decoder.decode(first.value)
    except (DecodeError, RegistryUnavailable) as e:
        raise SendError(f"streamer would not read this message: {e}") from e
    if dry_run:
        _show(first, topic, out)
        print(f"decodes  as streamer reads {topic.name}: OK (nothing was sent)", file=out)
        return 0
    return _produce(config, topic, template, as_json, schema_id, first, count, rate, out)


def _produce(
    config: Config,
    topic: Topic,
    template: dict[str, Any],
    as_json: EventDecoder,
    schema_id: int | None,
    first: Message,
    count: int,
    rate: float | None,
    out: TextIO,
) -> int:
    from confluent_kafka import KafkaError, KafkaException, Producer
    from confluent_kafka import Message as Delivered

    partitions: Counter[int] = Counter()
    errors: list[str] = []
    lock = threading.Lock()

    def delivered(error: KafkaError | None, message: Delivered) -> None:
        with lock:
            if error is not None:
                errors.append(str(error))
            else:
                partitions[message.partition() or 0] += 1

    producer = Producer(producer_settings(config))
    started = time.monotonic()
    try:
        for n in range(count):
            message = (
                first if n == 0 else encode(config, topic, _fresh(template, as_json), schema_id)
            )
            while True:
                try:
                    producer.produce(topic.name, message.value, message.key, on_delivery=delivered)
                    break
                except BufferError:  # the local queue is full: let deliveries drain it
                    producer.poll(0.1)
            producer.poll(0)
            if rate:
                pause = started + (n + 1) / rate - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
        left = producer.flush(30)
    except KafkaException as e:
        raise SendError(f"Kafka refused the message: {e}", 2) from e
    elapsed = time.monotonic() - started
    sent = sum(partitions.values())
    where = ", ".join(f"partition {p}: {n}" for p, n in sorted(partitions.items()))
    print(
        f"sent {sent} of {count} to {topic.name} (format {topic.format}) in {elapsed:.1f} s, "
        f"key {first.key.decode(errors='replace')!r} ({where or 'nowhere'})",
        file=out,
    )
    if errors or left:
        unacknowledged = len(errors) + left
        print(f"streamer send: {unacknowledged} not acknowledged: {errors[:3]}", file=sys.stderr)
        return 2
    return 0
