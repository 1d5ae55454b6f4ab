"""The local infrastructure is real: a Kafka broker that stores and serves messages, and a
Confluent-compatible schema registry that confluent-kafka's own serializers work with."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from streamer.testing import local_images
from streamer.testing.infra import Infrastructure, InfrastructureUnavailable

pytestmark = pytest.mark.integration

SCHEMA = """{"type": "record", "name": "Ping", "namespace": "test",
 "fields": [{"name": "host", "type": "string"}, {"name": "up", "type": "boolean"}]}"""


def test_messages_produced_to_the_broker_are_consumed_back(infrastructure: Infrastructure) -> None:
    topic = f"smoke-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": infrastructure.bootstrap_servers})
    admin.create_topics([NewTopic(topic, num_partitions=2)])[topic].result(timeout=30)

    producer = Producer({"bootstrap.servers": infrastructure.bootstrap_servers})
    sent = [(f"key-{i % 3}".encode(), f"value-{i}".encode()) for i in range(20)]
    for key, value in sent:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0

    consumer = Consumer(
        {
            "bootstrap.servers": infrastructure.bootstrap_servers,
            "group.id": f"smoke-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    received = []
    try:
        for _ in range(60):
            message = consumer.poll(1.0)
            if message is not None and message.error() is None:
                received.append((message.key(), message.value()))
            if len(received) == len(sent):
                break
    finally:
        consumer.close()
    assert sorted(received) == sorted(sent)
    for key in {k for k, _ in sent}:  # one key, one partition: its order survives
        assert [v for k, v in received if k == key] == [v for k, v in sent if k == key]


def test_the_registry_round_trips_schemas_and_avro_values(infrastructure: Infrastructure) -> None:
    registry = SchemaRegistryClient({"url": infrastructure.schema_registry_url})
    topic = f"registry-{uuid.uuid4().hex[:8]}"
    serialize = AvroSerializer(registry, SCHEMA)
    deserialize = AvroDeserializer(registry)
    context = SerializationContext(topic, MessageField.VALUE)

    framed = serialize({"host": "db-1", "up": False}, context)

    assert framed[0] == 0  # Confluent wire format: magic byte, then the schema id
    schema_id = int.from_bytes(framed[1:5], "big")
    assert '"Ping"' in registry.get_schema(schema_id).schema_str
    assert f"{topic}-value" in registry.get_subjects()
    assert deserialize(framed, context) == {"host": "db-1", "up": False}


def test_without_docker_or_podman_the_error_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setattr(local_images.shutil, "which", lambda name: None)
    monkeypatch.setattr(local_images.os, "geteuid", lambda: 1000)
    with pytest.raises(InfrastructureUnavailable) as error:
        local_images.ensure_podman_installed()
    message = str(error.value)
    assert "podman" in message and "apt-get install" in message
    assert "KAFKA_BOOTSTRAP_SERVERS" in message and "SCHEMA_REGISTRY_URL" in message
