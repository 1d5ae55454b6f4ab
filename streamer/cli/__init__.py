"""The `streamer` command line: one sub-command per job, each explained by `--help`.

One module per command group (`run`, `rules`, `dlq`, `send`, `silence`, and `local` for
demo, infra and fake-incident-io); options several commands take (`--config`,
`--metrics-*`) are declared once, in `common`. `main` is the console script (`streamer`) and what
`python -m streamer` runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from streamer import __version__
from streamer.cli import dlq, local, rules, run, send, silence


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
    run.add_parser(commands)
    local.add_parsers(commands)  # demo, infra
    rules.add_parser(commands)
    dlq.add_parser(commands)
    send.add_parser(commands)
    silence.add_parser(commands)
    local.add_fake_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args))


__all__ = ["build_parser", "main"]
