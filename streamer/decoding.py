"""Kafka message bytes -> a monitoring event (a dict valid under the reader schema).

Each topic names its wire format:

- `confluent`: magic byte 0 + 4-byte schema id (or magic 1 + 16-byte GUID), or the
  id/GUID in the `__value_schema_id` header; the writer schema comes from a
  Confluent-compatible registry and is cached by id;
- `single-object`: Avro single-object encoding (C3 01 + CRC-64-AVRO fingerprint), the
  writer schema found among the schemas the service knows (schemas/);
- `raw`: bare Avro written with one configured writer schema;
- `json`: a JSON object, validated against the reader schema (defaults filled in).

Invariants: the writer schema is always resolved against the reader schema, so a
producer on a newer or older compatible schema decodes to the reader's shape; every
problem with the *message* raises `DecodeError` (permanent: dead-letter it with its
reason), and only a registry that cannot be reached raises `RegistryUnavailable`
(transient: retry, never dead-letter). Nothing else escapes `decode`.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import fastavro
from fastavro.read import SchemaResolutionError
from fastavro.schema import fingerprint, to_parsing_canonical_form
from fastavro.types import Schema

WireFormat = Literal["confluent", "single-object", "raw", "json"]
DecodeErrorReason = Literal[
    "empty",
    "truncated",
    "unknown-magic-byte",
    "unknown-schema-id",
    "incompatible-schema",
    "invalid-data",
    "invalid-json",
]
Headers = Sequence[tuple[str, bytes | None]]

VALUE_SCHEMA_ID_HEADER = "__value_schema_id"
SINGLE_OBJECT_MAGIC = b"\xc3\x01"
_CONFLUENT_ID, _CONFLUENT_GUID = 0, 1


class DecodeError(Exception):
    """The message cannot become an event; `reason` is a stable code for dead letters."""

    def __init__(self, reason: DecodeErrorReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class RegistryUnavailable(Exception):
    """The schema registry could not be asked; the message may be fine: retry later."""


class WriterSchemaSource(Protocol):
    """Where `confluent` writer schemas come from (a registry client, cached)."""

    def by_id(self, schema_id: int) -> str: ...

    def by_guid(self, guid: str) -> str: ...


def load_schema(path: str | Path) -> dict[str, Any]:
    """Reads an .avsc file; errors name the file."""
    try:
        schema = json.loads(Path(path).read_text())
        fastavro.parse_schema(schema)
    except (OSError, ValueError, fastavro.schema.SchemaParseException) as e:
        raise ValueError(f"{path}: not a readable Avro schema: {e}") from e
    if not isinstance(schema, dict):
        raise ValueError(f"{path}: an event schema must be an Avro record")
    return schema


def single_object_fingerprint(schema: Schema) -> bytes:
    """The 8 bytes after C3 01: CRC-64-AVRO of the canonical form, little-endian."""
    canonical = to_parsing_canonical_form(fastavro.parse_schema(schema))
    return bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))


@dataclass(frozen=True)
class _Resolution:
    """A writer schema paired with the reader schema; `reader` is None when they match."""

    writer: Schema
    reader: Schema | None


class EventDecoder:
    """Decodes one topic's messages; build one per topic and reuse it (it caches)."""

    def __init__(
        self,
        wire_format: WireFormat,
        reader_schema: dict[str, Any],
        *,
        registry: WriterSchemaSource | None = None,
        writer_schema: dict[str, Any] | None = None,
        known_schemas: Iterable[dict[str, Any]] = (),
    ) -> None:
        if wire_format == "confluent" and registry is None:
            raise ValueError("the confluent wire format needs a schema registry")
        self.wire_format = wire_format
        self._reader = fastavro.parse_schema(reader_schema)
        self._reader_canonical = to_parsing_canonical_form(self._reader)
        self._registry = registry
        self._by_registry_key: dict[int | str, _Resolution] = {}
        self._raw = self._resolve(writer_schema or reader_schema)
        self._by_fingerprint = {
            single_object_fingerprint(s): self._resolve(s) for s in [reader_schema, *known_schemas]
        }

    def _resolve(self, writer_schema: Schema) -> _Resolution:
        writer = fastavro.parse_schema(writer_schema)
        same = to_parsing_canonical_form(writer) == self._reader_canonical
        return _Resolution(writer, None if same else self._reader)

    def decode(self, value: bytes | None, headers: Headers | None = None) -> dict[str, Any]:
        if not value:
            raise DecodeError("empty", "the message has no value (a tombstone or empty bytes)")
        if self.wire_format == "json":
            return self._decode_json(value)
        body, resolution = self._framing(memoryview(value), headers)
        return _read(body, resolution)

    def _framing(
        self, value: memoryview, headers: Headers | None
    ) -> tuple[memoryview, _Resolution]:
        if self.wire_format == "raw":
            return value, self._raw
        if self.wire_format == "single-object":
            if len(value) < 10:
                raise DecodeError(
                    "truncated",
                    f"{len(value)} bytes is shorter than the 10-byte single-object header",
                )
            if value[:2] != SINGLE_OBJECT_MAGIC:
                raise DecodeError(
                    "unknown-magic-byte",
                    f"expected C3 01, found {bytes(value[:2]).hex(' ').upper()}",
                )
            resolution = self._by_fingerprint.get(bytes(value[2:10]))
            if resolution is None:
                raise DecodeError(
                    "unknown-schema-id",
                    f"no known schema has fingerprint {bytes(value[2:10]).hex()}",
                )
            return value[10:], resolution
        header = next((v for k, v in headers or () if k == VALUE_SCHEMA_ID_HEADER and v), None)
        if header is not None:
            key, _ = _schema_key(memoryview(header), "the __value_schema_id header")
            return value, self._registry_resolution(key)
        key, consumed = _schema_key(value, "the message")
        return value[consumed:], self._registry_resolution(key)

    def _registry_resolution(self, key: int | str) -> _Resolution:
        resolution = self._by_registry_key.get(key)
        if resolution is None:
            assert self._registry is not None
            text = (
                self._registry.by_id(key) if isinstance(key, int) else self._registry.by_guid(key)
            )
            try:
                resolution = self._resolve(json.loads(text))
            except (ValueError, fastavro.schema.SchemaParseException) as e:
                raise DecodeError(
                    "incompatible-schema", f"schema {key} is not an Avro schema: {e}"
                ) from e
            self._by_registry_key[key] = resolution
        return resolution

    def _decode_json(self, value: bytes) -> dict[str, Any]:
        try:
            event = json.loads(value)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DecodeError("invalid-json", f"not JSON: {e}") from e
        if not isinstance(event, dict):
            raise DecodeError(
                "invalid-json", f"expected a JSON object, found {type(event).__name__}"
            )
        # Writing then reading with the reader schema validates every field and fills in
        # defaults and logical types exactly as Avro decoding would.
        buffer = io.BytesIO()
        try:
            fastavro.schemaless_writer(buffer, self._reader, event)
        except Exception as e:  # fastavro raises ValueError, TypeError, KeyError, ...
            raise DecodeError("invalid-data", f"does not match the schema: {e}") from e
        return _read(memoryview(buffer.getvalue()), _Resolution(self._reader, None))


