"""Every wire format decodes real producers' bytes; every bad input is a typed DecodeError."""

from __future__ import annotations

import io
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.decoding import (
    SINGLE_OBJECT_MAGIC,
    DecodeError,
    EventDecoder,
    load_schema,
    single_object_fingerprint,
)
from tests.rules_helpers import alert

SCHEMAS = Path(__file__).parent.parent / "schemas"
V1 = load_schema(SCHEMAS / "monitoring_event.v1.avsc")
V2 = load_schema(SCHEMAS / "monitoring_event.v2.avsc")


def alert_event(**changes: Any) -> dict[str, Any]:
    """The shared alert event without `runbook_url`: what a v1 producer writes."""
    event = {k: v for k, v in alert().items() if k != "runbook_url"}
    event.update(changes)
    return event


def avro(event: dict[str, Any], schema: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(schema), event)
    return buffer.getvalue()


def single_object(event: dict[str, Any], schema: dict[str, Any]) -> bytes:
    return SINGLE_OBJECT_MAGIC + single_object_fingerprint(schema) + avro(event, schema)


def reason(decoder: EventDecoder, value: bytes | None) -> str:
    with pytest.raises(DecodeError) as error:
        decoder.decode(value)
    return error.value.reason


# -- raw Avro and schema evolution ---------------------------------------------------


def test_raw_avro_decodes_to_the_written_event() -> None:
    assert EventDecoder("raw", V1).decode(avro(alert_event(), V1)) == alert_event()


def test_a_v1_writer_read_as_v2_gets_the_new_fields_default() -> None:
    decoder = EventDecoder("raw", V2, writer_schema=V1)
    assert decoder.decode(avro(alert_event(), V1)) == {**alert_event(), "runbook_url": None}


def test_a_v2_writer_read_as_v1_drops_the_field_v1_does_not_know() -> None:
    written = avro({**alert_event(), "runbook_url": "https://runbooks/checkout"}, V2)
    assert EventDecoder("raw", V1, writer_schema=V2).decode(written) == alert_event()


def test_an_incompatible_writer_schema_is_named_as_such() -> None:
    incompatible = json.loads(json.dumps(V1))
    incompatible["fields"][0] = {"name": "event_id", "type": "long"}
    event = {**alert_event(), "event_id": 42}
    assert reason(
        EventDecoder("raw", V1, writer_schema=incompatible), avro(event, incompatible)
    ) == ("incompatible-schema")


def test_truncated_avro_is_truncated() -> None:
    assert reason(EventDecoder("raw", V1), avro(alert_event(), V1)[:-7]) == "truncated"


@pytest.mark.parametrize("value", [None, b""])
def test_a_message_without_a_value_is_empty(value: bytes | None) -> None:
    assert reason(EventDecoder("raw", V1), value) == "empty"


# -- single-object encoding ----------------------------------------------------------


def test_single_object_finds_the_writer_schema_by_fingerprint() -> None:
    decoder = EventDecoder("single-object", V1, known_schemas=[V2])
    assert decoder.decode(single_object(alert_event(), V1)) == alert_event()
    newer = {**alert_event(), "runbook_url": "https://runbooks/x"}
    assert decoder.decode(single_object(newer, V2)) == alert_event()


def test_the_fingerprint_is_the_avro_specs_crc_64_little_endian() -> None:
    # The Avro specification's test vector: CRC-64-AVRO("null") = 7195948357588979594.
    assert int.from_bytes(single_object_fingerprint("null"), "little") == 7195948357588979594


def test_single_object_errors() -> None:
    decoder = EventDecoder("single-object", V1)
    assert reason(decoder, single_object(alert_event(), V2)) == "unknown-schema-id"
    assert reason(decoder, b"\x00\x01" + bytes(8) + b"x") == "unknown-magic-byte"
    assert reason(decoder, SINGLE_OBJECT_MAGIC + b"\x01\x02") == "truncated"


# -- JSON ----------------------------------------------------------------------------


def json_bytes(event: dict[str, Any]) -> bytes:
    def millis(value: Any) -> Any:
        return int(value.timestamp() * 1000) if isinstance(value, datetime) else value

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return millis(value)

    return json.dumps(plain(event)).encode()


