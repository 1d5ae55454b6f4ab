"""Route matchers: `field.path OP value`, compared as Alertmanager compares labels.

Invariant: a matcher never raises and never costs more than linear time in the field's
text, whatever the event holds: a missing field, or a step into null or a plain value,
reads as ""; regexes (`=~`, `!~`) are RE2 (Go's syntax, see streamer/regexes.py) and
anchored at both ends, as Alertmanager anchors them; an invalid one is refused at load.

Mechanism: the path look-up is specialised when the rules are loaded (`_getter`),
because matchers run for every route of every event and most events match no route.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from streamer.regexes import Regex, RegexError

__all__ = ["Matcher", "Operator", "field_text"]

Operator = Literal["=", "!=", "=~", "!~"]
_MATCHER = re.compile(r"^\s*([A-Za-z_][\w]*(?:\.[\w-]+)*)\s*(=~|!~|!=|=)\s*(.*?)\s*$")


def _as_text(value: Any) -> str:
    """A field's value as matchers compare it: null reads as "", times as ISO 8601."""
    if value is None:
        return ""
    if value.__class__ is str:
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping | list):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def _getter(path: tuple[str, ...]) -> Callable[[Mapping[str, Any]], Any]:
    """A look-up of one dotted path, specialised at load: this runs for every route of
    every event, and most events match no route, so it is the filter path's whole cost.
    A missing key, or a step into null or a plain value, gives None."""
    if len(path) == 1:
        (k0,) = path

        def get1(event: Mapping[str, Any]) -> Any:
            return event.get(k0)

        return get1
    if len(path) == 2:
        k0, k1 = path

        def get2(event: Mapping[str, Any]) -> Any:
            try:
                return event[k0][k1]
            except (KeyError, TypeError, IndexError):
                return None

        return get2

    def get_n(event: Mapping[str, Any]) -> Any:
        value: Any = event
        try:
            for key in path:
                value = value[key]
        except (KeyError, TypeError, IndexError):
            return None
        return value

    return get_n


def field_text(event: Mapping[str, Any], path: tuple[str, ...]) -> str:
    """The value at a dotted path as matchers compare it; absent or null reads as ""."""
    return _as_text(_getter(path)(event))


@dataclass(frozen=True)
class Matcher:
    path: tuple[str, ...]
    op: Operator
    value: str
    text: str
    regex: Regex | None = None
    _get: Callable[[Mapping[str, Any]], Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_get", _getter(self.path))

    @classmethod
    def parse(cls, text: str) -> Matcher:
        """`labels.team = payments`, `severity =~ "CRITICAL|ERROR"`; raises ValueError."""
        found = _MATCHER.match(text)
        if found is None:
            raise ValueError(
                f"matcher {text!r} is not of the form `field.path OP value` "
                "with OP one of = != =~ !~"
            )
        path, op, value = found.groups()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        elif value[:1] in ("=", "~"):  # `a == b`, `a =~~ b`: a typo, not a value (quote it if not)
            raise ValueError(
                f"matcher {text!r} is not of the form `field.path OP value` with OP one of "
                "= != =~ !~ (quote a value that starts with = or ~)"
            )
        regex = None
        if op in ("=~", "!~"):
            try:
                regex = Regex(value)
            except RegexError as e:
                raise ValueError(f"matcher {text!r}: invalid regular expression: {e}") from None
        return cls(tuple(path.split(".")), op, value, text.strip(), regex)  # type: ignore[arg-type]

    def text_of(self, event: Mapping[str, Any]) -> str:
        """The field this matcher tests, as it reads it (for the routes' index)."""
        actual = self._get(event)
        return actual if actual.__class__ is str else _as_text(actual)

    def matches(self, event: Mapping[str, Any]) -> bool:
        actual = self._get(event)
        if actual.__class__ is not str:
            actual = _as_text(actual)
        if self.regex is not None:  # anchored at both ends, as Alertmanager's
            return self.regex.fullmatch(actual) is (self.op == "=~")
        return (actual == self.value) is (self.op == "=")
