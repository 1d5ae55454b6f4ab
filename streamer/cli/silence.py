"""`streamer silence`: add, list, expire and import the silences every replica shares.

Each command reads or writes the silences topic (`kafka.silence_topic`, compacted; created
by the commands that write it when it does not exist) with the configuration's Kafka
settings, so a silence written here applies in every running replica within about a second
(streamer/silence_book.py). Only Kafka's secrets are read: the destinations' tokens are
not needed. The writers (add, expire, import) also write away (tombstone) silences expired
longer than `EXPIRED_KEPT` ago, so compaction removes them; add and import refuse to take
the silences active or pending past `MAX_IN_FORCE`; import never writes over a version the
topic holds that is newer, or expired. A silence added with `--expire-if-unmatched-for` is
expired by the replicas themselves (streamer/silence_expiry.py). Exit status: 0 done, 1 bad
input or configuration (the message names the field), 2 the topic could not be read or
written.
"""

from __future__ import annotations

import argparse
import getpass
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamer.cli.common import config_option, iso_time
from streamer.silence_writes import (
    MAX_IN_FORCE,
    forgettable,
    newer_than_topic,
    refuse_past_bound,
)

if TYPE_CHECKING:
    from streamer.silences import Silence

READ_TIMEOUT = 30.0
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
STATES = ("active", "pending", "expired")


