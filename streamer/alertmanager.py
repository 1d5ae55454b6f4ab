"""`streamer rules import`: an Alertmanager configuration's routing tree as streamer rules.

Invariant: the imported rules route every label set to the destinations Alertmanager would
notify for it, in the same order (routes, nesting, `continue`, receiver inheritance, the
root's receiver as the default), and nothing Alertmanager does is left out silently: what
has no equivalent here (grouping and its timings, inhibit rules, time intervals, route
labels, other receiver kinds, webhook settings) is listed in `Imported.gaps`. The input is
read as Alertmanager reads it: every scalar as its text, as Go's yaml.v2 reads it into string
fields (`streamer.config.yaml_text`), matchers in the base's `matcher_mode` (Alertmanager's
fallback by default, with its warnings, each naming the input's `file:line`). Whatever the
input holds, the import ends in an `Imported` or in `ImportProblems`, each problem naming
`file:line` and what to do, never in another exception; an input that YAML aliases expand
too far (an alias bomb) is refused before any tree is walked (`streamer.config.yaml_limits`),
so an import costs time linear in its files' size. Nothing taken from the input reaches the
output's comment header unescaped.

Mechanism: the route tree is copied almost verbatim, since streamer reads Alertmanager's
`matchers:`, `match:` and `match_re:` itself (`streamer.label_matchers`); receivers become
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

from streamer.alertmanager_receivers import DROP, ReceiverReader, Resolved, shown
from streamer.config.yaml_limits import YamlLimitError, check_parsed, check_yaml, read_yaml_text
from streamer.config.yaml_text import (
    YamlTextError,
    go_bool,
    keep_label_text,
    load_go_yaml,
)
from streamer.matcher_modes import DEFAULT_MODE, MODES, MatcherMode, read_matchers

__all__ = ["ImportProblems", "Imported", "import_alertmanager", "read_base_file", "read_yaml_file"]

_ROUTE_KEYS = {"receiver", "matchers", "match", "match_re", "continue", "routes"}
_GROUPING = ("group_by", "group_wait", "group_interval", "repeat_interval")
_TIMING = ("mute_time_intervals", "active_time_intervals")
_TOP_LEVEL = {"route", "receivers", "inhibit_rules", "templates", "time_intervals"}
_TOP_LEVEL |= {"mute_time_intervals"}


class ImportProblems(ValueError):
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
    allowed_hosts: Iterable[str] = (),
) -> Imported:
    """The streamer configuration for `alertmanager` (a parsed alertmanager.yml) on top of
    `base` (a parsed streamer configuration); raises ImportProblems."""
    for what, parsed in ((source, alertmanager), ("the base", base)):
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
            ["the base: a streamer configuration is a mapping (destinations:, ...)"]
        )
    base_destinations = base.get("destinations") or {}
    if not isinstance(base_destinations, Mapping):
        raise ImportProblems(["the base: destinations: must be a mapping"])
    mode = base.get("matcher_mode", DEFAULT_MODE)
    if mode not in MODES:
        raise ImportProblems([f"the base: matcher_mode: one of {', '.join(MODES)}"])
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
    tree = _Tree(reader, mode)
    return tree.imported(alertmanager, base, base_dir, output_dir)


class _Tree:
    """One walk over the Alertmanager file: its receivers, then its routing tree."""

    def __init__(self, reader: ReceiverReader, mode: MatcherMode) -> None:
        self.reader = reader
        self.mode = mode
        self.problems = reader.problems
        self.gaps = reader.gaps
        self.notes = reader.notes
        self.warnings: list[str] = []
        self.resolved: dict[str, Resolved] = {}

    def at(self, container: Any, key: Any = None) -> str:
        return self.reader.at(container, key)

    def imported(
        self,
        alertmanager: Mapping[str, Any],
        base: Mapping[str, Any],
        base_dir: Path,
        output_dir: Path,
    ) -> Imported:
        reader = self.reader
        for name, destination in reader.mapped.items():
            if destination != DROP and destination not in reader.base_destinations:
                known = ", ".join(sorted(map(str, reader.base_destinations))) or "none"
                self.problems.append(
                    f"--receiver {shown(name)}={shown(destination)}: the base configuration has "
                    f"no destination '{shown(destination)}' (destinations: {known}; or drop)"
                )
        self._receivers(alertmanager)
        for name in reader.mapped:
            if name not in self.resolved:
                self.problems.append(
                    f"--receiver {shown(name)}=...: {reader.source} has no receiver {shown(name)}"
                )
        route = alertmanager.get("route")
        if not isinstance(route, Mapping):
            raise ImportProblems(
                [
                    *self.problems,
                    f"{self.at(alertmanager, 'route')}: route: (the routing tree) "
                    "must be a mapping with a receiver",
                ]
            )
        root_receiver = route.get("receiver")
        if root_receiver is None:
            self.problems.append(
                f"{self.at(route)}: route: the root route needs a receiver "
                "(Alertmanager requires one)"
            )
        for key in ("matchers", "match", "match_re"):
            if route.get(key):
                self.problems.append(
                    f"{self.at(route, key)}: route: the root route must not have {key}: "
                    "(Alertmanager refuses it)"
                )
        self._grouping_gaps(route, "route")
        root_destination = self._destination_of(route, "receiver") if root_receiver else DROP
        children = self._children(route, "route")
        routes = [
            self._route(child, f"am-{i + 1}", f"route.routes[{i}]", root_destination, children, i)
            for i, child in enumerate(children)
        ]
        for key in sorted(set(map(str, route)) - _ROUTE_KEYS - set(_GROUPING) - set(_TIMING)):
            self.gaps.append(f"route: {key}: is not imported")
        self._top_level_gaps(alertmanager)
        if self.problems:
            raise ImportProblems(self.problems)

        config = _rebased(dict(base), base_dir, output_dir)
        destinations = dict(config.get("destinations") or {})
        for receiver in self.resolved.values():
            if receiver.new_destination is not None:
                destinations[receiver.destination] = receiver.new_destination
        config["destinations"] = destinations
        config["default"] = DROP if root_destination == DROP else {"destination": root_destination}
        config["routes"] = routes
        if base.get("routes"):
            self.notes.append(
                "The base configuration's own routes were replaced by the imported tree."
            )
        return Imported(config, self.gaps, self.notes, self.warnings)

    def _receivers(self, alertmanager: Mapping[str, Any]) -> None:
        specs = alertmanager.get("receivers")
        if specs is None:
            return
        if not isinstance(specs, list):
            self.problems.append(f"{self.at(alertmanager, 'receivers')}: receivers: must be a list")
            return
        for i, spec in enumerate(specs):
            if not isinstance(spec, Mapping):
                self.problems.append(f"{self.at(specs, i)}: receivers: each receiver is a mapping")
                continue
            name = spec.get("name")
            if not isinstance(name, str) or not name:
                self.problems.append(f"{self.at(spec)}: a receiver needs a name")
                continue
            if name in self.resolved:
                self.problems.append(
                    f"{self.at(spec, 'name')}: receiver {shown(name)} is defined twice "
                    "(Alertmanager refuses it)"
                )
                continue
            self.resolved[name] = self.reader.resolve(name, spec)

    def _destination_of(self, spec: Mapping[str, Any], key: str) -> str:
        receiver = spec.get(key)
        if not isinstance(receiver, str) or receiver not in self.resolved:
            self.problems.append(
                f"{self.at(spec, key)}: receiver '{shown(receiver)}' is not defined "
                "under receivers:"
            )
            return DROP
        return self.resolved[receiver].destination

    def _children(self, spec: Mapping[str, Any], where: str) -> list[Any]:
        children = spec.get("routes")
        if children is None:
            return []
        if not isinstance(children, list):
            self.problems.append(f"{self.at(spec, 'routes')}: {where}: routes: must be a list")
            return []
        return children

    def _route(
        self,
        spec: Any,
        name: str,
        where: str,
        inherited: str | None,
        siblings: list[Any],
        index: int,
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"name": name}
        if not isinstance(spec, Mapping):
            self.problems.append(f"{self.at(siblings, index)}: {where}: a route is a mapping")
            return out
        matchers = self._matchers(spec, where)
        if matchers:
            out["matchers"] = matchers
        for key in ("match", "match_re"):
            labels = self._label_map(spec, key, where)
            if labels:
                out[key] = labels
        if "receiver" in spec:
            out["destination"] = self._destination_of(spec, "receiver")
        elif inherited is not None:
            out["destination"] = inherited  # a top-level route names the root's receiver
        if "continue" in spec:
            continue_ = go_bool(spec["continue"])
            if continue_ is None:
                self.problems.append(
                    f"{self.at(spec, 'continue')}: {where}: continue: must be true or false"
                )
            elif continue_:
                out["continue"] = True
        self._grouping_gaps(spec, f"{where} ({name})")
        for key in sorted(set(map(str, spec)) - _ROUTE_KEYS - set(_GROUPING) - set(_TIMING)):
            self.gaps.append(f"{where} ({name}): {shown(key)}: is not imported")
        children = self._children(spec, where)
        if children:
            out["routes"] = [
                self._route(child, f"{name}.{i + 1}", f"{where}.routes[{i}]", None, children, i)
                for i, child in enumerate(children)
            ]
        return out

    def _matchers(self, spec: Mapping[str, Any], where: str) -> list[str]:
        texts = spec.get("matchers")
        if texts is None:
            return []
        if not isinstance(texts, list):
            self.problems.append(f"{self.at(spec, 'matchers')}: {where}: matchers: must be a list")
            return []
        out: list[str] = []
        for i, text in enumerate(texts):
            text = "" if text is None else text
            if not isinstance(text, str):
                self.problems.append(
                    f'{self.at(texts, i)}: {where}: each of matchers: is a text (name="value")'
                )
                continue
            try:  # read here too, so a problem names the Alertmanager file's line
                reading = read_matchers(text, self.mode)
            except ValueError as e:
                self.problems.append(f"{self.at(texts, i)}: {where}: {shown(str(e), 1000)}")
                continue
            if reading.warning:
                self.warnings.append(f"{self.at(texts, i)}: {where}: {reading.warning}")
            out.append(text)
        return out

    def _label_map(self, spec: Mapping[str, Any], key: str, where: str) -> dict[str, str]:
        labels = spec.get(key)
        if labels is None:
            return {}
        if not isinstance(labels, Mapping):
            self.problems.append(f"{self.at(spec, key)}: {where}: {key}: must be a mapping")
            return {}
        out: dict[str, str] = {}
        for name, value in labels.items():
            # yaml.v2 reads a null into a string field as ""
            name, value = "" if name is None else name, "" if value is None else value
            if not isinstance(name, str) or not isinstance(value, str):
                self.problems.append(
                    f"{self.at(labels, name)}: {where}: {key}: label names and values are texts"
                )
                continue
            if not name:
                self.problems.append(
                    f"{self.at(labels, name)}: {where}: {key}: an empty label name"
                )
                continue
            out[name] = value
        return out

    def _grouping_gaps(self, spec: Mapping[str, Any], where: str) -> None:
        grouping = [f"{k}: {shown(spec[k])}" for k in _GROUPING if k in spec]
        if grouping:
            self.gaps.append(f"{where}: {', '.join(grouping)} (each event is delivered on its own)")
        for key in _TIMING:
            if spec.get(key):
                self.gaps.append(f"{where}: {key}: {_listed(spec[key])}")

    def _top_level_gaps(self, alertmanager: Mapping[str, Any]) -> None:
        inhibit = alertmanager.get("inhibit_rules") or []
        if inhibit:
            count = len(inhibit) if isinstance(inhibit, list) else 1
            self.gaps.append(f"inhibit_rules: {count} rule(s) (no alert suppresses another)")
        for key in ("time_intervals", "mute_time_intervals"):
            intervals = alertmanager.get(key) or []
            if intervals:
                names = (
                    [i.get("name") for i in intervals if isinstance(i, Mapping)]
                    if isinstance(intervals, list)
                    else []
                )
                self.gaps.append(f"{key}: {_listed(names)}")
        if alertmanager.get("templates"):
            self.gaps.append(
                "templates: notification templates (streamer's are routes' templates:)"
            )
        for key in sorted(set(map(str, alertmanager)) - _TOP_LEVEL):
            value = alertmanager.get(key)
            detail = f" ({_listed(list(value))})" if isinstance(value, Mapping) else ""
            self.gaps.append(f"{shown(key)}:{detail} is not imported")


def _listed(values: Any) -> str:
    items = values if isinstance(values, list) else [values]
    return ", ".join(shown(v) for v in items)


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
