"""`streamer demo`: the whole pipeline on this machine, with a live summary.

It starts a real broker and registry (`streamer.testing.infra`) and the incident.io
double, rewrites `examples/streamer.yaml` to point at them, produces realistic traffic
(Avro alerts through the registry on an older schema version, JSON check results, a
little bad input) at a steady rate, runs the engine exactly as `streamer run` does,
and shows what happens until Ctrl-C, or until `--events N` are produced and every one
of them is terminal and committed. It ends with a reconciliation whose sums must add up:
every consumed message in one term, and the lag the broker holds explained term by term
(`reconciliation`; tests/test_cli.py stops a run mid-way and checks them).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import TextIO

import yaml
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from streamer import logs
from streamer.config import load_config
from streamer.decoding import load_schema
from streamer.demo_account import (
    committed_position,
    message_outcomes,
    position,
    reconciliation,
    refused,
)
from streamer.engine import Engine
from streamer.instrumentation import Stats
from streamer.metrics_server import serve
from streamer.telemetry import Telemetry
from streamer.testing import AlertSource, FakeIncidentIo
from streamer.testing.events import MonitoringTraffic, as_json
from streamer.testing.infra import Infrastructure, local_infrastructure

# What the demo reads ships with the package (pyproject's package-data): in a checkout these
# are links to examples/ and schemas/, in an installed wheel copies of them. The layout is
# the repository's, so the example's relative paths (../schemas/..., secrets) resolve alike.
DATA = Path(__file__).resolve().parent / "demo_data"
EXAMPLE = DATA / "examples" / "streamer.yaml"
WRITER_SCHEMA = DATA / "schemas" / "monitoring_event.v1.avsc"  # older than the reader's
# Each run gets its own topics, so a shared or reused broker never mixes runs.
RUN_ID = uuid.uuid4().hex[:6]
ALERTS_TOPIC, CHECKS_TOPIC = f"monitoring.alerts.{RUN_ID}", f"monitoring.checks.{RUN_ID}"
TOPICS = (ALERTS_TOPIC, CHECKS_TOPIC)
DEMO_TOKENS = {
    "INCIDENT_IO_TOKEN_SRE": "demo-sre-token",
    "INCIDENT_IO_TOKEN_PAYMENTS": "demo-payments-token",
}


def demo_config(
    infra: Infrastructure, fake_url: str, folder: Path
) -> tuple[Path, list[AlertSource]]:
    """examples/streamer.yaml, pointed at the local services; the double's sources."""
    config = yaml.safe_load(EXAMPLE.read_text())
    config["kafka"]["bootstrap_servers"] = infra.bootstrap_servers
    config["kafka"]["group_id"] = f"streamer-demo-{RUN_ID}"
    config["kafka"]["dead_letter_topic"] = f"streamer.dead-letters.{RUN_ID}"
    renamed = {"monitoring.alerts": ALERTS_TOPIC, "monitoring.checks": CHECKS_TOPIC}
    for topic in config["topics"]:
        topic["name"] = renamed[topic["name"]]
    config["schema_registry"]["url"] = infra.schema_registry_url
    config["reader_schema"] = str((EXAMPLE.parent / config["reader_schema"]).resolve())
    config.setdefault("delivery", {})["commit_interval_seconds"] = 0.5
    sources = []
    for destination in config["destinations"].values():
        destination["url"] = fake_url
        token = destination["token"]
        if "env" in token:
            os.environ.setdefault(token["env"], DEMO_TOKENS.get(token["env"], "demo-token"))
            secret = os.environ[token["env"]]
        else:
            token["file"] = str((EXAMPLE.parent / token["file"]).resolve())
            secret = Path(token["file"]).read_text().strip()
        sources.append(AlertSource(destination["alert_source_config_id"], secret))
    path = folder / "streamer.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, sources


