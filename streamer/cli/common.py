"""What several commands share: the `--config` and `--metrics-*` options, times given on
the command line, signals, and printing a configuration's warnings.

Each option is declared once here and given to a command as an argparse parent, so a
flag reads the same (name, metavar, help) in every command that takes it.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from datetime import UTC, datetime
from types import FrameType
from typing import Any

METRICS_PORT = 9464


def config_option() -> argparse.ArgumentParser:
    """A parent parser with the required `--config FILE`."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--config", required=True, metavar="FILE", help="the YAML configuration")
    return parent


def metrics_options(*, host: str | None) -> argparse.ArgumentParser:
    """A parent parser with `--metrics-port`, and `--metrics-host` unless `host` is None
    (the command then serves on loopback only)."""
    parent = argparse.ArgumentParser(add_help=False)
    where = "" if host else " on 127.0.0.1"
    parent.add_argument(
        "--metrics-port",
        type=int,
        default=METRICS_PORT,
        metavar="PORT",
        help=f"port of /metrics (Prometheus), /livez and /readyz{where} "
        "(default: %(default)s; 0 picks a free one)",
    )
    if host is not None:
        parent.add_argument(
            "--metrics-host",
            default=host,
            metavar="ADDRESS",
            help="address to serve them on (default: %(default)s, reachable by Kubernetes)",
        )
    return parent


def iso_time(text: str) -> datetime:
    """An option's ISO 8601 time (UTC when it names no zone); argparse names the option in
    its error."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time (e.g. 2026-12-07T18:30:00Z)"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def stop_on_sigterm() -> None:
    """SIGTERM and SIGINT end the command like Ctrl-C, so containers and servers are removed.

    SIGINT is set explicitly: a process started in the background by a script inherits
    SIGINT as ignored, and Python then never turns it into KeyboardInterrupt.
    """

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def stop_event_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT, for commands that drain before they stop."""
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    return stop


def wait_for_ctrl_c() -> None:
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        print("stopping…", flush=True)


def warn_of(config: Any) -> None:
    """The file's warnings (matchers Alertmanager's parsers read differently) on stderr."""
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
