"""`streamer rules import`: an Alertmanager configuration's routing tree as streamer rules.

Invariant: the imported rules route every label set to the destinations Alertmanager would
notify for it, in the same order (routes, nesting, `continue`, receiver inheritance, the
root's receiver as the default), and nothing Alertmanager does is left out silently: what
has no equivalent here (grouping and its timings, inhibit rules, time intervals, route
labels, other receiver kinds, webhook settings) is listed in `Imported.gaps`, and a
receiver that is neither mapped (`--receiver NAME=DESTINATION`) nor an incident.io webhook
nor empty is an error, so no alert is dropped on a guess. An input that YAML aliases
expand too far (an alias bomb: 2^N routes from N lines) is refused before any tree is
walked (`streamer.config.yaml_limits`), so an import costs time linear in its files' size.

Mechanism: the route tree is copied almost verbatim, since streamer reads Alertmanager's
`matchers:`, `match:` and `match_re:` itself (`streamer.label_matchers`); receivers become
destinations: a webhook to incident.io's alert-events URL becomes a destination of that
alert source (its token from the webhook's credentials file, or an environment variable:
inline credentials are never copied), a receiver with no integration drops (as it does in
Alertmanager). The result is layered on a base streamer configuration (Kafka, topics,
destinations), with relative paths rebased to where the output is written.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from streamer.config.yaml_limits import YamlLimitError, check_parsed, check_yaml, read_yaml_text

__all__ = ["ImportProblems", "Imported", "import_alertmanager", "read_yaml_file"]

_INCIDENT_IO_PATH = re.compile(r"^/v2/alert_events/http/([A-Za-z0-9_-]+)/?$")
_ROUTE_KEYS = {"receiver", "matchers", "match", "match_re", "continue", "routes"}
_GROUPING = ("group_by", "group_wait", "group_interval", "repeat_interval")
_TIMING = ("mute_time_intervals", "active_time_intervals")


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

    def to_yaml(self, source: str) -> str:
        lines = [f"# Imported from {source} by `streamer rules import`."]
        if self.gaps:
            lines.append("# Not imported (no equivalent in streamer):")
            lines += [f"#   - {gap}" for gap in self.gaps]
        lines += [f"# {note}" for note in self.notes]
        body = yaml.safe_dump(self.config, sort_keys=False, allow_unicode=True, width=100)
        return "\n".join(lines) + "\n" + body


@dataclass
class _Receiver:
    destination: str  # a destination name, or "drop"
    new_destination: dict[str, Any] | None = None


def read_yaml_file(path: Path) -> Any:
    """A parsed YAML file (the Alertmanager configuration, or the base), bounded as the
    configuration loader bounds its file; ImportProblems naming the file and line otherwise."""
    try:
        text = read_yaml_text(path)
        check_yaml(text)
        return yaml.safe_load(text)
    except OSError as e:
        raise ImportProblems([f"{path}: cannot read the file: {e.strerror}"]) from None
    except YamlLimitError as e:
        raise ImportProblems([f"{path}:{e.line}: {e}"]) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        raise ImportProblems([f"{path}:{line}: not valid YAML: {e}"]) from None


def import_alertmanager(
    alertmanager: Mapping[str, Any],
    base: Mapping[str, Any],
    *,
    receivers: Mapping[str, str] | None = None,
    base_dir: Path = Path("."),
    output_dir: Path = Path("."),
    alertmanager_dir: Path = Path("."),
) -> Imported:
    """The streamer configuration for `alertmanager` (a parsed alertmanager.yml) on top of
    `base` (a parsed streamer configuration); raises ImportProblems."""
    for what, parsed in (("the Alertmanager configuration", alertmanager), ("the base", base)):
        try:
            check_parsed(parsed)  # before walking it: shared (aliased) parts could be 2^N
        except YamlLimitError as e:
            raise ImportProblems([f"{what}: {e}"]) from None
    mapped = dict(receivers or {})
    problems: list[str] = []
    gaps: list[str] = []
    notes: list[str] = []
    route = alertmanager.get("route")
    if not isinstance(route, Mapping):
        raise ImportProblems(["the Alertmanager configuration has no route: (its routing tree)"])
    base_destinations = dict(base.get("destinations") or {})
    for name, destination in mapped.items():
        if destination != "drop" and destination not in base_destinations:
            known = ", ".join(sorted(base_destinations)) or "none"
            problems.append(
                f"--receiver {name}={destination}: the base configuration has no destination "
                f"{destination!r} (destinations: {known}; or drop)"
            )
    defined = {r.get("name"): r for r in alertmanager.get("receivers") or [] if isinstance(r, dict)}
    for name in mapped:
        if name not in defined:
            problems.append(
                f"--receiver {name}=...: the Alertmanager configuration has no receiver {name!r}"
            )
    resolved: dict[str, _Receiver] = {}
    for receiver_name, spec in defined.items():
        name = str(receiver_name)
        resolved[name] = _receiver(name, spec, mapped, base_destinations, problems, gaps, notes)
        new = resolved[name].new_destination
        if new is not None and "file" in new["token"]:
            # Alertmanager reads a relative credentials_file from its configuration's folder
            file = Path(new["token"]["file"])
            if not file.is_absolute():
                new["token"]["file"] = os.path.relpath(alertmanager_dir / file, output_dir)

    def destination_of(receiver: Any, where: str) -> str:
        if receiver not in resolved:
            problems.append(f"{where}: receiver {receiver!r} is not defined under receivers:")
            return "drop"
        return resolved[receiver].destination

    root_receiver = route.get("receiver")
    if root_receiver is None:
        problems.append("route: the root route needs a receiver (Alertmanager requires one)")
    for key in ("matchers", "match", "match_re"):
        if route.get(key):
            problems.append(f"route: the root route must not have {key}: (Alertmanager refuses it)")
    _grouping_gaps(route, "route", gaps)
    root_destination = destination_of(root_receiver, "route") if root_receiver else "drop"
    routes = [
        _route(child, f"am-{i + 1}", f"route.routes[{i}]", root_destination, destination_of, gaps)
        for i, child in enumerate(route.get("routes") or [])
    ]
    for key in sorted(set(route) - _ROUTE_KEYS - set(_GROUPING) - set(_TIMING)):
        gaps.append(f"route: {key}: is not imported")
    _top_level_gaps(alertmanager, gaps)
    if problems:
        raise ImportProblems(problems)

    config = _rebased(dict(base), base_dir, output_dir)
    destinations = dict(config.get("destinations") or {})
    for receiver in resolved.values():
        if receiver.new_destination is not None:
            destinations[receiver.destination] = receiver.new_destination
    config["destinations"] = destinations
    config["default"] = "drop" if root_destination == "drop" else {"destination": root_destination}
    config["routes"] = routes
    if base.get("routes"):
        notes.append("The base configuration's own routes were replaced by the imported tree.")
    return Imported(config, gaps, notes)


def _receiver(
    name: str,
    spec: Mapping[str, Any],
    mapped: Mapping[str, str],
    base_destinations: Mapping[str, Any],
    problems: list[str],
    gaps: list[str],
    notes: list[str],
) -> _Receiver:
    kinds = sorted(k for k, v in spec.items() if k.endswith("_configs") and v)
    if name in mapped:
        if kinds:
            notes.append(
                f"Receiver {name} ({', '.join(kinds)}) delivers to {mapped[name]} (--receiver)."
            )
        return _Receiver(mapped[name])
    webhooks = [w for w in spec.get("webhook_configs") or [] if isinstance(w, dict)]
    incident_io = [w for w in webhooks if _alert_source_of(w) is not None]
    if incident_io:
        hook = incident_io[0]
        for other in kinds:
            if other != "webhook_configs":
                gaps.append(f"receiver {name}: {other} (only its incident.io webhook is imported)")
        if len(webhooks) > 1:
            gaps.append(f"receiver {name}: webhooks other than the first incident.io one")
        return _incident_io_destination(name, hook, base_destinations, gaps, notes)
    if not kinds:
        notes.append(f"Receiver {name} has no integration: routes to it drop, as in Alertmanager.")
        return _Receiver("drop")
    problems.append(
        f"receiver {name} ({', '.join(kinds)}) has no equivalent in streamer: map it with "
        f"--receiver {name}=DESTINATION (a destination of the base configuration, or drop)"
    )
    return _Receiver("drop")


def _alert_source_of(webhook: Mapping[str, Any]) -> tuple[str, str] | None:
    """(base URL, alert source id) when the webhook posts to incident.io's alert events."""
    url = webhook.get("url")
    if not isinstance(url, str):
        return None
    parts = urlsplit(url)
    found = _INCIDENT_IO_PATH.match(parts.path)
    if not found or not parts.hostname:
        return None
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}", found.group(1)


