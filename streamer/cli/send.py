"""`streamer send`: produce an event to a topic in its wire format (smoke and load tests)."""

from __future__ import annotations

import argparse
from typing import Any

from streamer.cli.common import config_option


def add_parser(commands: Any) -> None:
    send = commands.add_parser(
        "send",
        parents=[config_option()],
        help="produce an event to a topic in its wire format (smoke and load tests)",
        description="Produces the event in FILE (JSON, as `rules test` reads it) to TOPIC in "
        "the wire format the configuration gives it (through the schema registry for "
        "confluent), keyed by the alerting thing's identity; each copy gets a new event_id "
        "and event_time. Exit status: 0 sent, 1 bad configuration or event, 2 Kafka or the "
        "registry failed.",
    )
    send.add_argument("--topic", required=True, help="one of the configuration's topics")
    send.add_argument("--event", required=True, metavar="FILE", help="the event (JSON)")
    send.add_argument("--count", type=int, default=1, metavar="N", help="copies (default: 1)")
    send.add_argument("--rate", type=float, metavar="R", help="events per second (default: all)")
    send.add_argument("--dry-run", action="store_true", help="print the framing, send nothing")
    send.set_defaults(func=cmd_send)


def cmd_send(args: argparse.Namespace) -> int:
    from streamer.send import main

    return main(args)