class TrafficProducer(threading.Thread):
    """Produces `MonitoringTraffic` at `rate` events/s: alerts in Avro (schema v1, via the
    registry), checks in JSON, bad input as raw bytes on the alerts topic."""

    def __init__(self, infra: Infrastructure, rate: float, limit: int | None) -> None:
        super().__init__(name="demo-producer", daemon=True)
        from confluent_kafka.schema_registry import SchemaRegistryClient
        from confluent_kafka.schema_registry.avro import AvroSerializer

        self.producer = Producer({"bootstrap.servers": infra.bootstrap_servers})
        v1 = load_schema(WRITER_SCHEMA)
        self.serialize = AvroSerializer(
            SchemaRegistryClient({"url": infra.schema_registry_url}), json.dumps(v1)
        )
        self.rate, self.limit = rate, limit
        self.produced = 0
        self.stop = threading.Event()

    def run(self) -> None:
        from confluent_kafka.serialization import MessageField, SerializationContext

        context = SerializationContext(ALERTS_TOPIC, MessageField.VALUE)
        start = time.monotonic()
        for item in MonitoringTraffic():
            if self.stop.is_set() or (self.limit is not None and self.produced >= self.limit):
                break
            if item.kind == "bad":
                self.producer.produce(ALERTS_TOPIC, key=item.key, value=item.raw)
            elif item.kind == "check":
                assert item.event is not None
                self.producer.produce(CHECKS_TOPIC, key=item.key, value=as_json(item.event))
            else:
                assert item.event is not None
                event = {k: v for k, v in item.event.items() if k != "runbook_url"}
                self.producer.produce(
                    ALERTS_TOPIC, key=item.key, value=self.serialize(event, context)
                )
            self.produced += 1
            self.producer.poll(0)
            delay = start + self.produced / self.rate - time.monotonic()
            if delay > 0:
                self.stop.wait(delay)
        self.producer.flush(30)


def _summary(stats: Stats, produced: int, lag: int, fake: FakeIncidentIo, elapsed: float) -> str:
    answers = fake.answers
    return "\n".join(
        [
            f"streamer demo — {elapsed:5.0f} s   (Ctrl-C stops; the engine drains and commits)",
            "",
            f"  produced        {produced:>7}",
            f"  consumed        {stats.consumed:>7}",
            f"  routed          {stats.routed:>7}   alert events made by the rules",
            f"  dropped         {stats.dropped:>7}   by the rules, on purpose",
            f"  silenced        {stats.silenced:>7}   kept quiet by a silence (streamer silence)",
            f"  delivered       {stats.delivered:>7}   incident.io answered 202",
            f"  retried         {stats.retried:>7}",
            f"  dead-lettered   {stats.dead_lettered:>7}   bad input, refused payloads",
            f"  superseded      {stats.superseded:>7}   a newer state of their key sent instead",
            f"  rate-limit waits{stats.rate_limit_waits:>7}   deliveries held back by the limiter",
            f"  429s            {stats.rate_limited:>7}",
            f"  held dest.      {stats.held_destinations:>7}",
            f"  lag             {lag:>7}   messages not yet committed",
            "",
            f"  incident.io double received {sum(1 for a in answers if a.status == 202)} events "
            f"({len(answers)} requests)",
        ]
    )


