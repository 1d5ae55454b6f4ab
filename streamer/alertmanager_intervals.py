"""`streamer rules import`: an Alertmanager file's time intervals, as streamer's.

Invariant: what Alertmanager loads imports, to the same instants (each spec is read here by
`streamer.time_intervals.parse_spec`, as `rules check` reads it later), and what Alertmanager
refuses is a problem naming `file:line`: a spec it cannot read, a name given twice (across
`time_intervals:` and the older `mute_time_intervals:`, which streamer reads as one list),
a route naming an interval that is not defined, intervals on the root route. The specs are
copied as written (texts), so the output reads as the input does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from streamer.alertmanager_receivers import shown
from streamer.time_intervals import parse_spec

__all__ = ["ROUTE_KEYS", "IntervalReader"]

ROUTE_KEYS = ("mute_time_intervals", "active_time_intervals")
_TOP_LEVEL = ("mute_time_intervals", "time_intervals")  # the older key first, as Alertmanager


class IntervalReader:
    """The file's named intervals (`intervals`, for the output), then each route's names."""

    def __init__(self, at: Callable[..., str], problems: list[str]) -> None:
        self.at = at
        self.problems = problems
        self.intervals: list[dict[str, Any]] = []
        self.names: set[str] = set()

    def read(self, alertmanager: Mapping[str, Any]) -> None:
        for key in _TOP_LEVEL:
            entries = alertmanager.get(key)
            if entries is None:
                continue
            if not isinstance(entries, list):
                self.problems.append(f"{self.at(alertmanager, key)}: {key}: must be a list")
                continue
            for i, entry in enumerate(entries):
                self._named(key, entries, i, entry)

    def _named(self, key: str, entries: list[Any], i: int, entry: Any) -> None:
        where = f"{self.at(entries, i)}: {key}[{i}]"
        if not isinstance(entry, Mapping):
            self.problems.append(f"{where}: a time interval is a mapping (name:, time_intervals:)")
            return
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            self.problems.append(f"{where}: missing name in time interval")
            return
        unknown = sorted(str(k) for k in entry if k not in ("name", "time_intervals"))
        if unknown:
            self.problems.append(f"{where}: unknown field(s) {shown(', '.join(unknown))}")
        if name in self.names:
            self.problems.append(
                f"{self.at(entry, 'name')}: time interval {shown(name)} is not unique "
                "(Alertmanager refuses it)"
            )
            return
        self.names.add(name)
        specs = entry.get("time_intervals")
        specs = [] if specs is None else specs
        if not isinstance(specs, list):
            self.problems.append(f"{self.at(entry, 'time_intervals')}: time_intervals: a list")
            return
        for j, spec in enumerate(specs):
            try:
                parse_spec(spec)
            except ValueError as e:
                self.problems.append(f"{self.at(specs, j)}: {shown(name)}: {shown(str(e), 500)}")
        self.intervals.append({"name": name, "time_intervals": _plain(specs)})

    def route(self, spec: Mapping[str, Any], where: str, out: dict[str, Any]) -> None:
        """Copies a route's interval names to `out`, each checked against the file's."""
        for key in ROUTE_KEYS:
            names = spec.get(key)
            if names is None:
                continue
            if not isinstance(names, list):
                self.problems.append(f"{self.at(spec, key)}: {where}: {key}: must be a list")
                continue
            kept = []
            for i, name in enumerate(names):
                if not isinstance(name, str) or name not in self.names:
                    self.problems.append(
                        f"{self.at(names, i)}: {where}: undefined time interval "
                        f"{shown(name)} used in route (Alertmanager refuses it)"
                    )
                    continue
                kept.append(name)
            if kept:
                out[key] = kept

    def root(self, route: Mapping[str, Any]) -> None:
        for key in ROUTE_KEYS:
            if route.get(key):
                self.problems.append(
                    f"{self.at(route, key)}: route: the root route must not have any {key} "
                    "(Alertmanager refuses it)"
                )


def _plain(value: Any) -> Any:
    """Plain lists and dicts (yaml.safe_dump writes no subclasses), texts kept as read."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
