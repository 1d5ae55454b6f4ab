"""Compiles `inhibit_rules:` into `streamer.inhibition.InhibitRule`s, once, at load.

Each side's matchers are read as Alertmanager reads them: `source_match`/`target_match`
(label = value) and `*_match_re` (label =~ regex, RE2, anchored) one by one, then each
`*_matchers` text in the file's `matcher_mode` (a text Alertmanager's two parsers read
differently is a warning, as on routes). Problems name the rule and the field. As
Alertmanager checks them: the maps' label names are classic names (`[a-zA-Z_][a-zA-Z0-9_]*`),
and so are `equal` names in `classic` mode (any non-empty UTF-8 text otherwise); here, an
`equal` name is also given only once. A rule without a name is called `inhibit_rules[i]` in
metrics, logs and explanations. A rule without source matchers loads (Alertmanager's does:
every alert is then a source) with a warning naming it, for what it costs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from streamer.config.model import ConfigFile, InhibitRuleSpec, LabelValue
from streamer.config.problems import Loc, Problems
from streamer.inhibition import InhibitRule
from streamer.label_matchers import label_matcher
from streamer.matcher_modes import read_matchers
from streamer.matchers import Matcher, Operator

__all__ = [
    "compile_inhibit_rules",
    "equal_name_problem",
    "map_name_problem",
    "no_source_warning",
]

_CLASSIC_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def map_name_problem(name: str) -> str | None:
    """Why Alertmanager refuses `name` as a `*_match`/`*_match_re` label (None: it does not)."""
    return None if _CLASSIC_NAME.fullmatch(name) else f"invalid label name {_go_quoted(name)}"


def equal_name_problem(name: str, mode: str) -> str | None:
    """Why Alertmanager, in matcher `mode`, refuses `name` in `equal` (None: it does not)."""
    valid = _CLASSIC_NAME.fullmatch(name) if mode == "classic" else name
    return None if valid else f"invalid label name {_go_quoted(name)} in equal list"


def no_source_warning(name: str) -> str:
    """What a rule without source matchers does (Alertmanager allows it; so does streamer)."""
    return (
        f"inhibit rule {name!r} has no source matchers: every alert is one of its sources, so "
        "every alert event writes a record to the firing topic, and any firing alert "
        "inhibits the targets that share its `equal` labels; add source_matchers unless "
        "that is meant"
    )


def _go_quoted(text: str) -> str:
    # as Alertmanager's message quotes it (Go's %q, for printable text)
    return json.dumps(text, ensure_ascii=False)


def compile_inhibit_rules(config: ConfigFile, problems: Problems) -> tuple[InhibitRule, ...]:
    out: list[InhibitRule] = []
    names: set[str] = set()
    for i, spec in enumerate(config.inhibit_rules):
        loc: Loc = ("inhibit_rules", i)
        name = spec.name or f"inhibit_rules[{i}]"
        if spec.name is not None and spec.name in names:
            problems.add((*loc, "name"), f"duplicate inhibit rule name {spec.name!r}")
        names.add(name)
        seen: set[str] = set()
        for j, label in enumerate(spec.equal):
            problem = equal_name_problem(label, config.matcher_mode)
            if problem:
                problems.add((*loc, "equal", j), problem)
            elif label in seen:
                problems.add((*loc, "equal", j), f"label {label!r} is named twice in equal")
            seen.add(label)
        if not (spec.source_match or spec.source_match_re or spec.source_matchers):
            problems.warn(loc, no_source_warning(name))
        out.append(
            InhibitRule(
                name,
                _side(spec, "source", config, problems, loc),
                _side(spec, "target", config, problems, loc),
                tuple(dict.fromkeys(label for label in spec.equal if label)),
            )
        )
    return tuple(out)


def _side(
    spec: InhibitRuleSpec, side: str, config: ConfigFile, problems: Problems, loc: Loc
) -> tuple[Matcher, ...]:
    match: dict[str, LabelValue] = getattr(spec, f"{side}_match")
    match_re: dict[str, LabelValue] = getattr(spec, f"{side}_match_re")
    texts: list[str] = getattr(spec, f"{side}_matchers")
    found: list[tuple[Loc, Callable[[], list[Matcher]]]] = []
    found += [((*loc, f"{side}_match", k), _label(k, "=", v)) for k, v in match.items()]
    found += [((*loc, f"{side}_match_re", k), _label(k, "=~", v)) for k, v in match_re.items()]
    for key, pairs in ((f"{side}_match", match), (f"{side}_match_re", match_re)):
        for name in pairs:
            problem = map_name_problem(name)
            if problem:
                problems.add((*loc, key, name), problem)
    for j, text in enumerate(texts):
        where: Loc = (*loc, f"{side}_matchers", j)

        def read(text: str = text, where: Loc = where) -> list[Matcher]:
            reading = read_matchers(text, config.matcher_mode)
            if reading.warning:
                problems.warn(where, reading.warning)
            return reading.matchers

        found.append((where, read))
    out: list[Matcher] = []
    for where, parse in found:
        try:
            out += parse()
        except ValueError as e:
            problems.add(where, str(e))
    return tuple(out)


def _label(name: str, op: Operator, value: LabelValue) -> Callable[[], list[Matcher]]:
    text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return lambda: [label_matcher(name, op, text)]
