"""`streamer run`: the service itself, after checking that its peers answer.

Nothing is consumed before the configuration loads cleanly and the brokers (and the
schema registry, when a topic needs it) answer, asked with the very clients the engine
builds; whatever is printed about them shows no credentials.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from streamer.cli.common import config_option, metrics_options, stop_event_on_signals

if TYPE_CHECKING:
    from streamer.config import Config
    from streamer.routing import Rules
    from streamer.silence_book import SilenceBook
    from streamer.telemetry import Telemetry


def add_parser(commands: Any) -> None:
    run = commands.add_parser(
        "run",
        parents=[config_option(), metrics_options(host="0.0.0.0")],
        help="consume, route and deliver: the service itself",
        description=(
            "Consumes the configured topics in a consumer group, decodes and routes each "
            "event, delivers alert events to incident.io with per-key ordering and rate "
            "limits, dead-letters what cannot be delivered, and commits an offset only when "
            "everything before it is terminal. SIGTERM or Ctrl-C: stop fetching, drain within "
            "delivery.shutdown_grace_seconds, commit, leave the group. The configuration file "
            "is re-read when it changes."
        ),
    )
    run.add_argument(
        "--startup-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for the brokers and registry at start-up "
        "before exiting with an error (default: %(default)s)",
    )
    run.add_argument(
        "--log-format",
        choices=["json", "text"],
        default="json",
        help="json: one object per line with topic/partition/offset/route/destination/"
        "deduplication_key/request_id (default); text: for reading at a terminal",
    )
    run.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log level (default: %(default)s)",
    )
    run.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    # First, before the slow imports: a stop asked for while starting (a pod deleted
    # during start-up) ends the process cleanly too. The engine drains and commits; a
    # second signal is not needed.
    stop = stop_event_on_signals()

    from streamer import logs
    from streamer.config import ConfigError, load_config
    from streamer.engine import Engine

    logs.configure(args.log_level, args.log_format)
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    logs.MASK.add(config.secret_values())  # before anything can print an error
    for warning in config.warnings:  # matchers Alertmanager's parsers read differently
        logging.getLogger("streamer.config").warning(warning, extra={"config": args.config})
    problem = check_reachable(config, args.startup_timeout)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from streamer.metrics_server import serve
    from streamer.telemetry import Health, Telemetry

    # liveness: the poll loop must turn within librdkafka's max.poll.interval.ms
    max_poll = float(config.file.kafka.properties.get("max.poll.interval.ms", 300_000)) / 1000
    telemetry = Telemetry(health=Health(max_poll_interval=max_poll))
    try:
        server, url = serve(telemetry, args.metrics_host, args.metrics_port)
    except OSError as e:
        print(
            f"error: cannot serve metrics on {args.metrics_host}:{args.metrics_port}: {e}; "
            "choose another --metrics-port",
            file=sys.stderr,
        )
        return 2
    topics = ", ".join(t.name for t in config.file.topics)
    print(f"streamer: consuming {topics} as group {config.file.kafka.group_id}", flush=True)
    print(f"metrics: {url}/metrics   health: {url}/livez, {url}/readyz", flush=True)
    try:
        engine = Engine(config, telemetry=telemetry)
        telemetry.gauge("streamer.routes.muted", lambda: muted_routes(engine.config.rules))
        show_silences(telemetry, engine.silences)
        engine.run(stop)
    finally:
        server.shutdown()
        telemetry.shutdown()
    return 0


def muted_routes(rules: Rules, at: datetime | None = None) -> list[tuple[float, dict[str, str]]]:
    """The `streamer.routes.muted` gauge: 1 per route a time interval keeps quiet at `at`
    (now), with the intervals and the setting that do, from the rules in force."""
    quiet = rules.quiet_routes(at or datetime.now(UTC))
    return [(1.0, {"route": r, "interval": ",".join(n), "by": by}) for r, by, n in quiet]


def show_silences(telemetry: Telemetry, book: SilenceBook) -> None:
    """The silences in force, on /metrics (`streamer.silences.active`: 1 per active silence,
    by id; `streamer.silences.readable`: 0 while the topic cannot be read) and in
    `/pending` (`silences`: each active one, its matchers, end, author and comment, and how
    many alert events it kept quiet here)."""
    pending = telemetry.pending

    def active() -> list[tuple[float, dict[str, str]]]:
        return [(1.0, {"silence": s.id}) for s in book.active(datetime.now(UTC))]

    def silenced_by(silence_id: str) -> int:
        return telemetry.silenced.total(lambda a: a.get("silence") == silence_id)

    def shown() -> dict[str, object]:
        quiet = [
            {
                "id": s.id,
                "matchers": s.matcher_text,
                "ends_at": s.ends_at.isoformat(),
                "created_by": s.created_by,
                "comment": s.comment,
                "silenced_here": silenced_by(s.id),
            }
            for s in book.active(datetime.now(UTC))
        ]
        return {**pending(), "silences": quiet, "silences_readable": book.readable()}

    telemetry.gauge("streamer.silences.active", active)
    telemetry.gauge("streamer.silences.readable", lambda: [(float(book.readable()), {})])
    telemetry.pending = shown


def check_reachable(config: Config, timeout: float) -> str | None:
    """None if the broker (and the registry, when a topic needs it) answer; else why not.

    Both are asked with the clients the engine builds (`streamer.kafka_clients`): the same
    addresses, TLS and credentials. What is printed shows no credentials: addresses go
    through `redact_url` and the answer through `logs.MASK`.
    """
    from confluent_kafka.admin import AdminClient

    from streamer import logs
    from streamer.kafka_clients import kafka_settings

    admin = AdminClient({**kafka_settings(config), "log_level": 0})
    try:
        admin.list_topics(timeout=timeout)
    except Exception as e:
        return logs.MASK.mask(
            f"the Kafka brokers at {logs.redact_url(config.file.kafka.bootstrap_servers)} did "
            f"not answer within {timeout:.0f} s ({e}); check kafka.bootstrap_servers, "
            "kafka.properties and kafka.secret_properties, and the network"
        )
    if any(t.format == "confluent" for t in config.file.topics):
        return registry_problem(config, timeout)
    return None


def registry_problem(config: Config, timeout: float) -> str | None:
    """None if the schema registry lists its subjects to the engine's registry client."""
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    from streamer import logs
    from streamer.kafka_clients import registry_of

    settings = config.file.schema_registry
    if settings is None:
        return None
    where = f"the schema registry at {logs.redact_url(settings.url)}"
    check = "check schema_registry.url, its properties and secret_properties"
    try:
        registry = registry_of(config)
    except Exception as e:  # an unknown property, an unreadable TLS file
        return logs.MASK.mask(f"{where}: its client cannot be set up ({e}); {check}")
    assert registry is not None
    answers: list[Exception | None] = []

    def ask() -> None:
        try:
            registry._client.get_subjects()  # the decoders' client: auth and TLS included
            answers.append(None)
        except Exception as e:
            answers.append(e)

    # The client retries on its own schedule; the start-up wait stays bounded regardless.
    asking = threading.Thread(target=ask, name="registry-probe", daemon=True)
    asking.start()
    asking.join(timeout)
    if not answers:
        return f"{where} did not answer within {timeout:.0f} s; {check}, and the network"
    error = answers[0]
    if error is None:
        return None
    if isinstance(error, SchemaRegistryError) and error.http_status_code in (401, 403):
        problem = (
            f"{where} refused the configured credentials (HTTP {error.http_status_code}); "
            "check basic.auth.user.info (or bearer.auth.*) in schema_registry.secret_properties"
        )
    elif isinstance(error, SchemaRegistryError):
        problem = (
            f"{where} answered HTTP {error.http_status_code} ({error.error_message}); "
            f"{check} (a Confluent-compatible API: Apicurio's is at /apis/ccompat/v7)"
        )
    else:
        problem = f"{where} did not answer ({type(error).__name__}: {error}); {check}"
    return logs.MASK.mask(problem)