def test_json_decodes_to_the_same_event_as_avro() -> None:
    assert EventDecoder("json", V1).decode(json_bytes(alert_event())) == alert_event()


def test_json_may_leave_out_fields_with_defaults() -> None:
    minimal = {
        "event_id": "e-1",
        "event_time": 1795000000000,
        "check": {"host": "db-1", "check": "disk", "state": "CRITICAL"},
    }
    event = EventDecoder("json", V1).decode(json.dumps(minimal).encode())
    assert event["severity"] == "UNKNOWN" and event["labels"] == {} and event["alert"] is None
    assert event["check"]["output"] == "" and event["check"]["service"] is None


def test_json_with_wrong_types_names_the_field() -> None:
    with pytest.raises(DecodeError) as error:
        EventDecoder("json", V1).decode(json_bytes(alert_event(event_id=17)))
    assert error.value.reason == "invalid-data"
    assert "event_id" in error.value.detail


@pytest.mark.parametrize("value", [b"{nope", b"[1, 2]", b"\xff\xfe"])
def test_what_is_not_a_json_object_is_invalid_json(value: bytes) -> None:
    assert reason(EventDecoder("json", V1), value) == "invalid-json"


# -- nothing but DecodeError, whatever the bytes -------------------------------------


DECODERS = {
    "raw": EventDecoder("raw", V2, writer_schema=V1),
    "single-object": EventDecoder("single-object", V1, known_schemas=[V2]),
    "json": EventDecoder("json", V1),
}
VALID = avro(alert_event(), V1)


@settings(max_examples=400, deadline=None)
@given(
    wire_format=st.sampled_from(sorted(DECODERS)),
    value=st.one_of(
        st.binary(max_size=300),
        # corruptions of a valid event reach deeper into the decoder than noise does
        st.tuples(st.integers(0, len(VALID) - 1), st.binary(min_size=1, max_size=8)).map(
            lambda cut: VALID[: cut[0]] + cut[1] + VALID[cut[0] + len(cut[1]) :]
        ),
        st.binary(max_size=64).map(
            lambda tail: SINGLE_OBJECT_MAGIC + single_object_fingerprint(V1) + tail
        ),
    ),
)
def test_arbitrary_bytes_decode_or_raise_only_decode_error(wire_format: str, value: bytes) -> None:
    try:
        event = DECODERS[wire_format].decode(value)
    except DecodeError as error:
        assert error.reason and error.detail
    else:
        assert isinstance(event, dict)


# -- the Confluent wire format, with the real registry and broker ---------------------


def confluent_producer_bytes(
    infra: Any,
    topic: str,
    event: dict[str, Any],
    schema: dict[str, Any],
    headers: list[tuple[str, bytes]] | None = None,
) -> bytes:
    """What a real producer writes: confluent-kafka's own AvroSerializer."""
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    serializer = AvroSerializer(
        SchemaRegistryClient({"url": infra.schema_registry_url}),
        json.dumps(schema),
        conf={"auto.register.schemas": True},
    )
    return serializer(event, SerializationContext(topic, MessageField.VALUE, headers))


def registry_decoder(infra: Any, reader: dict[str, Any]) -> EventDecoder:
    from streamer.decoding import RegistryWriterSchemas

    return EventDecoder(
        "confluent", reader, registry=RegistryWriterSchemas.connect(infra.schema_registry_url)
    )


