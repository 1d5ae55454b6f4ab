"""`streamer rules import`: an Alertmanager configuration's routing tree as streamer rules.

Invariant: the imported rules route every label set to the destinations Alertmanager would
notify for it, in the same order (routes, nesting, `continue`, receiver inheritance, the
root's receiver as the default), and nothing Alertmanager does is left out silently: what
has no equivalent here (grouping and its timings, route labels, other receiver kinds,
webhook settings) is listed in `Imported.gaps`. The input is
read as Alertmanager reads it: every scalar as its text, as Go's yaml.v2 reads it into string
fields (`streamer.config.yaml_text`), matchers in the base's `matcher_mode` (Alertmanager's
fallback by default, with its warnings, each naming the input's `file:line`). Whatever the
input holds, the import ends in an `Imported` or in `ImportProblems`, each problem naming
`file:line` and what to do, never in another exception; an input that YAML aliases expand
too far (an alias bomb) is refused before any tree is walked (`streamer.config.yaml_limits`),
so an import costs time linear in its files' size. Nothing taken from the input reaches the
output's comment header unescaped.

Mechanism: the route tree is copied almost verbatim (`streamer.alertmanager_routes`), since
streamer reads Alertmanager's `matchers:`, `match:` and `match_re:` itself; receivers become
destinations by the rules of `streamer.alertmanager_receivers` (which never replaces a
destination of the base and never sends to a host the operator did not allow). The result is
layered on a base streamer configuration (Kafka, topics, destinations), with relative paths
rebased to where the output is written.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from streamer.alertmanager_receivers import DROP, ReceiverReader, shown
from streamer.alertmanager_routes import RouteTree
from streamer.config.yaml_limits import YamlLimitError, check_parsed, check_yaml, read_yaml_text
from streamer.config.yaml_text import (
    YamlTextError,
    keep_label_text,
    load_go_yaml,
)
from streamer.errors import StreamerError
from streamer.matcher_modes import DEFAULT_MODE, MODES

__all__ = ["ImportProblems", "Imported", "import_alertmanager", "read_base_file", "read_yaml_file"]


class ImportProblems(StreamerError, ValueError):
    """What stops the import, one problem per line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass
class Imported:
    config: dict[str, Any]  # the streamer configuration, ready for yaml.safe_dump
    gaps: list[str] = field(default_factory=list)  # what Alertmanager does and this won't
    notes: list[str] = field(default_factory=list)  # how receivers were turned into destinations
    warnings: list[str] = field(default_factory=list)  # matchers Alertmanager's parsers disagree on

    def to_yaml(self, source: str) -> str:
        lines = [f"# Imported from {shown(source)} by `streamer rules import`."]
        if self.gaps:
            lines.append("# Not imported (no equivalent in streamer):")
            lines += [f"#   - {shown(gap, 1000)}" for gap in self.gaps]
        lines += [f"# {shown(note, 1000)}" for note in self.notes]
        lines += [f"# warning: {shown(warning, 1000)}" for warning in self.warnings]
        body = yaml.safe_dump(self.config, sort_keys=False, allow_unicode=True, width=100)
        return "\n".join(lines) + "\n" + body


def read_yaml_file(path: Path) -> Any:
    """An Alertmanager file, read as Alertmanager reads it (scalars as text, a key given
    twice refused) and bounded as the configuration loader bounds its files; with the line
    of every key and item. ImportProblems naming the file and line otherwise."""
    return _read(path, load_go_yaml)


def read_base_file(path: Path) -> Any:
    """The base streamer configuration, read as `load_config` reads it."""

    def load(text: str) -> Any:
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
            keep_label_text(root)
            return loader.construct_document(root) if root is not None else None
        finally:
            loader.dispose()

    return _read(path, load)


def _read(path: Path, load: Callable[[str], Any]) -> Any:
    try:
        text = read_yaml_text(path)
        check_yaml(text)
        return load(text)
    except OSError as e:
        raise ImportProblems([f"{path}: cannot read the file: {e.strerror}"]) from None
    except (YamlLimitError, YamlTextError) as e:
        raise ImportProblems([f"{path}:{e.line}: {e}"]) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        raise ImportProblems([f"{path}:{line}: not valid YAML: {shown(str(e), 500)}"]) from None
    except (ValueError, TypeError, RecursionError) as e:  # a constructor's refusal
        raise ImportProblems([f"{path}: not readable: {shown(str(e), 500)}"]) from None


