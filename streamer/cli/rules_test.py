"""`streamer rules test`: events through the very walk the service uses (`Rules.trace`).

Each event is evaluated as the service would at one instant (`--at`, else now): its routes,
the alert payloads it becomes, the routes a time interval muted, the silences (`--silences`
FILE or the topic) and inhibit rules (sources fired by the events before it, in order, or
firing now on the topic) that keep a delivery quiet; `--explain` says why each route did or
did not match.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from streamer.cli.common import warn_of


def read_events(files: list[str], lines_file: str | None) -> list[tuple[str, bytes | str]]:
    """(label, JSON text) per event: each --event file, each line of --events FILE.jsonl;
    an unreadable file gives its error text in place of the JSON (as str)."""
    from pathlib import Path

    events: list[tuple[str, bytes | str]] = []
    for name in files:
        try:
            events.append((name, Path(name).read_bytes()))
        except OSError as e:
            events.append((name, f"cannot read the event: {e.strerror}"))
    if lines_file:
        try:
            text = Path(lines_file).read_bytes()
        except OSError as e:
            events.append((lines_file, f"cannot read the events: {e.strerror}"))
        else:
            for number, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    events.append((f"{lines_file}:{number}", line))
    return events


def outcome_of(
    config: Any,
    data: bytes | str,
    *,
    explain: bool = False,
    at: Any = None,
    firing: Any = None,
    silences: Any = None,
) -> dict[str, Any]:
    from streamer.decoding import DecodeError, EventDecoder
    from streamer.rules_report import outcome

    if isinstance(data, str):
        return {"error": data}
    try:
        event = EventDecoder("json", config.reader_schema).decode(data)
    except DecodeError as e:
        return {"error": f"cannot read the event: {e}"}
    timeout = config.file.inhibition.resolve_timeout_seconds
    return outcome(
        config.rules,
        event,
        explain=explain,
        at=at,
        firing=firing,
        resolve_timeout=timeout,
        silences=silences,
    )


def cmd_rules_test(args: argparse.Namespace) -> int:
    import json
    from datetime import UTC, datetime

    from streamer.config import ConfigError, load_config

    try:
        config = load_config(args.config, check_secrets=False)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    warn_of(config)
    from streamer.inhibition import FiringSources

    at = args.at or datetime.now(UTC)  # one instant for every event of the run
    firing = FiringSources()  # inhibit rules' sources fired by the events before, in order
    silences, problem = _silences(args, config)
    if not problem and args.firing_from_topic:
        problem = _firing_now(args, config, firing)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    results = [
        {
            "event": name,
            **outcome_of(
                config, data, explain=args.explain, at=at, firing=firing, silences=silences
            ),
        }
        for name, data in read_events(args.event, None)
    ]
    print(json.dumps(results, indent=2))
    return 1 if any("error" in r for r in results) else 0


def _firing_now(args: argparse.Namespace, config: Any, board: Any) -> str | None:
    """Fills `board` with the sources the firing topic says fire now; or why it cannot."""
    from streamer.cli.silence import READ_TIMEOUT, SilenceTopic
    from streamer.firing_state import FiringState

    topic = config.file.kafka.firing_topic
    try:
        settings = SilenceTopic(args.config).settings  # the file's Kafka settings, secrets read
        state = FiringState.following(settings, topic, None)
        try:
            if not state.read_to_now(READ_TIMEOUT):
                problem = state.follower.problem()
                return f"{topic} could not be read within {READ_TIMEOUT:.0f} s: {problem}"
            for source in state.sources():
                board.fire(source)
        finally:
            state.close()
    except Exception as e:  # the brokers: unreachable, refused; a secret unreadable
        from streamer import logs

        return logs.MASK.mask(f"{topic}: {e}")
    return None


def _silences(args: argparse.Namespace, config: Any) -> tuple[Any, str | None]:
    """The silences `rules test` applies (None: none asked for), or why they cannot be read."""
    import json
    from pathlib import Path

    from streamer.silence_index import Silences
    from streamer.silences import SilenceError, from_amtool

    if args.silences:
        try:
            return Silences(from_amtool(json.loads(Path(args.silences).read_text()))), None
        except OSError as e:
            return None, f"{args.silences}: cannot read it: {e.strerror}"
        except json.JSONDecodeError as e:
            return None, f"{args.silences}:{e.lineno}:{e.colno}: not JSON: {e.msg}"
        except SilenceError as e:
            return None, f"{args.silences}: silence {e}"
    if args.silences_from_topic:
        from streamer.cli.silence import SilenceTopic

        try:
            return Silences(SilenceTopic(args.config).read()), None
        except Exception as e:  # the brokers: unreachable, refused; a secret unreadable
            from streamer import logs

            return None, logs.MASK.mask(f"{config.file.kafka.silence_topic}: {e}")
    return None, None
