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
(transient: retry, never dead-letter). Nothing else escapes `decode`. Whatever its
bytes, a message costs time and memory linear in its length, which is bounded.

How: no parser gets input on which it does unbounded work. JSON is scanned for nesting
depth before json.loads (which recurses) and its numbers are bounded in length. A
writer schema is refused (`unsafe-schema`, once per schema) if few bytes can stand for
unbounded work: an array of items that take zero bytes (a 10-byte count of 2^62 never
ends) or a type that contains itself (nesting as deep as the message is long overflows
fastavro's C stack). Every other Avro item takes at least one byte, so a huge count or
length ends at the end of the buffer, without allocating what it claims; fastavro's
skips of fixed-size items do not notice that end, so schemas with arrays of those are
read from a buffer that does.
"""

from __future__ import annotations

import io
import json
import re
import uuid
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any, Literal, Protocol

import fastavro
from fastavro.read import SchemaResolutionError
from fastavro.schema import fingerprint, to_parsing_canonical_form
from fastavro.types import Schema

from streamer.errors import StreamerError
from streamer.schema_safety import CheckedBuffer, hazards

WireFormat = Literal["confluent", "single-object", "raw", "json"]
DecodeErrorReason = Literal[
    "empty",
    "truncated",
    "unknown-magic-byte",
    "unknown-schema-id",
    "incompatible-schema",
    "invalid-data",
    "invalid-json",
    "too-large",
    "too-deep",
    "unsafe-schema",
]
Headers = Sequence[tuple[str, bytes | None]]

VALUE_SCHEMA_ID_HEADER = "__value_schema_id"
SINGLE_OBJECT_MAGIC = b"\xc3\x01"
_CONFLUENT_ID, _CONFLUENT_GUID = 0, 1

# An event is a few hundred bytes, and a broker with default settings accepts no value
# over 1 MiB. The worst message of this size costs about half a second to refuse.
MAX_VALUE_BYTES = 1024 * 1024
# A monitoring event nests 3 deep (event, alert, labels); 64 leaves room for unknown
# fields a producer adds and stays far below the interpreter's recursion limit.
MAX_JSON_DEPTH = 64
# A long has 19 digits and a double needs at most 24 characters to round-trip; Python's
# int() refuses over 4300 digits with a ValueError and gets slow well before that.
MAX_JSON_NUMBER_CHARS = 100


class DecodeError(StreamerError):
    """The message cannot become an event; `reason` is a stable code for dead letters."""

    def __init__(self, reason: DecodeErrorReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class RegistryUnavailable(StreamerError):
    """The schema registry could not be asked; the message may be fine: retry later."""


class WriterSchemaSource(Protocol):
    """Where `confluent` writer schemas come from (a registry client, cached)."""

    def by_id(self, schema_id: int) -> str: ...

    def by_guid(self, guid: str) -> str: ...


def load_schema(path: str | Path) -> dict[str, Any]:
    """Reads an .avsc file; errors name the file."""
    named: dict[str, Any] = {}
    try:
        schema = json.loads(Path(path).read_text())
        unsafe, _ = hazards(fastavro.parse_schema(schema, named), named)
    except (OSError, ValueError, fastavro.schema.SchemaParseException) as e:
        raise ValueError(f"{path}: not a readable Avro schema: {e}") from e
    if not isinstance(schema, dict):
        raise ValueError(f"{path}: an event schema must be an Avro record")
    if unsafe is not None:
        raise ValueError(f"{path}: not safe to decode: {unsafe}")
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
    buffer: type[io.BytesIO] = io.BytesIO


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
        # A schema id never changes meaning, so a refusal is as final as a resolution.
        self._refused_registry_keys: dict[int | str, tuple[DecodeErrorReason, str]] = {}
        try:
            self._raw = self._resolve(writer_schema or reader_schema)
            self._by_fingerprint = {
                single_object_fingerprint(s): self._resolve(s)
                for s in [reader_schema, *known_schemas]
            }
        except DecodeError as e:  # a configured schema: the operator's to fix, at start
            raise ValueError(f"a configured schema is refused: {e}") from e

    def _resolve(self, writer_schema: Schema | str) -> _Resolution:
        """The writer schema (registry text or parsed JSON) ready to read with."""
        named: dict[str, Any] = {}
        try:
            schema = json.loads(writer_schema) if isinstance(writer_schema, str) else writer_schema
            writer = fastavro.parse_schema(schema, named)
            unsafe, checked_reads = hazards(writer, named)
        except Exception as e:  # fastavro's parser raises many kinds on odd schemas
            raise DecodeError("incompatible-schema", f"not an Avro schema: {e!r}") from e
        if unsafe is not None:
            raise DecodeError("unsafe-schema", unsafe)
        same = to_parsing_canonical_form(writer) == self._reader_canonical
        buffer = CheckedBuffer if checked_reads and not same else io.BytesIO
        return _Resolution(writer, None if same else self._reader, buffer)

    def decode(self, value: bytes | None, headers: Headers | None = None) -> dict[str, Any]:
        if not value:
            raise DecodeError("empty", "the message has no value (a tombstone or empty bytes)")
        if len(value) > MAX_VALUE_BYTES:
            raise DecodeError("too-large", f"{len(value)} bytes; the limit is {MAX_VALUE_BYTES}")
        try:
            if self.wire_format == "json":
                return self._decode_json(value)
            body, resolution = self._framing(memoryview(value), headers)
            return _read(body, resolution)
        except (DecodeError, RegistryUnavailable):
            raise
        except Exception as e:  # a bug or a case nobody foresaw: still this message's fault
            raise DecodeError("invalid-data", f"{type(e).__name__}: {e}") from e

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
            if key in self._refused_registry_keys:
                raise DecodeError(*self._refused_registry_keys[key])  # a fresh traceback
            assert self._registry is not None
            text = (
                self._registry.by_id(key) if isinstance(key, int) else self._registry.by_guid(key)
            )
            try:
                resolution = self._resolve(text)
            except DecodeError as e:
                self._refused_registry_keys[key] = (e.reason, f"schema {key}: {e.detail}")
                raise DecodeError(*self._refused_registry_keys[key]) from e
            self._by_registry_key[key] = resolution
        return resolution

    def _decode_json(self, value: bytes) -> dict[str, Any]:
        try:
            # UTF-8 only (RFC 8259): the depth scan reads bytes, which other encodings fool.
            text = value.removeprefix(b"\xef\xbb\xbf").decode()  # without a BOM
            if (depth := _json_depth(value)) > MAX_JSON_DEPTH:  # json.loads would recurse
                raise DecodeError("too-deep", f"{depth} levels deep; the limit is {MAX_JSON_DEPTH}")
            event = _JSON.decode(text)
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


def _bounded(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """A number parser that refuses long numbers (int() is slow, then refuses, on them)."""

    def parse_number(text: str) -> Any:
        if len(text) > MAX_JSON_NUMBER_CHARS:
            raise DecodeError(
                "too-large",
                f"a JSON number of {len(text)} characters; the limit is {MAX_JSON_NUMBER_CHARS}",
            )
        return parse(text)

    return parse_number


_JSON = json.JSONDecoder(parse_int=_bounded(int), parse_float=_bounded(float))
_JSON_STRING = re.compile(rb'"[^"]*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_BRACKET_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")


def _json_depth(value: bytes) -> int:
    """How deep [ and { nest outside strings (or, when there are few, how many there are),
    in linear time and C loops: drop escapes, strings, then all but brackets; the depth
    is the largest running sum of +1 per opening and -1 per closing bracket. On invalid
    JSON it may be too high, never lower than where json.loads would fail."""
    if (openings := value.count(b"[") + value.count(b"{")) <= MAX_JSON_DEPTH:
        return openings
    unescaped = value.replace(b"\\\\", b"").replace(b'\\"', b"")
    brackets = _JSON_STRING.sub(b"", unescaped).translate(_BRACKET_STEPS, _NOT_BRACKETS)
    return max(accumulate(array("b", brackets)), default=0)


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
        event = fastavro.schemaless_reader(
            resolution.buffer(body), resolution.writer, resolution.reader
        )
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