def import_alertmanager(
    alertmanager: Any,
    base: Any,
    *,
    receivers: Mapping[str, str] | None = None,
    base_dir: Path = Path("."),
    output_dir: Path = Path("."),
    alertmanager_dir: Path = Path("."),
    source: str = "the Alertmanager configuration",
    base_source: str = "the base",
    allowed_hosts: Iterable[str] = (),
) -> Imported:
    """The streamer configuration for `alertmanager` (a parsed alertmanager.yml) on top of
    `base` (a parsed streamer configuration); raises ImportProblems."""
    for what, parsed in ((source, alertmanager), (base_source, base)):
        try:
            check_parsed(parsed)  # before walking it: shared (aliased) parts could be 2^N
        except YamlLimitError as e:
            raise ImportProblems([f"{what}: {e}"]) from None
    if not isinstance(alertmanager, Mapping):
        raise ImportProblems(
            [f"{source}:1: an Alertmanager file is a mapping (route:, receivers:)"]
        )
    if not isinstance(base, Mapping):
        raise ImportProblems(
            [f"{base_source}: a streamer configuration is a mapping (destinations:, ...)"]
        )
    base_destinations = base.get("destinations") or {}
    if not isinstance(base_destinations, Mapping):
        raise ImportProblems([f"{base_source}: destinations: must be a mapping"])
    mode = base.get("matcher_mode", DEFAULT_MODE)
    if mode not in MODES:
        raise ImportProblems([f"{base_source}: matcher_mode: one of {', '.join(MODES)}"])
    mapped = dict(receivers or {})
    reader = ReceiverReader(
        source=source,
        base_destinations=base_destinations,
        mapped=mapped,
        allowed_hosts=frozenset(h.lower() for h in allowed_hosts),
        alertmanager_dir=alertmanager_dir,
        output_dir=output_dir,
        base_secret_files=_secret_files(base, base_dir),
    )
    tree = RouteTree(reader, mode)
    walked = tree.walk(alertmanager)
    if walked is None or tree.problems:
        raise ImportProblems(tree.problems)
    root_destination, routes = walked
    config = _rebased(dict(base), base_dir, output_dir)
    destinations = dict(config.get("destinations") or {})
    for receiver in tree.resolved.values():
        if receiver.new_destination is not None:
            destinations[receiver.destination] = receiver.new_destination
    config["destinations"] = destinations
    config["default"] = DROP if root_destination == DROP else {"destination": root_destination}
    if tree.intervals.intervals:
        config["time_intervals"] = tree.intervals.intervals
    else:
        config.pop("time_intervals", None)  # the base's would name nothing the tree uses
    config["routes"] = routes
    if tree.inhibitions.rules:
        config["inhibit_rules"] = tree.inhibitions.rules
        if tree.inhibitions.resolve_timeout is not None:
            inhibition = dict(config.get("inhibition") or {})
            inhibition["resolve_timeout_seconds"] = tree.inhibitions.resolve_timeout
            config["inhibition"] = inhibition
    else:
        config.pop("inhibit_rules", None)  # the base's would inhibit by another file's labels
    if base.get("routes"):
        tree.notes.append("The base configuration's own routes were replaced by the imported tree.")
    return Imported(config, tree.gaps, tree.notes, tree.warnings)


def _secret_files(base: Mapping[str, Any], base_dir: Path) -> dict[Path, str]:
    """The files the base reads Kafka and registry secrets from (resolved), with what each is."""
    found: dict[Path, str] = {}
    for section in ("kafka", "schema_registry"):
        settings = base.get(section)
        secrets = settings.get("secret_properties") if isinstance(settings, Mapping) else None
        for key, source in secrets.items() if isinstance(secrets, Mapping) else ():
            file = source.get("file") if isinstance(source, Mapping) else None
            if isinstance(file, str) and file:
                path = Path(file) if os.path.isabs(file) else base_dir / file
                found[Path(os.path.abspath(path))] = f"{section}.secret_properties.{key}"
    return found


def _rebased(config: dict[str, Any], base_dir: Path, output_dir: Path) -> dict[str, Any]:
    """The base's relative paths (reader and writer schemas, secret files) made relative
    to where the output is written, so it loads from there as the base did."""
    if base_dir.resolve() == output_dir.resolve():
        return config

    def rebase(path: Any) -> Any:
        if not isinstance(path, str) or os.path.isabs(path):
            return path
        return os.path.relpath(base_dir / path, output_dir)

    out: dict[str, Any] = yaml.safe_load(yaml.safe_dump(config))  # a deep copy
    if "reader_schema" in out:
        out["reader_schema"] = rebase(out["reader_schema"])
    else:
        out["reader_schema"] = rebase("schemas/monitoring_event.v2.avsc")
    topics = out.get("topics")
    for topic in topics if isinstance(topics, list) else []:
        if isinstance(topic, dict) and "writer_schema" in topic:
            topic["writer_schema"] = rebase(topic["writer_schema"])
    destinations = out.get("destinations")
    sources = [
        d.get("token")
        for d in (destinations.values() if isinstance(destinations, dict) else [])
        if isinstance(d, dict)
    ]
    for section in ("kafka", "schema_registry"):
        settings = out.get(section)
        secrets = settings.get("secret_properties") if isinstance(settings, dict) else None
        sources += list(secrets.values()) if isinstance(secrets, dict) else []
    for source in sources:
        if isinstance(source, dict) and "file" in source:
            source["file"] = rebase(source["file"])
    return out
