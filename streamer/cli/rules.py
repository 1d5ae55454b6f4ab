"""`streamer rules`: offline tools for the routing rules (check a file, test events).

Nothing here consumes or sends: `check` loads a file exactly as `run` would before
consuming; `test` evaluates events with the very walk the service uses (`Rules.trace`),
so what it prints, `--explain` included, is what the service would do.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from streamer.cli.common import config_option, iso_time, warn_of
from streamer.cli.rules_test import cmd_rules_test, outcome_of, read_events


def add_parser(commands: Any) -> None:
    rules = commands.add_parser(
        "rules",
        help="check, test, diff or import routing rules",
        description="Offline tools for the routing rules, like amtool's `config routes test`.",
    )
    rules_commands = rules.add_subparsers(dest="rules_command", required=True, metavar="COMMAND")
    check = rules_commands.add_parser(
        "check",
        parents=[config_option()],
        help="validate a configuration file; exit 0 if it is valid, 1 with every problem",
        description=(
            "Validates the whole file as `streamer run` would before consuming: settings, "
            "field paths against the reader schema, regexes, templates, destinations, route "
            "names, and that every token variable or file is set. Each problem is printed as "
            "file:line: route: what is wrong."
        ),
    )
    check.add_argument(
        "--no-secrets",
        action="store_true",
        help="do not check that token variables and files exist "
        "(for checking the rules away from where they run)",
    )
    check.set_defaults(func=cmd_rules_check)
    test = rules_commands.add_parser(
        "test",
        parents=[config_option()],
        help="print, as JSON, which routes events match and the alerts they become",
        description=(
            "Evaluates each event (a JSON file valid under the reader schema; see "
            "examples/events/) against the rules and prints, per event, the matched routes, "
            "each delivery with its destination and rendered payload, dead letters with "
            "their reason, routes a time interval muted (and which interval, at which time: "
            "now, or --at), deliveries an inhibit rule kept quiet (`inhibited`: the rule and "
            "the firing source alert; events are read in the order given, and a source alert "
            "among them fires for the ones after it; with --firing-from-topic, so do the "
            "sources firing now), deliveries a silence keeps quiet "
            "(`silenced`: the silence, with --silences or --silences-from-topic), and whether "
            "the rules dropped it. "
            "Nothing is sent. Exit 1 if an event file cannot be read."
        ),
    )
    test.add_argument(
        "--event",
        required=True,
        action="extend",
        nargs="+",
        metavar="EVENT.json",
        help="event files (repeatable)",
    )
    test.add_argument(
        "--explain",
        action="store_true",
        help="also say why each route did or did not match, and which time interval muted it",
    )
    test.add_argument(
        "--at",
        type=iso_time,
        metavar="TIME",
        help="ask routes' time intervals about TIME (ISO 8601, e.g. 2026-12-07T18:30:00+01:00; "
        "without an offset, UTC) instead of now, the time the service asks about",
    )
    test.add_argument(
        "--silences",
        metavar="FILE",
        help="silences to apply (a JSON list, as `streamer silence list -o json` or "
        "`amtool silence query -o json` print it): a firing delivery one matches at --at "
        "(or now) is listed under `silenced`, with the silence",
    )
    test.add_argument(
        "--silences-from-topic",
        action="store_true",
        help="apply the silences in kafka.silence_topic (read with the file's Kafka settings)",
    )
    test.add_argument(
        "--firing-from-topic",
        action="store_true",
        help="start from the inhibit rules' sources firing now, as kafka.firing_topic says "
        "(read with the file's Kafka settings)",
    )
    test.set_defaults(func=cmd_rules_test)

    diff = rules_commands.add_parser(
        "diff",
        help="which events change route, destination or payload between two configurations",
        description=(
            "Evaluates each event under both configurations (nothing is sent) and prints, as "
            "JSON on stdout, every event whose matched routes, destinations (or dead letters) "
            "or rendered payload differ, with the old and new values; a destination is "
            "compared by what it is (URL, alert source, token variable or file, limit), not "
            "by its name; a short summary goes to "
            "stderr. Exit status: 0 no event changed, 3 some changed, 1 bad configuration."
        ),
    )
    diff.add_argument("--old", required=True, metavar="FILE", help="the configuration today")
    diff.add_argument("--new", required=True, metavar="FILE", help="the proposed configuration")
    diff.add_argument(
        "--event", action="extend", nargs="+", metavar="EVENT.json", help="event files (repeatable)"
    )
    diff.add_argument(
        "--events", metavar="FILE.jsonl", help="a file of events, one JSON object per line"
    )
    diff.set_defaults(func=cmd_rules_diff)

    imports = rules_commands.add_parser(
        "import",
        parents=[config_option()],
        help="turn an Alertmanager configuration's routing tree into streamer rules",
        description=(
            "Reads ALERTMANAGER.yml and prints --config (the base: Kafka, topics, destinations) "
            "with its routes and default replaced by Alertmanager's routing tree: matchers "
            "(read as Alertmanager reads them, on the alert's labels), continue, nesting, "
            "receiver inheritance and routes' mute_time_intervals and active_time_intervals "
            "kept, with the time_intervals (and older mute_time_intervals) they name; the "
            "root receiver becomes the default. A webhook "
            "receiver to incident.io's alert-events URL becomes a destination (its token from "
            "the webhook's credentials_file, else an environment variable; inline tokens are "
            "never copied), and so does an incidentio_configs receiver; a new destination is "
            "shown with its host and token source, must be on api.incident.io (or a host "
            "--allow-host names), and may not take the name drop or a destination of the base "
            "(map such a receiver with --receiver); a receiver with no integration drops; any "
            "other receiver must be mapped with --receiver. What has no equivalent (grouping "
            "and its timings, route labels, other integrations) "
            "is listed on stderr and at the top of the output. The output passes `rules check` "
            "before anything is written; every problem names the input's file:line."
        ),
    )
    imports.add_argument("alertmanager", metavar="ALERTMANAGER.yml")
    imports.add_argument(
        "--receiver",
        action="append",
        type=_receiver,
        default=[],
        metavar="NAME=DESTINATION",
        help="deliver what Alertmanager sends to receiver NAME to DESTINATION (a destination "
        "of --config, or drop) (repeatable)",
    )
    imports.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="HOST",
        help="accept incident.io receivers whose URL's host is HOST (a proxy, the test double); "
        "without it, only api.incident.io (repeatable)",
    )
    imports.add_argument(
        "--output",
        metavar="FILE",
        help="write the configuration to FILE instead of stdout (only once it loads)",
    )
    imports.set_defaults(func=cmd_rules_import)


def cmd_rules_check(args: argparse.Namespace) -> int:
    from streamer.config import ConfigError, load_config

    try:
        config = load_config(args.config, check_secrets=not args.no_secrets)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1

    def count(n: int, noun: str) -> str:
        return f"{n} {noun}{'' if n == 1 else 's'}"

    warn_of(config)
    routes = sum(1 for _ in config.rules.walk())
    print(
        f"{config.path}: OK ({count(len(config.file.destinations), 'destination')}, "
        f"{count(routes, 'route')}, {count(len(config.file.topics), 'topic')})"
    )
    return 0


def cmd_rules_diff(args: argparse.Namespace) -> int:
    import json

    from streamer.config import ConfigError, load_config
    from streamer.rules_report import changes, destination_identities, summary

    if not args.event and not args.events:
        print(
            "error: give the events to compare: --event FILE ... or --events FILE.jsonl",
            file=sys.stderr,
        )
        return 1
    try:
        old = load_config(args.old, check_secrets=False)
        new = load_config(args.new, check_secrets=False)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    events = read_events(args.event or [], args.events)
    # destinations compared by what they are, not by name (a renamed URL or token is a change)
    identities = (
        destination_identities(old.file.destinations, old.path.parent),
        destination_identities(new.file.destinations, new.path.parent),
    )
    found = [
        change
        for name, data in events
        if (change := changes(name, outcome_of(old, data), outcome_of(new, data), identities))
        is not None
    ]
    print(json.dumps({"events": len(events), "changed": found}, indent=2))
    print(summary(len(events), found), file=sys.stderr)
    return 3 if found else 0


def cmd_rules_import(args: argparse.Namespace) -> int:
    import os
    import tempfile
    from pathlib import Path

    from streamer.alertmanager import (
        ImportProblems,
        import_alertmanager,
        read_base_file,
        read_yaml_file,
    )
    from streamer.alertmanager_receivers import shown
    from streamer.config import ConfigError, load_config

    receivers = dict(args.receiver)
    try:  # bounded: size, depth, alias expansion (streamer.config.yaml_limits)
        alertmanager = read_yaml_file(Path(args.alertmanager))
        base = read_base_file(Path(args.config))
    except ImportProblems as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    output = Path(args.output) if args.output else None
    where = output.parent if output else Path(args.config).parent
    try:
        imported = import_alertmanager(
            alertmanager,
            base,
            receivers=receivers,
            base_dir=Path(args.config).parent,
            output_dir=where,
            alertmanager_dir=Path(args.alertmanager).parent,
            source=args.alertmanager,
            base_source=args.config,
            allowed_hosts=args.allow_host,
        )
    except ImportProblems as e:
        print(f"{shown(args.alertmanager)}: cannot import:", file=sys.stderr)
        for problem in e.problems:
            print(f"  {shown(problem, 2000)}", file=sys.stderr)
        return 1
    text = imported.to_yaml(args.alertmanager)
    # What is written must load as `streamer run` would load it (rules check), from where it
    # will be (relative paths), and nothing is written to --output unless it does.
    try:
        fd, name = tempfile.mkstemp(prefix=".streamer-import-", suffix=".yaml", dir=where)
    except OSError as e:
        print(f"error: cannot write in {where}: {e.strerror}", file=sys.stderr)
        return 1
    check = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        load_config(check, check_secrets=False)
        if output is not None:
            os.replace(check, output)
    except ConfigError as e:
        # the problems name lines of the output as it would have been written
        named = str(e).replace(str(check), str(output) if output else "<the output>")
        print(
            f"the imported configuration does not load (nothing written):\n{named}", file=sys.stderr
        )
        return 1
    except OSError as e:
        print(f"error: cannot write {output or check}: {e.strerror}", file=sys.stderr)
        return 1
    finally:
        check.unlink(missing_ok=True)
    if output is None:
        print(text, end="")
    for gap in imported.gaps:
        print(f"not imported: {shown(gap, 1000)}", file=sys.stderr)
    for note in imported.notes:
        print(f"note: {shown(note, 1000)}", file=sys.stderr)
    for warning in imported.warnings:
        print(f"warning: {shown(warning, 1000)}", file=sys.stderr)
    return 0


def _receiver(text: str) -> tuple[str, str]:
    name, sep, destination = text.partition("=")
    if not sep or not name or not destination:
        raise argparse.ArgumentTypeError(
            f"--receiver {text!r}: expected NAME=DESTINATION (a destination of --config, or drop)"
        )
    return name, destination