def run_demo(
    *,
    events: int | None,
    rate: float,
    check: bool,
    stop: threading.Event,
    metrics_port: int = 9464,
    out: TextIO = sys.stdout,
) -> int:
    """Runs until `stop` is set (the CLI sets it on SIGINT/SIGTERM), or `events` are done."""
    say = functools.partial(print, file=out, flush=True)
    log_file = Path(tempfile.gettempdir()) / "streamer-demo.log"
    logs.configure("info", "text", file=log_file)
    say("starting the local Kafka broker, schema registry and incident.io double…")
    with (
        local_infrastructure() as infra,
        FakeIncidentIo() as fake,
        tempfile.TemporaryDirectory() as tmp,
    ):
        config_path, sources = demo_config(infra, fake.url, Path(tmp))
        for source in sources:
            fake.add_source(source)
        admin = AdminClient({"bootstrap.servers": infra.bootstrap_servers})
        for topic in (ALERTS_TOPIC, CHECKS_TOPIC):
            admin.create_topics([NewTopic(topic, num_partitions=4)])[topic].result(30)
        say(
            f"kafka:            {logs.redact_url(infra.bootstrap_servers)}  "
            f"({infra.provided_by}); topics {ALERTS_TOPIC}, {CHECKS_TOPIC}"
        )
        say(f"schema registry:  {logs.redact_url(infra.schema_registry_url)}")
        say(
            f"incident.io fake: {fake.url}/v2/alert_events/http/{{alert_source_config_id}}  "
            f"(received events: {fake.url}/_fake/events)"
        )
        say(f"configuration:    {EXAMPLE} (pointed at the services above)")
        say(f"service log:      {log_file}")
        telemetry = Telemetry()
        try:
            server, url = serve(telemetry, "127.0.0.1", metrics_port)
        except OSError as e:
            say(f"error: cannot serve metrics on port {metrics_port}: {e}; use --metrics-port")
            return 2
        say(f"metrics:          {url}/metrics   health: {url}/livez, {url}/readyz")
        try:
            if check:
                load_config(config_path)
                return 0
            return _run(infra, fake, config_path, events, rate, stop, out, telemetry)
        finally:
            server.shutdown()


def _run(
    infra: Infrastructure,
    fake: FakeIncidentIo,
    config_path: Path,
    events: int | None,
    rate: float,
    interrupted: threading.Event,
    out: TextIO,
    telemetry: Telemetry,
) -> int:
    stop = threading.Event()
    engine: Engine | None = None
    engine_thread: threading.Thread | None = None
    producer = TrafficProducer(infra, rate, events)
    watcher = Consumer({"bootstrap.servers": infra.bootstrap_servers, "group.id": "demo-lag"})
    tty = out.isatty()
    started = time.monotonic()

    def show(final: bool = False, lag: int | None = None) -> int:
        if lag is None:
            lag = position(watcher, TOPICS, dict(engine.stats.committed) if engine else {}).lag
        stats = engine.stats if engine else Stats()
        text = _summary(stats, producer.produced, lag, fake, time.monotonic() - started)
        out.write(("\x1b[H\x1b[2J" if tty and not final else "") + text + "\n\n")
        out.flush()
        return lag

    def done(lag: int) -> bool:
        produced = events is not None and producer.produced >= events
        return produced and not producer.is_alive() and lag == 0

    try:
        engine = Engine(load_config(config_path), telemetry=telemetry)
        engine_thread = threading.Thread(
            target=engine.run, args=(stop,), name="engine", daemon=True
        )
        engine_thread.start()
        producer.start()
        last_shown = 0.0
        while engine_thread.is_alive() and not interrupted.wait(0.5):
            if tty or time.monotonic() - last_shown >= 5:
                last_shown = time.monotonic()
                if done(show()):
                    break
            elif done(position(watcher, TOPICS, dict(engine.stats.committed)).lag):
                break
    finally:
        producer.stop.set()
        if producer.is_alive():
            producer.join(30)
        stop.set()  # the engine drains within its grace period and commits
        if engine_thread is not None:
            engine_thread.join(60)
    watcher.close()
    if engine is None:
        return 1
    # the broker's word, read after the engine left: the offsets and notes it committed
    final = committed_position(infra.bootstrap_servers, TOPICS, engine.config.file.kafka.group_id)
    show(final=True, lag=final.lag)
    out.write(
        reconciliation(
            engine.stats,
            message_outcomes(telemetry),
            final,
            refused(telemetry),
            telemetry.silenced.total(lambda a: a.get("stage") == "waiting"),
        )
    )
    out.flush()
    return 0 if (events is None or final.lag == 0) else 1