def duration(text: str) -> timedelta:
    """Alertmanager's durations: `2h`, `1h30m`, `90s`, `1d`, `1w` (units ms s m h d w y)."""
    parts = _DURATION.findall(text)
    if not text or "".join(n + u for n, u in parts) != text:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: write e.g. 2h, 1h30m, 45m, 1d (units ms s m h d w y)"
        )
    seconds = sum(int(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a silence lasts longer than zero")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:  # argparse reports only ValueError, TypeError and its own error
        raise argparse.ArgumentTypeError(f"{text!r}: too long for a silence") from None


def add_parser(commands: Any) -> None:
    silence = commands.add_parser(
        "silence",
        help="mute alerts for a while, in every replica (add, list, expire, import)",
        description=(
            "Silences, as Alertmanager's: alerts whose labels (the event's labels, and an "
            "Alertmanager alert's own labels over them) match every matcher of an active "
            "silence are not sent; they end `silenced`, committed like dropped ones. A "
            "resolve is never silenced. Silences live in the compacted topic "
            "kafka.silence_topic, which every replica reads in full: one added here applies "
            f"everywhere within about a second. At most {MAX_IN_FORCE:,} silences are active "
            "or pending at once; expired ones are listed for 5 days, then tombstoned by the "
            "next add, expire or import."
        ),
    )
    sub = silence.add_subparsers(dest="silence_command", required=True, metavar="COMMAND")
    add = sub.add_parser(
        "add",
        parents=[config_option()],
        help="add a silence",
        description="Adds a silence and prints its id. Matchers are Alertmanager's "
        '(amtool\'s): name="value", name!="value", name=~"regex", name!~"regex"; '
        'several in one --matcher as {a="1", b="2"}, or --matcher repeated; all must hold. '
        f"Refused when {MAX_IN_FORCE:,} silences are already active or pending.",
    )
    add.add_argument(
        "--matcher",
        action="append",
        required=True,
        metavar="MATCHERS",
        help='e.g. \'alertname="DiskFull"\' or \'{env=~"prod|staging", team="db"}\'',
    )
    add.add_argument("--duration", type=duration, required=True, help="how long: 2h, 1h30m, 1d, 1w")
    add.add_argument(
        "--start", type=iso_time, metavar="TIME", help="when it starts (ISO 8601; default: now)"
    )
    add.add_argument("--comment", required=True, help="why (a ticket, a maintenance)")
    add.add_argument(
        "--author", default=None, help="who asks (default: the user running the command)"
    )
    add.add_argument(
        "--expire-if-unmatched-for",
        type=duration,
        metavar="DURATION",
        help="expire it by itself once no replica saw it match an alert for this long "
        "(counted from its start; decided by the replicas, which then write to the topic; "
        "up to 2 minutes more, as their marks lag; keep clocks within 30 s)",
    )
    add.set_defaults(func=cmd_add)

    listing = sub.add_parser(
        "list",
        parents=[config_option()],
        help="list silences",
        description="Lists the silences in the topic: active and pending ones, and those "
        "expired in the last 5 days (with --state expired or --all).",
    )
    listing.add_argument("-o", "--output", choices=["table", "json"], default="table")
    listing.add_argument(
        "--state",
        action="append",
        choices=STATES,
        help="only silences in this state (repeatable; default: active and pending)",
    )
    listing.add_argument("--all", action="store_true", help="every state, expired ones too")
    listing.set_defaults(func=cmd_list)

    expire = sub.add_parser(
        "expire",
        parents=[config_option()],
        help="end silences now",
        description="Ends the silences with these ids now, in every replica at once whatever "
        "its clock says (the record is marked expired; its end shows this host's time); "
        "they stay listed as expired for 5 days.",
    )
    expire.add_argument("ids", nargs="+", metavar="ID")
    expire.set_defaults(func=cmd_expire)

    importing = sub.add_parser(
        "import",
        parents=[config_option()],
        help="import Alertmanager's silences (amtool silence query -o json)",
        description="Reads a JSON list of silences as `amtool silence query -o json` (or "
        "`streamer silence list -o json`) prints it and writes those not expired yet, with "
        "their ids (importing twice writes the same silences). A silence whose id the topic "
        "holds already is kept as the topic has it when that one is expired (an import "
        "never revives it: add a new one) or was updated later (its updatedAt); each kept "
        "one is named. Nothing is written if any silence is invalid (the error names it and "
        f"the field) or if the import would leave more than {MAX_IN_FORCE:,} silences active "
        "or pending.",
    )
    importing.add_argument("file", metavar="FILE", help="the JSON file ('-': standard input)")
    importing.set_defaults(func=cmd_import)


class SilenceTopic:
    """The configured silences topic and the Kafka settings to reach it."""

    def __init__(self, config_path: str) -> None:
        from dataclasses import replace

        from streamer.config import load_config
        from streamer.config.problems import Problems
        from streamer.config.secrets import read_secrets
        from streamer.kafka_clients import kafka_settings

        config = load_config(config_path, check_secrets=False)  # no incident.io token needed
        problems = Problems(Path(config_path), lambda: None, None)
        kafka = config.file.kafka
        secrets = read_secrets(
            kafka.secret_properties,
            ("kafka", "secret_properties"),
            Path(config_path).parent,
            problems,
            True,
        )
        problems.raise_if_any()
        self.config = replace(config, kafka_secrets=secrets)
        self.name = kafka.silence_topic
        self.settings = {**kafka_settings(self.config), "group.id": kafka.group_id}

    def read(self) -> list[Silence]:
        """Every silence in the topic, those expired past `EXPIRED_KEPT` too."""
        from streamer.silence_book import read_silences

        return read_silences(self.settings, self.name, READ_TIMEOUT).known()

    def write(self, silences: list[Silence], known: list[Silence] | None = None) -> None:
        """Writes `silences`, and tombstones for the long-expired ones among `known` (a
        tombstone written twice is harmless: compaction keeps the last)."""
        from streamer.silence_book import ensure_topic, publish

        forget = forgettable(known or (), silences, datetime.now(UTC))
        if ensure_topic(self.settings, self.name):
            print(f"created the compacted topic {self.name}", file=sys.stderr)
        publish(self.settings, self.name, silences, forget)


def _run(args: argparse.Namespace, body: Any) -> int:
    """Runs `body(topic)` with the errors a user can act on printed, not raised."""
    from streamer import logs
    from streamer.config import ConfigError
    from streamer.silences import SilenceError

    try:
        topic = SilenceTopic(args.config)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    logs.MASK.add(topic.config.secret_values())
    try:
        result: int = body(topic)
        return result
    except SilenceError as e:
        print(f"error: {logs.MASK.mask(str(e))}", file=sys.stderr)
        return 2 if "could not be read" in str(e) or "writing to" in str(e) else 1
    except Exception as e:  # the brokers: unreachable, refused
        print(f"error: {topic.name}: {logs.MASK.mask(str(e))}", file=sys.stderr)
        return 2


def cmd_add(args: argparse.Namespace) -> int:
    from streamer.silences import Silence, SilenceError, parse_matchers

    try:
        matchers, warnings = parse_matchers(args.matcher)
        now = datetime.now(UTC)
        silence = Silence.new(
            matchers,
            duration=args.duration,
            at=now,
            starts_at=args.start,
            created_by=args.author or _user(),
            comment=args.comment,
            expire_if_unmatched_for=args.expire_if_unmatched_for,
        )
    except SilenceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if silence.ends_at <= now:
        print(
            f"error: --start {silence.starts_at.isoformat()} and --duration end it in the past "
            f"({silence.ends_at.isoformat()}): nothing to silence",
            file=sys.stderr,
        )
        return 1
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)

    def write(topic: SilenceTopic) -> int:
        known = topic.read()
        refuse_past_bound(topic.name, known, [silence], now)
        topic.write([silence], known)
        print(silence.id)
        return 0

    return _run(args, write)


def cmd_list(args: argparse.Namespace) -> int:
    states = set(STATES) if args.all else set(args.state or ("active", "pending"))

    def show(topic: SilenceTopic) -> int:
        now = datetime.now(UTC)
        listed = (s for s in topic.read() if s.state(now) in states and not s.forgotten(now))
        shown = sorted(listed, key=lambda s: (s.ends_at, s.id))
        if args.output == "json":
            out = [{**s.to_json(), "status": {"state": s.state(now)}} for s in shown]
            print(json.dumps(out, indent=2, ensure_ascii=False))
        else:
            print(table(shown, now), end="")
        return 0

    return _run(args, show)


def cmd_expire(args: argparse.Namespace) -> int:
    from streamer.silences import SilenceError

    def expire(topic: SilenceTopic) -> int:
        known = topic.read()
        by_id = {s.id: s for s in known}
        unknown = [i for i in args.ids if i not in by_id]
        if unknown:
            raise SilenceError(
                f"no silence with id {', '.join(unknown)} in {topic.name} "
                "(see `streamer silence list --all`)"
            )
        now = datetime.now(UTC)
        topic.write([by_id[i].expired_at(now) for i in args.ids], known)
        for i in args.ids:
            print(f"expired {i}")
        return 0

    return _run(args, expire)


def cmd_import(args: argparse.Namespace) -> int:
    from streamer.silences import SilenceError, from_amtool

    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
        silences = from_amtool(json.loads(text))
    except OSError as e:
        print(f"error: {args.file}: cannot read it: {e.strerror}", file=sys.stderr)
        return 1
    except json.JSONDecodeError as e:
        print(f"error: {args.file}:{e.lineno}:{e.colno}: not JSON: {e.msg}", file=sys.stderr)
        return 1
    except (UnicodeDecodeError, RecursionError) as e:  # not UTF-8; nested past Python's stack
        print(f"error: {args.file}: not amtool's JSON: {str(e)[:200]}", file=sys.stderr)
        return 1
    except SilenceError as e:
        print(f"error: {args.file}: silence {e}", file=sys.stderr)
        return 1
    now = datetime.now(UTC)
    current = [s for s in silences if s.state(now) != "expired"]

    def write(topic: SilenceTopic) -> int:
        known = topic.read()
        written, kept = newer_than_topic(current, known, now)
        refuse_past_bound(topic.name, known, written, now)
        topic.write(written, known)
        print(
            f"imported {len(written)} silences into {topic.name}"
            + (
                f" ({len(silences) - len(current)} expired ones skipped)"
                if len(current) < len(silences)
                else ""
            )
        )
        for line in kept:
            print(line)
        return 0

    return _run(args, write)


def table(silences: list[Silence], now: datetime) -> str:
    rows = [("ID", "STATE", "MATCHERS", "STARTS", "ENDS", "CREATED BY", "COMMENT")]
    for s in silences:
        rows.append(
            (
                s.id,
                s.state(now),
                s.matcher_text,
                s.starts_at.strftime("%Y-%m-%d %H:%M:%SZ"),
                s.ends_at.strftime("%Y-%m-%d %H:%M:%SZ"),
                _shown(s.created_by),
                _shown(s.comment.replace("\n", " ")),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True))
        + "  "
        + row[-1]
        + "\n"
        for row in rows
    )


def _shown(text: str) -> str:
    """A free text from the topic as a terminal may show it: control characters (a line
    break, a terminal escape another writer put there) escaped, never sent raw."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in a bare container
        return "unknown"
