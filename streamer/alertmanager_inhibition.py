"""`streamer rules import`: an Alertmanager file's `inhibit_rules`, as streamer's.

Invariant: what Alertmanager loads imports with the same meaning (streamer/inhibition.py),
and what it refuses is a problem naming `file:line`: a rule that is not a mapping, an
unknown field, matchers that are not texts or that the base's `matcher_mode` cannot read,
`*_match`/`*_match_re` maps that are not label -> text (a classic label name; a regex RE2
reads), an `equal` that is not a list of label names (classic names in `classic` mode).
Each rule is copied with its fields as written (texts), so the output reads as the input
does; matchers Alertmanager's parsers read differently are kept, with the warning it would
log.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from streamer.alertmanager_receivers import shown
from streamer.config.inhibit_compiler import (
    equal_name_problem,
    map_name_problem,
    no_source_warning,
)
from streamer.label_matchers import label_matcher
from streamer.matcher_modes import MatcherMode, read_matchers

__all__ = ["InhibitReader", "prometheus_duration"]

# Prometheus' model.ParseDuration: units in this order, each at most once; "0" alone too
_DURATION = re.compile(
    r"(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?"
)
_UNITS = (365 * 86400, 7 * 86400, 86400, 3600, 60, 1, 0.001)


def prometheus_duration(text: str) -> float | None:
    """Seconds of a Prometheus duration (`5m`, `1h30m`, `0`), None if it is not one."""
    if text == "0":
        return 0.0
    found = _DURATION.fullmatch(text)
    if not text or found is None:
        return None
    return sum(int(n) * unit for n, unit in zip(found.groups(), _UNITS, strict=True) if n)


_MAPS = ("source_match", "source_match_re", "target_match", "target_match_re")
_TEXTS = ("source_matchers", "target_matchers")
_FIELDS = {"name", "equal", *_MAPS, *_TEXTS}
_SOURCES = ("source_match", "source_match_re", "source_matchers")


class InhibitReader:
    """The file's inhibit rules, read into `rules` (streamer's `inhibit_rules:`)."""

    def __init__(
        self, at: Callable[..., str], problems: list[str], warnings: list[str], mode: MatcherMode
    ) -> None:
        self.at, self.problems, self.warnings, self.mode = at, problems, warnings, mode
        self.rules: list[dict[str, Any]] = []
        self.resolve_timeout: float | None = None  # global.resolve_timeout, when rules use it

    def read(self, alertmanager: Mapping[str, Any]) -> None:
        entries = alertmanager.get("inhibit_rules")
        if entries is None:
            return
        if not isinstance(entries, list):
            self.problems.append(
                f"{self.at(alertmanager, 'inhibit_rules')}: inhibit_rules: must be a list"
            )
            return
        for i, entry in enumerate(entries):
            rule = self._rule(entries, i, entry)
            if rule is not None:
                self.rules.append(rule)
        self._resolve_timeout(alertmanager)

    def _resolve_timeout(self, alertmanager: Mapping[str, Any]) -> None:
        """`global.resolve_timeout`: how long a source without an end fires (Alertmanager
        gives such alerts an EndsAt that far ahead); streamer's `inhibition:` setting."""
        settings = alertmanager.get("global")
        if not self.rules or not isinstance(settings, Mapping):
            return
        text = settings.get("resolve_timeout")
        if text is None:
            return
        seconds = prometheus_duration(text) if isinstance(text, str) else None
        if not seconds:
            self.problems.append(
                f"{self.at(settings, 'resolve_timeout')}: global: resolve_timeout: a positive "
                f"duration (5m, 1h), not {shown(text)}"
            )
            return
        self.resolve_timeout = seconds

    def _rule(self, entries: list[Any], i: int, entry: Any) -> dict[str, Any] | None:
        where = f"{self.at(entries, i)}: inhibit_rules[{i}]"
        if not isinstance(entry, Mapping):
            self.problems.append(
                f"{where}: an inhibit rule is a mapping (source_matchers:, target_matchers:, "
                "equal:)"
            )
            return None
        unknown = sorted(str(k) for k in entry if k not in _FIELDS)
        if unknown:
            self.problems.append(f"{where}: unknown field(s) {shown(', '.join(unknown))}")
        out: dict[str, Any] = {}
        name = entry.get("name")
        if name is not None:
            if isinstance(name, str) and name:
                out["name"] = name
            else:
                self.problems.append(f"{self.at(entry, 'name')}: {where}: name: a text")
        for key in _MAPS:
            kept = self._map(entry, key, where)
            if kept:
                out[key] = kept
        for key in _TEXTS:
            kept_texts = self._texts(entry, key, where)
            if kept_texts:
                out[key] = kept_texts
        if not any(entry.get(key) for key in _SOURCES):
            called = out.get("name", f"inhibit_rules[{i}]")
            self.warnings.append(f"{where}: {no_source_warning(called)}")
        equal = entry.get("equal")
        if equal is not None:
            if isinstance(equal, list) and all(isinstance(n, str) for n in equal):
                for j, name in enumerate(equal):
                    problem = equal_name_problem(name, self.mode)
                    if problem:
                        self.problems.append(f"{self.at(equal, j)}: {where}: {shown(problem)}")
                if equal:
                    out["equal"] = list(dict.fromkeys(equal))
            else:
                self.problems.append(
                    f"{self.at(entry, 'equal')}: {where}: equal: a list of label names"
                )
        return out

    def _map(self, entry: Mapping[str, Any], key: str, where: str) -> dict[str, str]:
        value = entry.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.problems.append(f"{self.at(entry, key)}: {where}: {key}: label: value pairs")
            return {}
        out: dict[str, str] = {}
        for name, text in value.items():
            if not isinstance(name, str) or not isinstance(text, str) or not name:
                self.problems.append(
                    f"{self.at(value, name)}: {where}: {key}: label names and values are texts"
                )
                continue
            problem = map_name_problem(name)
            if problem:
                self.problems.append(f"{self.at(value, name)}: {where}: {key}: {shown(problem)}")
                continue
            try:
                label_matcher(name, "=~" if key.endswith("_re") else "=", text)
            except ValueError as e:
                self.problems.append(f"{self.at(value, name)}: {where}: {key}: {shown(str(e))}")
                continue
            out[name] = text
        return out

    def _texts(self, entry: Mapping[str, Any], key: str, where: str) -> list[str]:
        value = entry.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.problems.append(f"{self.at(entry, key)}: {where}: {key}: a list of matchers")
            return []
        out = []
        for j, text in enumerate(value):
            if not isinstance(text, str):
                self.problems.append(f"{self.at(value, j)}: {where}: {key}: matchers are texts")
                continue
            try:
                reading = read_matchers(text, self.mode)
            except ValueError as e:
                self.problems.append(f"{self.at(value, j)}: {where}: {key}: {shown(str(e), 500)}")
                continue
            if reading.warning:
                self.warnings.append(f"{self.at(value, j)}: {where}: {key}: {reading.warning}")
            out.append(text)
        return out