def _incident_io_destination(
    name: str,
    hook: Mapping[str, Any],
    base_destinations: Mapping[str, Any],
    gaps: list[str],
    notes: list[str],
) -> _Receiver:
    found = _alert_source_of(hook)
    assert found is not None
    url, source_id = found
    for existing, spec in base_destinations.items():
        if isinstance(spec, Mapping) and spec.get("alert_source_config_id") == source_id:
            notes.append(f"Receiver {name}: alert source {source_id} is destination {existing}.")
            return _Receiver(str(existing))
    http = hook.get("http_config") or {}
    authorization = http.get("authorization") or {}
    credentials_file = authorization.get("credentials_file") or http.get("bearer_token_file")
    variable = "INCIDENT_IO_TOKEN_" + re.sub(r"[^A-Z0-9]+", "_", name.upper()).strip("_")
    token: dict[str, str] = (
        {"file": str(credentials_file)} if credentials_file else {"env": variable}
    )
    if authorization.get("credentials") or http.get("bearer_token") or "token=" in str(hook["url"]):
        notes.append(
            f"Receiver {name}: its inline token was not copied; set {variable} "
            "(or give token: {file: ...})."
        )
    for key in ("send_resolved", "max_alerts", "timeout"):
        if key in hook and not (key == "send_resolved" and hook[key] is True):
            gaps.append(f"receiver {name}: webhook {key}: {hook[key]!r}")
    destination: dict[str, Any] = {"alert_source_config_id": source_id, "token": token}
    if url != "https://api.incident.io":
        destination["url"] = url
    notes.append(f"Receiver {name} is a new destination {name} (alert source {source_id}).")
    return _Receiver(name, destination)