def _schema_key(framed: memoryview, where: str) -> tuple[int | str, int]:
    """Reads the Confluent schema reference: (id or GUID, bytes consumed)."""
    if len(framed) < 1:
        raise DecodeError("truncated", f"{where} is empty")
    magic = framed[0]
    if magic == _CONFLUENT_ID:
        if len(framed) < 5:
            raise DecodeError("truncated", f"{where} ends inside the 4-byte schema id")
        return int.from_bytes(framed[1:5], "big"), 5
    if magic == _CONFLUENT_GUID:
        if len(framed) < 17:
            raise DecodeError("truncated", f"{where} ends inside the 16-byte schema GUID")
        return str(uuid.UUID(bytes=bytes(framed[1:17]))), 17
    raise DecodeError(
        "unknown-magic-byte",
        f"{where} starts with {magic:#04x}, expected 0x00 or 0x01 (Confluent framing)",
    )


def _read(body: memoryview, resolution: _Resolution) -> dict[str, Any]:
    try:
        event = fastavro.schemaless_reader(io.BytesIO(body), resolution.writer, resolution.reader)
    except SchemaResolutionError as e:
        raise DecodeError(
            "incompatible-schema", f"the writer schema cannot be read as the reader schema: {e}"
        ) from e
    except EOFError as e:
        raise DecodeError("truncated", f"the Avro data ends early: {e}") from e
    except Exception as e:  # arbitrary bytes make fastavro raise many kinds; all mean bad data
        raise DecodeError(
            "invalid-data", f"not valid Avro for the writer schema: {type(e).__name__}: {e}"
        ) from e
    if not isinstance(event, dict):
        raise DecodeError("invalid-data", "the writer schema is not a record")
    return event


class RegistryWriterSchemas:
    """Writer schemas from a Confluent-compatible registry (confluent-kafka's client).

    A registry answer of "not found" is the message's fault (an unknown id); anything
    else that stops us from getting an answer is transient.
    """

    def __init__(self, client: Any) -> None:
        self._client = client

    @classmethod
    def connect(cls, url: str, **settings: str) -> RegistryWriterSchemas:
        from confluent_kafka.schema_registry import SchemaRegistryClient

        return cls(SchemaRegistryClient({"url": url, **settings}))

    def by_id(self, schema_id: int) -> str:
        return self._ask(lambda: self._client.get_schema(schema_id), f"schema id {schema_id}")

    def by_guid(self, guid: str) -> str:
        return self._ask(lambda: self._client.get_schema_by_guid(guid), f"schema GUID {guid}")

    def _ask(self, call: Any, what: str) -> str:
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        try:
            schema = call()
        except SchemaRegistryError as e:
            if e.http_status_code == 404:
                raise DecodeError("unknown-schema-id", f"the registry does not know {what}") from e
            if e.http_status_code >= 500 or e.http_status_code in (401, 403, 408, 429):
                raise RegistryUnavailable(f"the registry could not answer for {what}: {e}") from e
            raise DecodeError("unknown-schema-id", f"the registry refused {what}: {e}") from e
        except Exception as e:  # connection refused, DNS, timeouts, TLS: all transient
            raise RegistryUnavailable(
                f"the registry is unreachable ({what}): {type(e).__name__}: {e}"
            ) from e
        if (schema.schema_type or "AVRO") != "AVRO":
            raise DecodeError(
                "incompatible-schema", f"{what} is a {schema.schema_type} schema, not Avro"
            )
        return str(schema.schema_str)