@pytest.mark.integration
def test_events_from_confluents_serializer_through_the_broker_decode(infrastructure) -> None:
    import uuid

    from confluent_kafka import Consumer, Producer

    topic = f"events-{uuid.uuid4().hex[:8]}"
    sent = [alert_event(event_id=f"e-{i}") for i in range(5)]
    producer = Producer({"bootstrap.servers": infrastructure.bootstrap_servers})
    for event in sent:
        producer.produce(topic, confluent_producer_bytes(infrastructure, topic, event, V1))
    assert producer.flush(30) == 0
    consumer = Consumer(
        {
            "bootstrap.servers": infrastructure.bootstrap_servers,
            "group.id": topic,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    decoder = registry_decoder(infrastructure, V1)
    received = []
    try:
        while len(received) < len(sent):
            message = consumer.poll(30)
            assert message is not None, "the broker served nothing within 30 s"
            if message.error() is None:
                received.append(decoder.decode(message.value(), message.headers()))
    finally:
        consumer.close()
    assert sorted(received, key=lambda e: e["event_id"]) == sent


@pytest.mark.integration
def test_registry_evolution_both_ways(infrastructure) -> None:
    import uuid

    topic = f"evolution-{uuid.uuid4().hex[:8]}"
    old = confluent_producer_bytes(infrastructure, topic, alert_event(), V1)
    new = confluent_producer_bytes(
        infrastructure, topic, {**alert_event(), "runbook_url": "https://rb"}, V2
    )
    assert old[1:5] != new[1:5]  # two schema ids
    assert registry_decoder(infrastructure, V2).decode(old) == {
        **alert_event(),
        "runbook_url": None,
    }
    assert registry_decoder(infrastructure, V1).decode(new) == alert_event()


@pytest.mark.integration
def test_the_schema_id_may_travel_in_a_header(infrastructure) -> None:
    import uuid

    framed = confluent_producer_bytes(
        infrastructure, f"hdr-{uuid.uuid4().hex[:8]}", alert_event(), V1
    )
    headers = [("__value_schema_id", framed[:5])]
    assert registry_decoder(infrastructure, V1).decode(framed[5:], headers) == alert_event()


@pytest.mark.integration
def test_a_guid_the_registry_does_not_know_is_an_unknown_schema(infrastructure) -> None:
    # The newer framing (magic 1 + GUID, in the value or the header) is parsed and looked
    # up with GET /schemas/guids/{guid}; Apicurio 3.0 does not serve GUIDs, so here every
    # GUID is unknown, which must be a bad message, not a registry outage.
    import uuid

    decoder = registry_decoder(infrastructure, V1)
    guid = b"\x01" + uuid.uuid4().bytes
    assert reason(decoder, guid + avro(alert_event(), V1)) == "unknown-schema-id"
    with pytest.raises(DecodeError) as error:
        decoder.decode(avro(alert_event(), V1), [("__value_schema_id", guid)])
    assert error.value.reason == "unknown-schema-id"


@pytest.mark.integration
def test_confluent_framing_errors(infrastructure) -> None:
    decoder = registry_decoder(infrastructure, V1)
    body = avro(alert_event(), V1)
    assert reason(decoder, b"\x00" + (987654).to_bytes(4, "big") + body) == "unknown-schema-id"
    assert reason(decoder, b"\x07" + body) == "unknown-magic-byte"
    assert reason(decoder, b"\x00\x00\x01") == "truncated"
    assert reason(decoder, b"\x01" + bytes(10)) == "truncated"


@pytest.mark.integration
def test_an_unreachable_registry_is_transient_not_a_bad_message() -> None:
    import socket

    from streamer.decoding import RegistryUnavailable, RegistryWriterSchemas

    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    decoder = EventDecoder(
        "confluent", V1, registry=RegistryWriterSchemas.connect(f"http://127.0.0.1:{port}")
    )
    with pytest.raises(RegistryUnavailable):
        decoder.decode(b"\x00\x00\x00\x00\x01" + avro(alert_event(), V1))


@pytest.mark.integration
@settings(max_examples=150, deadline=None)
@given(tail=st.binary(max_size=200), framing=st.sampled_from(["known-id", "random"]))
def test_arbitrary_bytes_from_the_registry_path_raise_only_decode_error(
    infrastructure, tail, framing
) -> None:
    decoder = _registry_decoder_for_fuzzing(infrastructure)
    value = _KNOWN_ID_PREFIX[0] + tail if framing == "known-id" else tail
    try:
        decoder.decode(value)
    except DecodeError as error:
        assert error.reason


_KNOWN_ID_PREFIX: list[bytes] = []
_FUZZ_DECODER: list[EventDecoder] = []


def _registry_decoder_for_fuzzing(infra: Any) -> EventDecoder:
    # Built once: hypothesis calls the test hundreds of times and the cache is the point.
    if not _FUZZ_DECODER:
        _KNOWN_ID_PREFIX.append(confluent_producer_bytes(infra, "fuzz", alert_event(), V1)[:5])
        _FUZZ_DECODER.append(registry_decoder(infra, V1))
    return _FUZZ_DECODER[0]
