"""Commands that run the pipeline's parts on this machine: `demo`, `infra`, `fake-incident-io`.

They are for development and trying things out, never for production: each cleans up what
it started (containers, servers) on Ctrl-C or SIGTERM, even when started from a script.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from streamer.cli.common import (
    metrics_options,
    stop_event_on_signals,
    stop_on_sigterm,
    wait_for_ctrl_c,
)

DEMO_SOURCE_ID = "01DEMOALERTSOURCE"
DEMO_TOKEN = "demo-token"  # a made-up token for the local double, never a real secret


def add_parsers(commands: Any) -> None:
    demo = commands.add_parser(
        "demo",
        parents=[metrics_options(host=None)],
        help="the whole pipeline locally, with realistic traffic and a live summary",
        description=(
            "Starts a real Kafka broker and schema registry (testcontainers: the official "
            "images with Docker, locally built ones with podman where there is no Docker, or "
            "the services named by KAFKA_BOOTSTRAP_SERVERS and SCHEMA_REGISTRY_URL) and the "
            "incident.io double; produces realistic monitoring traffic (services firing and "
            "resolving, flapping checks, noise, a little bad input); runs the service with "
            "examples/streamer.yaml (shipped with the package); and shows consumed, routed, "
            "dropped, delivered, retried, dead-lettered, rate-limit waits and lag until Ctrl-C."
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


def add_fake_parser(commands: Any) -> None:
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
        type=parse_source,
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


def parse_source(text: str) -> tuple[str, str, int]:
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


def cmd_demo(args: argparse.Namespace) -> int:
    from streamer.demo import run_demo
    from streamer.testing.infra import InfrastructureUnavailable

    stop = stop_event_on_signals()  # the demo stops its producer, drains, and cleans up
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


def cmd_infra(args: argparse.Namespace) -> int:
    from streamer.logs import redact_url
    from streamer.testing.infra import InfrastructureUnavailable, local_infrastructure

    stop_on_sigterm()
    try:
        with local_infrastructure(partitions=args.partitions) as infra:
            # They may come from KAFKA_BOOTSTRAP_SERVERS / SCHEMA_REGISTRY_URL: no credentials.
            print(f"kafka:           {redact_url(infra.bootstrap_servers)}", flush=True)
            print(f"schema registry: {redact_url(infra.schema_registry_url)}", flush=True)
            print(f"provided by:     {infra.provided_by}", flush=True)
            if not args.check:
                print("Ctrl-C stops them and removes the containers.", flush=True)
                wait_for_ctrl_c()
    except InfrastructureUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


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
    stop_on_sigterm()
    try:
        fake.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()
    return 0
