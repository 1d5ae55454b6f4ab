"""The `streamer` command line: one sub-command per job, each explained by `--help`."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from streamer import __version__

DEMO_SOURCE_ID = "01DEMOALERTSOURCE"
DEMO_TOKEN = "demo-token"  # a made-up token for the local double, never a real secret


def _parse_source(text: str) -> tuple[str, str, int]:
    """ID:TOKEN or ID:TOKEN:EVENTS_PER_MINUTE, as `--source` takes it."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not all(parts[:2]):
        raise argparse.ArgumentTypeError(
            f"--source {text!r}: expected ID:TOKEN or ID:TOKEN:EVENTS_PER_MINUTE"
        )
    try:
        per_minute = int(parts[2]) if len(parts) == 3 else 120
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--source {text!r}: EVENTS_PER_MINUTE must be a whole number"
        ) from None
    return parts[0], parts[1], per_minute


def _stop_on_sigterm() -> None:
    """SIGTERM and SIGINT end the command like Ctrl-C, so containers and servers are removed.

    SIGINT is set explicitly: a process started in the background by a script inherits
    SIGINT as ignored, and Python then never turns it into KeyboardInterrupt.
    """

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _wait_for_ctrl_c() -> None:
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        print("stopping…", flush=True)


def cmd_fake_incident_io(args: argparse.Namespace) -> int:
    from streamer.testing import AlertSource, FakeIncidentIo

    sources = [AlertSource(i, t, n) for i, t, n in args.source] or [
        AlertSource(DEMO_SOURCE_ID, DEMO_TOKEN)
    ]
    fake = FakeIncidentIo(
        sources,
        requests_per_minute_per_token=args.per_token_limit,
        retry_after_header=args.retry_after_header,
        host=args.host,
        port=args.port,
    )
    print(f"fake incident.io listening on {fake.url}", flush=True)
    for source in sources:
        print(
            f"  alert source {source.id}: POST {fake.endpoint(source.id)} "
            f"({source.events_per_minute}/min)",
            flush=True,
        )
    print(f"  control API: {fake.url}/_fake/events, /_fake/answers, /_fake/faults", flush=True)
    _stop_on_sigterm()
    try:
        fake.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()
    return 0


def cmd_infra(args: argparse.Namespace) -> int:
    from streamer.logs import redact_url
    from streamer.testing.infra import InfrastructureUnavailable, local_infrastructure

    _stop_on_sigterm()
    try:
        with local_infrastructure(partitions=args.partitions) as infra:
            # They may come from KAFKA_BOOTSTRAP_SERVERS / SCHEMA_REGISTRY_URL: no credentials.
            print(f"kafka:           {redact_url(infra.bootstrap_servers)}", flush=True)
            print(f"schema registry: {redact_url(infra.schema_registry_url)}", flush=True)
            print(f"provided by:     {infra.provided_by}", flush=True)
            if not args.check:
                print("Ctrl-C stops them and removes the containers.", flush=True)
                _wait_for_ctrl_c()
    except InfrastructureUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from streamer.demo import run_demo
    from streamer.testing.infra import InfrastructureUnavailable

    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()  # the demo stops its producer, drains the engine, and cleans up

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        return run_demo(
            events=args.events,
            rate=args.rate,
            check=args.check,
            stop=stop,
            metrics_port=args.metrics_port,
        )
    except InfrastructureUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _check_reachable(config: object, timeout: float) -> str | None:
    """None if the broker (and the registry, when a topic needs it) answer; else why not.

    Both are asked with the clients the engine builds (`streamer.kafka_clients`): the same
    addresses, TLS and credentials. What is printed shows no credentials: addresses go
    through `redact_url` and the answer through `logs.MASK`.
    """
    from confluent_kafka.admin import AdminClient

    from streamer import logs
    from streamer.config import Config
    from streamer.kafka_clients import kafka_settings

    assert isinstance(config, Config)
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
        return _registry_problem(config, timeout)
    return None


def _registry_problem(config: object, timeout: float) -> str | None:
    """None if the schema registry lists its subjects to the engine's registry client."""
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    from streamer import logs
    from streamer.config import Config
    from streamer.kafka_clients import registry_of

    assert isinstance(config, Config)
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


