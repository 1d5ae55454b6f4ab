"""A poison corpus through the real broker and the real engine (guarantee 7).

Hostile and broken messages, and events that meet careless rules (a backtracking regex,
template bombs), mixed among valid events. What an on-call engineer must see: the service
never stops; every valid event arrives, in per-key order; every poison message is
dead-lettered exactly once, with its reason and its coordinates; the committed offsets
reach the end of every partition.
"""

from __future__ import annotations

import io
import json
from typing import Any

import fastavro
import pytest
import yaml

from streamer.decoding import load_schema
from tests.pipeline import SCHEMA, Pipeline, check_event

pytestmark = pytest.mark.integration

BOMBS = {  # label value -> a template the sandbox used to let through
    "ljust": "{{ 'a'.ljust(10**8) }}",
    "percent": "{{ '%0100000000d' % 1 }}",
    "replace": "{{ ('a'*100000).replace('', 'a'*1000) }}",
    "loops": "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
}
WHEN_BOMB = "('a' * 100000).replace('', 'a' * 1000) == 'x'"
BACKTRACKING = "([a-z0-9]+-?)+prod"  # catastrophic for a backtracking engine


def careless_rules(pipeline: Pipeline) -> None:
    """The pipeline's routes, behind routes an unlucky operator wrote."""
    config = yaml.safe_load(pipeline.config_path.read_text())
    bombs = [
        {
            "name": f"bomb-{name}",
            "match": [f"labels.bomb = {name}"],
            "destination": "a",
            "templates": {"title": template},
        }
        for name, template in BOMBS.items()
    ]
    config["routes"] = [
        {
            "name": "slow-regex",
            "match": [f'labels.instance =~ "{BACKTRACKING}"'],
            "destination": "b",
        },
        {
            "name": "bomb-when",
            "match": ["labels.bomb = when"],
            "when": WHEN_BOMB,
            "destination": "b",
        },
        *bombs,
        *config["routes"],
    ]
    pipeline.config_path.write_text(yaml.safe_dump(config, sort_keys=False))


def valid(host: str, n: int, **labels: str) -> dict[str, Any]:
    event = check_event(host, "CRITICAL" if n % 2 == 0 else "OK", n=n)
    event["labels"].update(labels)
    return event


def test_json_poison_is_dead_lettered_and_everything_else_arrives_in_order(
    infrastructure, fake, tmp_path, monkeypatch
) -> None:
    pipeline = Pipeline(infrastructure, fake, tmp_path, partitions=2, monkeypatch=monkeypatch)
    careless_rules(pipeline)
    poison: dict[str, bytes | None] = {
        "deep": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        "huge-number": b'{"event_id": ' + b"7" * 5000 + b"}",
        "invalid-utf8": b'{"event_id": "\xff\xfe"}',
        "not-an-object": b"[1, 2, 3]",
        "empty": b"",
        "tombstone": None,
        "one-megabyte": b"x" * 1_000_000,
    }
    # Template and `when:` bombs and a backtracking regex meet valid events.
    bombs = {f"bomb-{name}": valid("bomb-host", 0, bomb=name) for name in BOMBS}
    bombs["bomb-when"] = valid("when-host", 0, bomb="when")
    regex_victim = valid("regex-host", 0, instance="a" * 40 + "!")  # no match, at once

    from confluent_kafka import Producer

    # The broker takes a message of a megabyte; the engine's own producer allows less.
    producer = Producer(
        {"bootstrap.servers": infrastructure.bootstrap_servers, "message.max.bytes": 1_100_000}
    )
    events = [valid(f"host-{h}", n) for n in range(4) for h in range(6)]
    produced_poison = []
    for i, event in enumerate(events):
        pipeline.produce([event])
        if i % 3 == 0 and poison:
            kind, value = poison.popitem()
            producer.produce(pipeline.topic, key=f"poison-{kind}".encode(), value=value)
            produced_poison.append(kind)
    for event in [*bombs.values(), regex_victim]:
        pipeline.produce([event])
    assert not poison and producer.flush(30) == 0

    pipeline.deliver_all(len(events) + 1)  # the regex victim is delivered (to a)

    letters = pipeline.dead_letters(expected=len(produced_poison) + len(bombs))
    by_key = {key.decode(): headers for key, _, headers in letters if key}
    assert {kind: by_key[f"poison-{kind}"]["reason"] for kind in produced_poison} == {
        "deep": "decode:too-deep",
        "huge-number": "decode:too-large",
        "invalid-utf8": "decode:invalid-json",
        "not-an-object": "decode:invalid-json",
        "empty": "decode:empty",
        "tombstone": "decode:empty",
        "one-megabyte": "decode:invalid-json",
    }
    template_letters = [h for k, v, h in letters if k in (b"bomb-host", b"when-host")]
    assert sorted((h["route"], h["reason"]) for h in template_letters) == sorted(
        (route, "route:when" if route == "bomb-when" else "template") for route in bombs
    )
    assert len(letters) == len(produced_poison) + len(bombs), "each poison message once"
    big = by_key["poison-one-megabyte"]
    assert big["value-truncated"] == "true" and big["original-size"] == "1000000"
    assert pipeline.delivered_statuses() == {
        **{f"host-{h}//disk": ["firing", "resolved", "firing", "resolved"] for h in range(6)},
        "regex-host//disk": ["firing"],
    }


