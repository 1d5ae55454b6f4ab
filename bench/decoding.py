"""Decoding throughput: streamer's EventDecoder against raw fastavro on the same bytes.

Run: `make bench-decoding` (or `python bench/decoding.py [--events N] [--rounds R]`).
Messages are real Confluent-framed bytes from confluent-kafka's AvroSerializer against
the local (or external) schema registry; the decoder's registry cache is warmed first.
The baseline is `fastavro.schemaless_reader` on the same bytes with the framing sliced
off, the least any decoder must do. Reported: events/s of each (best of R rounds,
alternated so both see the same machine noise) and the ratio decoder/raw.
"""

from __future__ import annotations

import argparse
import io
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastavro

from streamer.decoding import EventDecoder, RegistryWriterSchemas, load_schema
from streamer.testing.infra import local_infrastructure

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"


def sample_events(n: int) -> list[dict[str, Any]]:
    from datetime import UTC, datetime, timedelta

    t0 = datetime(2026, 11, 26, tzinfo=UTC)
    return [
        {
            "event_id": str(uuid.UUID(int=i)),
            "event_time": t0 + timedelta(seconds=i),
            "source_system": "ALERTMANAGER",
            "severity": "WARNING",
            "labels": {"service": f"svc-{i % 20}", "team": "sre"},
            "alert": {
                "status": "FIRING" if i % 3 else "RESOLVED",
                "labels": {"alertname": "HighLatency", "instance": f"node-{i % 50}"},
                "annotations": {"summary": "p99 above 2s"},
                "starts_at": t0,
                "ends_at": None,
                "generator_url": None,
                "fingerprint": f"{i % 50:016x}",
            },
            "check": None,
        }
        for i in range(n)
    ]


def best_rate(loop: Callable[[], None], n: int, rounds: int) -> list[float]:
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        loop()
        rates.append(n / (time.perf_counter() - start))
    return rates


def measure(
    name: str, payloads: list[bytes], decoder: EventDecoder, writer: Any, reader: Any, rounds: int
) -> None:
    def ours() -> None:
        for payload in payloads:
            decoder.decode(payload)

    def raw() -> None:
        for payload in payloads:
            fastavro.schemaless_reader(io.BytesIO(payload[5:]), writer, reader)

    ours_rates, raw_rates = [], []
    for _ in range(rounds):  # alternate, so both see the same noise
        ours_rates += best_rate(ours, len(payloads), 1)
        raw_rates += best_rate(raw, len(payloads), 1)
    o, r = max(ours_rates), max(raw_rates)
    print(
        f"{name:<32} decoder {o:>10,.0f} ev/s   raw fastavro {r:>10,.0f} ev/s   ratio {o / r:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    v1 = load_schema(SCHEMAS / "monitoring_event.v1.avsc")
    v2 = load_schema(SCHEMAS / "monitoring_event.v2.avsc")
    with local_infrastructure() as infra:
        serialize = AvroSerializer(
            SchemaRegistryClient({"url": infra.schema_registry_url}), json.dumps(v1)
        )
        context = SerializationContext(f"bench-{uuid.uuid4().hex[:6]}", MessageField.VALUE)
        payloads = [serialize(e, context) for e in sample_events(args.events)]
        print(
            f"{len(payloads)} events, {sum(map(len, payloads)) / len(payloads):.0f} bytes "
            f"each on average; best of {args.rounds} rounds"
        )
        registry = RegistryWriterSchemas.connect(infra.schema_registry_url)
        parsed_v1, parsed_v2 = fastavro.parse_schema(v1), fastavro.parse_schema(v2)
        for name, reader_schema, reader in (
            ("confluent, same schema", v1, None),
            ("confluent, v1 writer -> v2 reader", v2, parsed_v2),
        ):
            decoder = EventDecoder("confluent", reader_schema, registry=registry)
            decoder.decode(payloads[0])  # warm the registry cache
            measure(name, payloads, decoder, parsed_v1, reader, args.rounds)


if __name__ == "__main__":
    main()
