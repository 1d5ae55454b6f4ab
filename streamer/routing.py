"""The routing tree: which events become which alert events, for which destination.

Semantics are Alertmanager's, which SRE teams already know:

- a route matches when all its matchers (`path = v`, `!=`, `=~`, `!~`; regexes are
  anchored) and its optional `when` expression hold; a missing field reads as "";
- routes are tried in order; the first match wins unless it says `continue: true`,
  in which case later siblings are tried too (fan-out);
- a matching route's children are tried the same way; if none matches, the route
  itself delivers; `destination: drop` delivers nothing, on purpose;
- if no top-level route matches, the default applies (drop, or a route body).

`Rules.evaluate` is pure and never raises for an event valid under the schema: a
template or expression that fails becomes a `RouteFailure` (dead-lettered by the
caller), or, where the route says `on_template_error: use-defaults`, the field is
rendered with the built-in default instead.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import ValidationError

from streamer.alert_event import FIELD_LIMITS, AlertEventPayload
from streamer.templates import (
    DEFAULT_TEMPLATES,
    CompiledExpression,
    CompiledTemplate,
    variables_of,
)

Operator = Literal["=", "!=", "=~", "!~"]
OnTemplateError = Literal["dead-letter", "use-defaults"]
_MATCHER = re.compile(r"^\s*([A-Za-z_][\w]*(?:\.[\w-]+)*)\s*(=~|!~|!=|=)\s*(.*?)\s*$")
_DEFAULTS = {name: CompiledTemplate(source) for name, source in DEFAULT_TEMPLATES.items()}


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
    regex: re.Pattern[str] | None = None
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
                regex = re.compile(f"(?:{value})")
            except re.error as e:
                raise ValueError(f"matcher {text!r}: invalid regular expression: {e}") from None
        return cls(tuple(path.split(".")), op, value, text.strip(), regex)  # type: ignore[arg-type]

    def matches(self, event: Mapping[str, Any]) -> bool:
        actual = self._get(event)
        if actual.__class__ is not str:
            actual = _as_text(actual)
        if self.regex is not None:  # anchored, as Alertmanager's
            return (self.regex.fullmatch(actual) is not None) is (self.op == "=~")
        return (actual == self.value) is (self.op == "=")


@dataclass(frozen=True)
class Route:
    """A compiled route: everything resolved (inheritance, templates) at load."""

    name: str
    path: str  # "parent > child", for errors, metrics and explanations
    matchers: tuple[Matcher, ...] = ()
    when: CompiledExpression | None = None
    destination: str | None = None  # None: drop on purpose
    templates: Mapping[str, CompiledTemplate] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)  # nested, leaves compiled
    on_template_error: OnTemplateError = "dead-letter"
    continue_: bool = False
    children: tuple[Route, ...] = ()


@dataclass(frozen=True)
class Delivery:
    """One alert event to send: the route that made it, where, and what."""

    route: str
    destination: str
    payload: AlertEventPayload


@dataclass(frozen=True)
class RouteFailure:
    """The event matched `route` but no valid alert could be made: dead-letter it."""

    route: str
    destination: str | None
    reason: str


@dataclass(frozen=True)
class Decision:
    deliveries: tuple[Delivery, ...] = ()
    failures: tuple[RouteFailure, ...] = ()
    matched: tuple[str, ...] = ()  # route paths that matched (drop routes included)

    @property
    def dropped(self) -> bool:
        """Nothing to deliver and nothing failed: the rules dropped the event on purpose."""
        return not self.deliveries and not self.failures


class _FieldFailed(Exception):
    pass


def _render_field(route: Route, name: str, variables: Mapping[str, Any]) -> str:
    template = route.templates.get(name) or _DEFAULTS[name]
    try:
        return _bounded(name, template.render(variables))
    except Exception as first:  # any template error is this event's, never the process's
        if route.on_template_error != "use-defaults" or template is _DEFAULTS[name]:
            raise _FieldFailed(f"{name}: {type(first).__name__}: {first}") from first
        try:
            return _bounded(name, _DEFAULTS[name].render(variables))
        except Exception as second:
            raise _FieldFailed(
                f"{name}: {first}; the default template failed too: {second}"
            ) from second


def _bounded(name: str, value: str) -> str:
    limit = FIELD_LIMITS.get(name)
    if limit is not None and len(value) > limit:
        raise ValueError(f"rendered {len(value)} characters, more than the {limit} allowed")
    return value


def _render_metadata(route: Route, tree: Mapping[str, Any], variables: Mapping[str, Any]) -> Any:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out[key] = _render_metadata(route, value, variables)
            continue
        try:
            out[key] = value.render(variables)
        except Exception as e:
            if route.on_template_error != "use-defaults":
                raise _FieldFailed(f"metadata.{key}: {type(e).__name__}: {e}") from e
            out[key] = ""  # metadata is optional: an empty value beats a lost alert
    return out


def render_payload(route: Route, variables: Mapping[str, Any]) -> AlertEventPayload:
    """The alert event for one route; raises _FieldFailed with the reason."""
    body: dict[str, Any] = {
        name: _render_field(route, name, variables)
        for name in ("title", "status", "deduplication_key", "description", "source_url")
    }
    body = {k: v for k, v in body.items() if v != "" or k in ("title", "status")}
    if route.metadata:
        body["metadata"] = _render_metadata(route, route.metadata, variables)
    if not body["title"]:
        raise _FieldFailed("title: rendered empty; incident.io needs a title")
    if not body.get("deduplication_key"):
        raise _FieldFailed("deduplication_key: rendered empty; it must identify the alert")
    try:
        return AlertEventPayload.model_validate(body)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, p['loc']))}: {p['msg']}" for p in e.errors())
        raise _FieldFailed(f"the rendered alert is not valid: {problems}") from e


class Rules:
    """A compiled rules file: routes in order and the default (None: drop)."""

    def __init__(self, routes: tuple[Route, ...], default: Route | None) -> None:
        self.routes = routes
        self.default = default

    def walk(self) -> Iterator[Route]:
        stack = list(reversed(self.routes))
        while stack:
            route = stack.pop()
            yield route
            stack.extend(reversed(route.children))

    def evaluate(self, event: Mapping[str, Any]) -> Decision:
        variables = variables_of(event)
        deliveries: list[Delivery] = []
        failures: list[RouteFailure] = []
        matched: list[str] = []

        def deliver(route: Route) -> None:
            matched.append(route.path)
            if route.destination is None:
                return
            try:
                payload = render_payload(route, variables)
            except _FieldFailed as e:
                failures.append(RouteFailure(route.path, route.destination, str(e)))
            else:
                deliveries.append(Delivery(route.path, route.destination, payload))

        def walk(routes: tuple[Route, ...]) -> bool:
            any_matched = False
            for route in routes:
                try:
                    is_match = True
                    for matcher in route.matchers:
                        if not matcher.matches(event):
                            is_match = False
                            break
                    if is_match and route.when is not None:
                        is_match = route.when(variables)
                except Exception as e:
                    # A `when` that fails: the event may have been meant to match, so it
                    # is dead-lettered, not silently dropped; it counts as this level's match.
                    failures.append(
                        RouteFailure(
                            route.path, route.destination, f"when: {type(e).__name__}: {e}"
                        )
                    )
                    is_match = False
                    any_matched = True
                    if not route.continue_:
                        break
                if not is_match:
                    continue
                any_matched = True
                if not walk(route.children):
                    deliver(route)
                if not route.continue_:
                    break
            return any_matched

        if not walk(self.routes) and self.default is not None:
            deliver(self.default)
        return Decision(tuple(deliveries), tuple(failures), tuple(matched))

    def explain(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Why each route did or did not match, in evaluation order (for `rules test`)."""
        variables = variables_of(event)

        def explain_level(routes: tuple[Route, ...]) -> tuple[list[dict[str, Any]], bool]:
            entries: list[dict[str, Any]] = []
            stopped = False
            any_matched = False
            for route in routes:
                entry: dict[str, Any] = {"route": route.path}
                entries.append(entry)
                if stopped:
                    entry["result"] = "not tried: an earlier route matched without continue"
                    continue
                entry["matchers"] = [
                    {
                        "matcher": m.text,
                        "value": field_text(event, m.path),
                        "holds": m.matches(event),
                    }
                    for m in route.matchers
                ]
                holds = all(m["holds"] for m in entry["matchers"])
                if holds and route.when is not None:
                    try:
                        entry["when"] = {
                            "expression": route.when.source,
                            "holds": route.when(variables),
                        }
                    except Exception as e:
                        entry["when"] = {"expression": route.when.source, "error": str(e)}
                    holds = entry["when"].get("holds", False)
                entry["result"] = "matched" if holds else "not matched"
                if holds:
                    any_matched = True
                    children, child_matched = explain_level(route.children)
                    if children:
                        entry["children"] = children
                    if not child_matched:
                        entry["delivers_to"] = route.destination or "drop"
                    stopped = not route.continue_
            return entries, any_matched

        entries, any_matched = explain_level(self.routes)
        if not any_matched:
            entries.append(
                {
                    "route": "default",
                    "result": "applies: no route matched",
                    "delivers_to": (self.default.destination or "drop") if self.default else "drop",
                }
            )
        return entries