def _zigzag_varint(n: int) -> bytes:
    z, out = (n << 1) ^ (n >> 63), bytearray()
    while True:
        byte, z = z & 0x7F, z >> 7
        out.append(byte | (0x80 if z else 0))
        if not z:
            return bytes(out)


def test_registry_framed_poison_is_dead_lettered_and_everything_else_arrives(
    infrastructure, fake, tmp_path, monkeypatch
) -> None:
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    from streamer.testing.events import check

    pipeline = Pipeline(infrastructure, fake, tmp_path, partitions=2, monkeypatch=monkeypatch)
    text = pipeline.config_path.read_text().replace("format: json", "format: confluent")
    text += f"schema_registry: {{url: '{infrastructure.schema_registry_url}'}}\n"
    pipeline.config_path.write_text(text)
    registry = SchemaRegistryClient({"url": infrastructure.schema_registry_url})
    reader = load_schema(SCHEMA)
    serialize = AvroSerializer(registry, json.dumps(reader))
    context = SerializationContext(pipeline.topic, MessageField.VALUE)

    # A compatible writer schema with an extra field of zero-byte items: a short message
    # can claim 2**62 of them.
    unsafe = {**reader, "fields": [*reader["fields"], _array_of_null()]}
    unsafe_id = registry.register_schema(
        f"unsafe-{pipeline.topic}", Schema(json.dumps(unsafe), "AVRO")
    )
    body = io.BytesIO()
    sample = check(host="x", check_name="disk", state="CRITICAL")
    fastavro.schemaless_writer(body, fastavro.parse_schema(reader), sample)
    unsafe_message = (
        b"\x00" + unsafe_id.to_bytes(4, "big") + body.getvalue() + _zigzag_varint(2**62) + b"\x00"
    )
    serialize(sample, context)  # registers the reader schema as the topic's value subject
    good_id = registry.get_latest_version(f"{pipeline.topic}-value").schema_id
    poison = {
        "unsafe-schema": unsafe_message,
        "wrong-magic": b"\x07" + b"\x00" * 10,
        "truncated": b"\x00\x00",
        "unknown-schema-id": b"\x00\x7f\xff\xff\xf0" + b"\x02" * 20,
        "garbage-after-header": b"\x00" + good_id.to_bytes(4, "big") + b"\xff" * 30,
    }
    events = [
        check(host=f"db-{h}", check_name="disk", state="CRITICAL" if n % 2 == 0 else "OK")
        for n in range(4)
        for h in range(4)
    ]
    for i, event in enumerate(events):
        pipeline.producer.produce(
            pipeline.topic, key=event["check"]["host"], value=serialize(event, context)
        )
        if i % 3 == 0 and poison:
            kind, value = poison.popitem()
            pipeline.producer.produce(pipeline.topic, key=f"poison-{kind}", value=value)
    assert not poison and pipeline.producer.flush(30) == 0

    pipeline.deliver_all(len(events))

    letters = pipeline.dead_letters(expected=5)
    reasons = {key.decode(): headers["reason"] for key, _, headers in letters}
    assert reasons == {
        "poison-unsafe-schema": "decode:unsafe-schema",
        "poison-wrong-magic": "decode:unknown-magic-byte",
        "poison-truncated": "decode:truncated",
        "poison-unknown-schema-id": "decode:unknown-schema-id",
        "poison-garbage-after-header": "decode:invalid-data",
    }
    assert pipeline.delivered_statuses() == {
        f"db-{h}/postgres/disk": ["firing", "resolved", "firing", "resolved"] for h in range(4)
    }


def _array_of_null() -> dict[str, Any]:
    return {"name": "padding", "type": {"type": "array", "items": "null"}, "default": []}
