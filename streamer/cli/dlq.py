"""`streamer dlq`: tools for the dead-letter topic (replay after a fix).

A replay commits nothing and re-sends every letter that matches its filters, so what it
prints (a JSON report) is masked like the service's logs: no secret reaches the terminal.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from streamer.cli.common import config_option, iso_time


def add_parser(commands: Any) -> None:
    dlq = commands.add_parser(
        "dlq",
        help="work with the dead-letter topic",
        description="Tools for the dead-letter topic (kafka.dead_letter_topic).",
    )
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True, metavar="COMMAND")
    replay = dlq_commands.add_parser(
        "replay",
        parents=[config_option()],
        help="re-send dead letters to their source topic after a fix",
        description=(
            "Reads the dead-letter topic up to its current end, keeps the letters matching "
            "the filters, and produces each original key, value and headers again to the "
            "topic it came from, only if the configuration consumes that topic (or to "
            "--to-topic), where the service consumes it as new; or, "
            "with --deliver, decodes and routes each with the current rules and POSTs its "
            "alert events to incident.io from here (only the route and destination the "
            "letter names). Commits nothing; every run re-sends what matches, so filter "
            "narrowly. Prints a JSON report. Exit status: 0 done, 1 bad configuration, 2 "
            "the dead-letter topic could not be read, 3 some letters could not be delivered "
            "(they stay in the dead-letter topic; the report lists them)."
        ),
    )
    replay.add_argument(
        "--since",
        type=iso_time,
        metavar="TIME",
        help="only letters dead-lettered at or after TIME (ISO 8601; UTC if no zone)",
    )
    replay.add_argument(
        "--until", type=iso_time, metavar="TIME", help="only letters dead-lettered before TIME"
    )
    replay.add_argument("--key", help="only letters whose Kafka key is KEY")
    replay.add_argument(
        "--reason",
        metavar="PREFIX",
        help="only letters whose reason starts with PREFIX "
        "(http-422, http-4, decode:, template, gave-up)",
    )
    replay.add_argument(
        "--to-topic",
        metavar="TOPIC",
        help="produce to TOPIC instead of each letter's source topic (without it, letters "
        "naming a topic the configuration does not consume are skipped and counted)",
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