def cmd_run(args: argparse.Namespace) -> int:
    # First, before the slow imports: a stop asked for while starting (a pod deleted
    # during start-up) ends the process cleanly too.
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()  # the engine drains and commits; a second signal is not needed

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

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
    problem = _check_reachable(config, args.startup_timeout)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from streamer.telemetry import Health, Telemetry, serve

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
        Engine(config, telemetry=telemetry).run(stop)
    finally:
        server.shutdown()
        telemetry.shutdown()
    return 0


def cmd_rules_check(args: argparse.Namespace) -> int:
    from streamer.config import ConfigError, load_config

    try:
        config = load_config(args.config, check_secrets=not args.no_secrets)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1

    def count(n: int, noun: str) -> str:
        return f"{n} {noun}{'' if n == 1 else 's'}"

    routes = sum(1 for _ in config.rules.walk())
    print(
        f"{config.path}: OK ({count(len(config.file.destinations), 'destination')}, "
        f"{count(routes, 'route')}, {count(len(config.file.topics), 'topic')})"
    )
    return 0


def cmd_rules_test(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from streamer.config import ConfigError, load_config
    from streamer.decoding import DecodeError, EventDecoder

    try:
        config = load_config(args.config, check_secrets=False)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    decoder = EventDecoder("json", config.reader_schema)
    results = []
    failed = False
    for event_file in args.event:
        result: dict[str, object] = {"event": event_file}
        results.append(result)
        try:
            event = decoder.decode(Path(event_file).read_bytes())
        except (OSError, DecodeError) as e:
            result["error"] = f"cannot read the event: {e}"
            failed = True
            continue
        decision = config.rules.evaluate(event)
        result["matched_routes"] = list(decision.matched)
        result["deliveries"] = [
            {
                "route": d.route,
                "destination": d.destination,
                "payload": d.payload.model_dump(exclude_none=True),
            }
            for d in decision.deliveries
        ]
        result["dead_letters"] = [
            {"route": f.route, "destination": f.destination, "reason": f.reason}
            for f in decision.failures
        ]
        result["dropped"] = decision.dropped
        if args.explain:
            result["explain"] = config.rules.explain(event)
    print(json.dumps(results, indent=2))
    return 1 if failed else 0


def cmd_send(args: argparse.Namespace) -> int:
    from streamer.send import main

    return main(args)


def _when(text: str) -> object:
    from datetime import UTC, datetime

    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time (e.g. 2026-11-26T09:00:00+00:00)"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def cmd_dlq_replay(args: argparse.Namespace) -> int:
    import json

    from streamer import logs
    from streamer.config import ConfigError, load_config
    from streamer.replay import ReplayFilter, replay

    if args.deliver and args.to_topic:
        print("error: --deliver sends to incident.io; it takes no --to-topic", file=sys.stderr)
        return 1
    try:  # delivering needs the tokens; re-producing to Kafka does not
        config = load_config(args.config, check_secrets=args.deliver)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    # No Engine here: this command masks its own logs, errors and report.
    logs.configure("warning", "text")
    logs.MASK.add(config.secret_values())
    wanted = ReplayFilter(since=args.since, until=args.until, key=args.key, reason=args.reason)
    try:
        report = replay(
            config,
            wanted,
            to_topic=args.to_topic,
            dry_run=args.dry_run,
            deliver=args.deliver,
            max_attempts=args.max_attempts,
        )
    except RuntimeError as e:
        print(logs.MASK.mask(f"error: {e}"), file=sys.stderr)
        return 2
    print(logs.MASK.mask(json.dumps({"dry_run": args.dry_run, **report.as_json()}, indent=2)))
    return 3 if report.failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamer",
        description=(
            "Reads monitoring events (Avro) from Kafka, routes them with an operator's rules "
            "into incident.io alert events, and delivers them with per-key ordering and rate "
            "limits, committing Kafka offsets only after incident.io accepted them."
        ),
    )
    parser.add_argument("--version", action="version", version=f"streamer {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
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
    run.add_argument("--config", required=True, metavar="FILE", help="the YAML configuration")
    run.add_argument(
        "--startup-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for the brokers and registry at start-up "
        "before exiting with an error (default: %(default)s)",
    )
    run.add_argument(
        "--metrics-port",
        type=int,
        default=9464,
        help="port of /metrics (Prometheus), /livez and /readyz (default: %(default)s; "
        "0 picks a free one)",
    )
    run.add_argument(
        "--metrics-host",
        default="0.0.0.0",
        help="address to serve them on (default: %(default)s, reachable by Kubernetes)",
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

    demo = commands.add_parser(
        "demo",
        help="the whole pipeline locally, with realistic traffic and a live summary",
        description=(
            "Starts a real Kafka broker and schema registry (testcontainers: the official "
            "images with Docker, locally built ones with podman where there is no Docker, or "
            "the services named by KAFKA_BOOTSTRAP_SERVERS and SCHEMA_REGISTRY_URL) and the "
            "incident.io double; produces realistic monitoring traffic (services firing and "
            "resolving, flapping checks, noise, a little bad input); runs the service with "
            "examples/streamer.yaml; and shows consumed, routed, dropped, delivered, retried, "
            "dead-lettered, rate-limit waits and lag until Ctrl-C."
        ),
    )
    demo.add_argument(
        "--events",
        type=int,
        metavar="N",
        help="produce N events, wait until every one is delivered or dead-lettered and "
        "committed, print a final summary and exit 0",
    )
    demo.add_argument(
        "--rate",
        type=float,
        default=10.0,
        metavar="PER_SECOND",
        help="events produced per second (default: %(default)s)",
    )
    demo.add_argument(
        "--metrics-port",
        type=int,
        default=9464,
        help="port of /metrics, /livez and /readyz on 127.0.0.1 (default: %(default)s; "
        "0 picks a free one)",
    )
    demo.add_argument(
        "--check",
        action="store_true",
        help="start everything, print where it runs, then stop and exit 0",
    )
    demo.set_defaults(func=cmd_demo)

    infra = commands.add_parser(
        "infra",
        help="start only a local Kafka broker and schema registry (for development)",
        description=(
            "Starts a real Kafka broker (KRaft) and an Apicurio schema registry "
            "(Confluent-compatible API at /apis/ccompat/v7), prints their addresses, and "
            "removes them on Ctrl-C."
        ),
    )
    infra.add_argument(
        "--partitions",
        type=int,
        default=4,
        help="default partition count of auto-created topics (default: 4)",
    )
    infra.add_argument(
        "--check", action="store_true", help="start them, print the addresses, then stop and exit 0"
    )
    infra.set_defaults(func=cmd_infra)

    rules = commands.add_parser(
        "rules",
        help="check a configuration file, or test which alerts events become",
        description="Offline tools for the routing rules, like amtool's `config routes test`.",
    )
    rules_commands = rules.add_subparsers(dest="rules_command", required=True, metavar="COMMAND")
    check = rules_commands.add_parser(
        "check",
        help="validate a configuration file; exit 0 if it is valid, 1 with every problem",
        description=(
            "Validates the whole file as `streamer run` would before consuming: settings, "
            "field paths against the reader schema, regexes, templates, destinations, route "
            "names, and that every token variable or file is set. Each problem is printed as "
            "file:line: route: what is wrong."
        ),
    )
    check.add_argument("--config", required=True, metavar="FILE", help="the YAML configuration")
    check.add_argument(
        "--no-secrets",
        action="store_true",
        help="do not check that token variables and files exist "
        "(for checking the rules away from where they run)",
    )
    check.set_defaults(func=cmd_rules_check)
    test = rules_commands.add_parser(
        "test",
        help="print, as JSON, which routes events match and the alerts they become",
        description=(
            "Evaluates each event (a JSON file valid under the reader schema; see "
            "examples/events/) against the rules and prints, per event, the matched routes, "
            "each delivery with its destination and rendered payload, dead letters with "
            "their reason, and whether the rules dropped it. Nothing is sent. Exit 1 if an "
            "event file cannot be read."
        ),
    )
    test.add_argument("--config", required=True, metavar="FILE", help="the YAML configuration")
    test.add_argument(
        "--event",
        required=True,
        action="append",
        metavar="EVENT.json",
        help="an event file (repeatable)",
    )
    test.add_argument(
        "--explain", action="store_true", help="also say why each route did or did not match"
    )
    test.set_defaults(func=cmd_rules_test)

    dlq = commands.add_parser(
        "dlq",
        help="work with the dead-letter topic",
        description="Tools for the dead-letter topic (kafka.dead_letter_topic).",
    )
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True, metavar="COMMAND")
    replay = dlq_commands.add_parser(
        "replay",
        help="re-send dead letters to their source topic after a fix",
        description=(
            "Reads the dead-letter topic up to its current end, keeps the letters matching "
            "the filters, and produces each original key, value and headers again to the "
            "topic it came from (or --to-topic), where the service consumes it as new; or, "
            "with --deliver, decodes and routes each with the current rules and POSTs its "
            "alert events to incident.io from here (only the route and destination the "
            "letter names). Commits nothing; every run re-sends what matches, so filter "
            "narrowly. Prints a JSON report. Exit status: 0 done, 1 bad configuration, 2 "
            "the dead-letter topic could not be read, 3 some letters could not be delivered "
            "(they stay in the dead-letter topic; the report lists them)."
        ),
    )
    replay.add_argument("--config", required=True, metavar="FILE", help="the YAML configuration")
    replay.add_argument(
        "--since",
        type=_when,
        metavar="TIME",
        help="only letters dead-lettered at or after TIME (ISO 8601; UTC if no zone)",
    )
    replay.add_argument(
        "--until", type=_when, metavar="TIME", help="only letters dead-lettered before TIME"
    )
    replay.add_argument("--key", help="only letters whose Kafka key is KEY")
    replay.add_argument(
        "--reason",
        metavar="PREFIX",
        help="only letters whose reason starts with PREFIX "
        "(http-422, http-4, decode:, template, gave-up)",
    )
    replay.add_argument(
        "--to-topic", metavar="TOPIC", help="produce to TOPIC instead of each letter's source topic"
    )
    replay.add_argument(
        "--deliver",
        action="store_true",
        help="send straight to incident.io (rate limits and failure policy apply) instead of "
        "re-producing to Kafka",
    )
    replay.add_argument(
        "--max-attempts",
        type=int,
        default=5,
        metavar="N",
        help="with --deliver: tries per alert event on 5xx/timeouts before reporting it "
        "failed (default: %(default)s)",
    )
    replay.add_argument(
        "--dry-run", action="store_true", help="report what would be replayed, send nothing"
    )
    replay.set_defaults(func=cmd_dlq_replay)

    send = commands.add_parser(
        "send",
        help="produce an event to a topic in its wire format (smoke and load tests)",
        description="Produces the event in FILE (JSON, as `rules test` reads it) to TOPIC in "
        "the wire format the configuration gives it (through the schema registry for "
        "confluent), keyed by the alerting thing's identity; each copy gets a new event_id "
        "and event_time. Exit status: 0 sent, 1 bad configuration or event, 2 Kafka or the "
        "registry failed.",
    )
    send.add_argument("--config", required=True, metavar="FILE", help="the YAML configuration")
    send.add_argument("--topic", required=True, help="one of the configuration's topics")
    send.add_argument("--event", required=True, metavar="FILE", help="the event (JSON)")
    send.add_argument("--count", type=int, default=1, metavar="N", help="copies (default: 1)")
    send.add_argument("--rate", type=float, metavar="R", help="events per second (default: all)")
    send.add_argument("--dry-run", action="store_true", help="print the framing, send nothing")
    send.set_defaults(func=cmd_send)

    fake = commands.add_parser(
        "fake-incident-io",
        help="serve the incident.io Alert Events V2 double on loopback",
        description=(
            "A contract-faithful incident.io double: validates payloads (422), checks the "
            "alert source token (401) and id (404), enforces rate limits with real 429 bodies, "
            "and records accepted events. Faults and recorded events are reachable under "
            "/_fake/ (see streamer/testing/fake_incident_io/)."
        ),
    )
    fake.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    fake.add_argument(
        "--port", type=int, default=8080, help="port (default: %(default)s; 0 picks one)"
    )
    fake.add_argument(
        "--source",
        action="append",
        type=_parse_source,
        default=[],
        metavar="ID:TOKEN[:PER_MINUTE]",
        help=f"an alert source it accepts (repeatable; default: {DEMO_SOURCE_ID} with a demo "
        "token, 120 events/min)",
    )
    fake.add_argument(
        "--per-token-limit",
        type=int,
        default=1200,
        help="requests per minute per token (default: %(default)s)",
    )
    fake.add_argument(
        "--retry-after-header",
        choices=["seconds", "date", "none"],
        default="seconds",
        help="form of the Retry-After header on 429 (default: %(default)s)",
    )
    fake.set_defaults(func=cmd_fake_incident_io)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args))