def _route(
    spec: Mapping[str, Any],
    name: str,
    where: str,
    inherited: str | None,
    destination_of: Any,
    gaps: list[str],
) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name}
    for key in ("matchers", "match", "match_re"):
        if spec.get(key):
            out[key] = list(spec[key]) if key == "matchers" else dict(spec[key])
    if "receiver" in spec:
        out["destination"] = destination_of(spec["receiver"], where)
    elif inherited is not None:
        out["destination"] = inherited  # a top-level route names the root's receiver
    if spec.get("continue"):
        out["continue"] = True
    _grouping_gaps(spec, f"{where} ({name})", gaps)
    for key in sorted(set(spec) - _ROUTE_KEYS - set(_GROUPING) - set(_TIMING)):
        gaps.append(f"{where} ({name}): {key}: is not imported")
    children = spec.get("routes") or []
    if children:
        out["routes"] = [
            _route(child, f"{name}.{i + 1}", f"{where}.routes[{i}]", None, destination_of, gaps)
            for i, child in enumerate(children)
        ]
    return out


def _grouping_gaps(spec: Mapping[str, Any], where: str, gaps: list[str]) -> None:
    grouping = [f"{k}: {spec[k]}" for k in _GROUPING if k in spec]
    if grouping:
        gaps.append(f"{where}: {', '.join(grouping)} (each event is delivered on its own)")
    for key in _TIMING:
        if spec.get(key):
            gaps.append(f"{where}: {key}: {', '.join(map(str, spec[key]))}")


def _top_level_gaps(alertmanager: Mapping[str, Any], gaps: list[str]) -> None:
    inhibit = alertmanager.get("inhibit_rules") or []
    if inhibit:
        gaps.append(f"inhibit_rules: {len(inhibit)} rule(s) (no alert suppresses another)")
    for key in ("time_intervals", "mute_time_intervals"):
        intervals = alertmanager.get(key) or []
        if intervals:
            names = ", ".join(str(i.get("name")) for i in intervals if isinstance(i, dict))
            gaps.append(f"{key}: {names}")
    if alertmanager.get("templates"):
        gaps.append("templates: notification templates (streamer's are routes' templates:)")
    for key in sorted(
        set(alertmanager)
        - {
            "route",
            "receivers",
            "inhibit_rules",
            "templates",
            "time_intervals",
            "mute_time_intervals",
        }
    ):
        value = alertmanager[key]
        detail = f" ({', '.join(map(str, value))})" if isinstance(value, dict) else ""
        gaps.append(f"{key}:{detail} is not imported")


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
    for topic in out.get("topics") or []:
        if isinstance(topic, dict) and "writer_schema" in topic:
            topic["writer_schema"] = rebase(topic["writer_schema"])
    sources = [
        d.get("token") for d in (out.get("destinations") or {}).values() if isinstance(d, dict)
    ]
    for section in ("kafka", "schema_registry"):
        sources += list(((out.get(section) or {}).get("secret_properties") or {}).values())
    for source in sources:
        if isinstance(source, dict) and "file" in source:
            source["file"] = rebase(source["file"])
    return out
