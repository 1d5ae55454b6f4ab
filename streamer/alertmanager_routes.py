"""The walk over an Alertmanager file for `streamer rules import`: receivers, then routes.

Invariant: whatever the parsed file holds (any type anywhere), the walk returns and every
problem is collected as `file:line: where: what` (lines from `streamer.config.yaml_text`),
never raised: a route that is not a mapping, matchers that are not texts or that neither of
Alertmanager's parsers reads (in the base's `matcher_mode`), a `continue:` that is not a
yaml.v2 boolean, a receiver defined twice or never, a time interval Alertmanager would refuse
(`streamer.alertmanager_intervals`). Matchers Alertmanager's parsers read
differently are kept, with the warning it would log; what has no equivalent in streamer is
a gap, listed, never dropped silently. Values from the input reach messages only through
`shown` (escaped, bounded).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from streamer.alertmanager_inhibition import InhibitReader
from streamer.alertmanager_intervals import ROUTE_KEYS, IntervalReader
from streamer.alertmanager_receivers import DROP, ReceiverReader, Resolved, shown
from streamer.config.yaml_text import go_bool
from streamer.matcher_modes import MatcherMode, read_matchers

__all__ = ["RouteTree"]

_ROUTE_KEYS = {"receiver", "matchers", "match", "match_re", "continue", "routes", *ROUTE_KEYS}
_GROUPING = ("group_by", "group_wait", "group_interval", "repeat_interval")
_TOP_LEVEL = {"route", "receivers", "inhibit_rules", "templates", "time_intervals"}
_TOP_LEVEL |= {"mute_time_intervals"}


class RouteTree:
    """One walk over an Alertmanager file: its receivers, then its routing tree."""

    def __init__(self, reader: ReceiverReader, mode: MatcherMode) -> None:
        self.reader = reader
        self.mode = mode
        self.problems = reader.problems
        self.gaps = reader.gaps
        self.notes = reader.notes
        self.warnings: list[str] = []
        self.resolved: dict[str, Resolved] = {}
        self.intervals = IntervalReader(self.at, self.problems)
        self.inhibitions = InhibitReader(self.at, self.problems, self.warnings, mode)

    def at(self, container: Any, key: Any = None) -> str:
        return self.reader.at(container, key)

    def walk(self, alertmanager: Mapping[str, Any]) -> tuple[str, list[dict[str, Any]]] | None:
        """(the root's destination, the imported routes); None when there is no tree to walk.
        Problems, gaps, notes and warnings are collected, never raised."""
        reader = self.reader
        for name, destination in reader.mapped.items():
            if destination != DROP and destination not in reader.base_destinations:
                known = ", ".join(sorted(map(str, reader.base_destinations))) or "none"
                self.problems.append(
                    f"--receiver {shown(name)}={shown(destination)}: the base configuration has "
                    f"no destination '{shown(destination)}' (destinations: {known}; or drop)"
                )
        self._receivers(alertmanager)
        self.intervals.read(alertmanager)
        self.inhibitions.read(alertmanager)
        for name in reader.mapped:
            if name not in self.resolved:
                self.problems.append(
                    f"--receiver {shown(name)}=...: {reader.source} has no receiver {shown(name)}"
                )
        route = alertmanager.get("route")
        if not isinstance(route, Mapping):
            self.problems.append(
                f"{self.at(alertmanager, 'route')}: route: (the routing tree) "
                "must be a mapping with a receiver"
            )
            return None
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
        self.intervals.root(route)
        self._grouping_gaps(route, "route")
        root_destination = self._destination_of(route, "receiver") if root_receiver else DROP
        children = self._children(route, "route")
        routes = [
            self._route(child, f"am-{i + 1}", f"route.routes[{i}]", root_destination, children, i)
            for i, child in enumerate(children)
        ]
        for key in sorted(set(map(str, route)) - _ROUTE_KEYS - set(_GROUPING)):
            self.gaps.append(f"route: {key}: is not imported")
        self._top_level_gaps(alertmanager)
        return root_destination, routes

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
        self.intervals.route(spec, where, out)
        self._grouping_gaps(spec, f"{where} ({name})")
        for key in sorted(set(map(str, spec)) - _ROUTE_KEYS - set(_GROUPING)):
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

    def _top_level_gaps(self, alertmanager: Mapping[str, Any]) -> None:
        if alertmanager.get("templates"):
            self.gaps.append(
                "templates: notification templates (streamer's are routes' templates:)"
            )
        for key in sorted(set(map(str, alertmanager)) - _TOP_LEVEL):
            value = alertmanager.get(key)
            if key == "global" and isinstance(value, Mapping):  # resolve_timeout imported?
                left = [k for k in value if k != "resolve_timeout" or not self.inhibitions.rules]
                if not left:
                    continue
                value = dict.fromkeys(left)
            detail = f" ({_listed(list(value))})" if isinstance(value, Mapping) else ""
            self.gaps.append(f"{shown(key)}:{detail} is not imported")


def _listed(values: Any) -> str:
    items = values if isinstance(values, list) else [values]
    return ", ".join(shown(v) for v in items)
