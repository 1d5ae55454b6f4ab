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
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import yaml
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from streamer import budget, logs
from streamer.config import load_config
from streamer.decoding import load_schema
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


@dataclass(frozen=True)
class KafkaPosition:
    """Where the demo's topics stand: messages in them (the high watermarks), offsets the
    group committed, and the offsets above those that its commits' notes say are done
    already (`budget.PartitionNote.done`: its next owner skips them)."""

    in_topics: int = 0
    committed: int = 0
    done_after: int = 0

    @property
    def lag(self) -> int:
        return self.in_topics - self.committed


def _position(
    consumer: Consumer,
    committed: Mapping[tuple[str, int], int],
    notes: Mapping[tuple[str, int], str | None] | None = None,
) -> KafkaPosition:
    in_topics = at = done = 0
    for topic in (ALERTS_TOPIC, CHECKS_TOPIC):
        for partition in consumer.list_topics(topic, timeout=5).topics[topic].partitions:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=5)
            offset = min(high, max(0, committed.get((topic, partition), 0)))
            in_topics, at = in_topics + high, at + offset
            if notes is not None:
                done += budget.decode(notes.get((topic, partition)), offset).done.count()
    return KafkaPosition(in_topics, at, done)


def committed_position(infra: Infrastructure, group_id: str) -> KafkaPosition:
    """The position as the broker holds it for `group_id` (read after the engine left):
    its committed offsets and the notes committed with them."""
    reader = Consumer({"bootstrap.servers": infra.bootstrap_servers, "group.id": group_id})
    try:
        partitions = [
            TopicPartition(topic, partition)
            for topic in (ALERTS_TOPIC, CHECKS_TOPIC)
            for partition in reader.list_topics(topic, timeout=5).topics[topic].partitions
        ]
        answers = reader.committed(partitions, timeout=10)
        offsets = {(tp.topic, tp.partition): tp.offset for tp in answers}
        notes = {(tp.topic, tp.partition): tp.metadata for tp in answers}
        return _position(reader, offsets, notes)
    finally:
        reader.close()


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


def message_outcomes(telemetry: Telemetry) -> dict[str, int]:
    """Messages per outcome: `dropped` from its tally (dropped messages are not timed), the
    others (delivered, dead-lettered, superseded, revoked) from the process-duration
    histogram, which counts each message once: when its last job ends, or when its
    partition is let go unfinished (`revoked`)."""
    from prometheus_client.parser import text_string_to_metric_families

    outcomes: dict[str, int] = {
        "dropped": telemetry.dropped.total(),
        "silenced": telemetry.silenced_messages.total(),
    }
    for family in text_string_to_metric_families(telemetry.scrape().decode()):
        for sample in family.samples:
            if sample.name == "messaging_process_duration_seconds_count":
                outcome = sample.labels.get("streamer_outcome", "?")
                outcomes[outcome] = outcomes.get(outcome, 0) + int(sample.value)
    return outcomes


def refused(telemetry: Telemetry) -> int:
    """Alert events dead-lettered after they were routed: refused by incident.io (a 400,
    413 or 422) or given up on after retries (`dispatch.py`'s reasons)."""
    return telemetry.dead_lettered.total(
        lambda a: str(a.get("reason", "")).startswith("http-") or a.get("reason") == "gave-up"
    )


def reconciliation(
    stats: Stats,
    outcomes: Mapping[str, int],
    kafka: KafkaPosition,
    refused: int = 0,
    quieted: int = 0,
) -> str:
    """The final account, in three sums.

    Messages: each consumed message is in exactly one term, by how its last alert event
    ended (a message that became several alert events counts once); `dropped` is the
    summary's; `silenced` ended with every alert event kept quiet by a silence (a term shown
    when there is one); `not finished` were let go unfinished (at the end: the engine shut
    down), and the next run reads them again. Alert events: the summary's routed, delivered
    and superseded. Kafka: the lag is what the next run reads again (the unfinished
    messages, what was never read) plus the finished messages after the first unfinished
    one, which the commit's offset map lets it skip; a map too long for the commit's 4 KiB
    keeps the runs nearest the committed offset, and the finished messages past it are read
    (and sent) again: more lag than the terms is a duplicate, never a loss. Less lag than
    the terms, or messages that do not add up, would be a bug, and the account says so.
    """
    delivered, dropped = outcomes.get("delivered", 0), outcomes.get("dropped", 0)
    dead, superseded = outcomes.get("dead-lettered", 0), outcomes.get("superseded", 0)
    unfinished, silenced = outcomes.get("revoked", 0), outcomes.get("silenced", 0)
    accounted = delivered + dropped + silenced + dead + superseded + unfinished
    # `quieted`: alert events a silence added while they waited kept quiet (never sent)
    alerts_unfinished = stats.routed - stats.delivered - stats.superseded - refused - quieted
    unread = kafka.in_topics - stats.consumed
    known = unfinished + kafka.done_after + unread
    read_again = kafka.lag - known  # finished, past what the offset map could hold
    adds_up = accounted == stats.consumed and alerts_unfinished >= 0 and read_again >= 0
    lines = [
        "final reconciliation (a message counts once, by how its last alert event ended)",
        f"  messages  consumed {stats.consumed} = dropped {dropped} + "
        + (f"silenced {silenced} + " if silenced else "")
        + f"delivered {delivered} "
        f"+ dead-lettered {dead} + superseded {superseded} + not finished {unfinished}"
        + ("" if accounted == stats.consumed else f"   DOES NOT ADD UP: {accounted}"),
        f"  alerts    routed {stats.routed} = delivered {stats.delivered} "
        f"+ superseded {stats.superseded} + refused {refused} "
        + (f"+ silenced while waiting {quieted} " if quieted else "")
        + f"+ not finished {alerts_unfinished}",
        f"  kafka     lag {kafka.lag} = not finished {unfinished} "
        f"+ done after them {kafka.done_after} (skipped next run) + not read yet {unread}"
        + (f" + done, read again {read_again}" if read_again > 0 else "")
        + ("" if read_again >= 0 else f"   DOES NOT ADD UP: {known}"),
    ]
    if not adds_up:
        lines.append("  the account does not add up: please report it with the service log")
    elif kafka.lag == 0:
        lines.append("  nothing lost: every message finished and every offset committed")
    else:
        lines.append(
            f"  nothing lost: the next run reads the {unfinished + unread} not finished "
            f"or not read yet, and skips the {kafka.done_after} done"
            + (f" (the offset map held no room for {read_again} more)" if read_again else "")
        )
    return "\n".join(lines) + "\n"


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
            lag = _position(watcher, dict(engine.stats.committed) if engine else {}).lag
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
            elif done(_position(watcher, dict(engine.stats.committed)).lag):
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
    position = committed_position(infra, engine.config.file.kafka.group_id)
    show(final=True, lag=position.lag)
    out.write(
        reconciliation(
            engine.stats,
            message_outcomes(telemetry),
            position,
            refused(telemetry),
            telemetry.silenced.total(lambda a: a.get("stage") == "waiting"),
        )
    )
    out.flush()
    return 0 if (events is None or position.lag == 0) else 1
