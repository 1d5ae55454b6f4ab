"""The routing tree: which events become which alert events, for which destination.

Invariants: `Rules.evaluate` is pure and never raises for an event valid under the
schema; `Rules.explain` is the same traversal, recorded (`_Walk`), so what `rules test
--explain` says is what the service does. A route whose `when:` raises is a failure of
that event on that route (`RouteFailure`, code `route:when`), never a silent
fall-through; a template that fails is one too (code `template`), or, where the route
says `on_template_error: use-defaults`, the field is rendered with the built-in default.

Semantics are Alertmanager's, which SRE teams already know:

- a route matches when all its matchers (`path = v`, `!=`, `=~`, `!~`; regexes are
  RE2, Go's syntax, anchored at both ends; streamer/matchers.py) and its optional `when`
  expression hold; a missing field reads as "";
- routes are tried in order; the first match wins unless it says `continue: true`,
  in which case later siblings are tried too (fan-out); a route whose test failed
  counts as this level's match (the event may have been meant for it);
- a matching route's children are tried the same way; if none matches, the route
  itself delivers; `destination: drop` delivers nothing, on purpose;
- if no top-level route matches, the default applies (drop, or a route body);
- a route that would deliver while its `active_time_intervals` do not contain the time of
  routing, or its `mute_time_intervals` do, delivers nothing: the event is `muted` there
  (`Evaluation.muted`, with the intervals), and the walk goes on as if it had delivered
  (streamer/time_intervals.py). The time is the caller's (`at`); without one, the wall
  clock when the walk first needs it. Intervals are not inherited by child routes. A
  resolve is never muted (as silences and inhibition never mute one): streamer keeps no
  memory to send it after the interval, as Alertmanager does, so a firing delivered before
  a mute window would otherwise stay open; incident.io ignores a resolve it never saw.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Literal

from streamer.alert_event import AlertEventPayload
from streamer.inhibition import InhibitRule
from streamer.matchers import Matcher, field_text
from streamer.payloads import FieldFailed, render_payload
from streamer.route_index import indexes
from streamer.templates import CompiledExpression, CompiledTemplate, variables_of
from streamer.time_intervals import TimeInterval, muted_by

__all__ = [
    "Evaluation",
    "FailureCode",
    "Matcher",
    "MutedRoute",
    "OnTemplateError",
    "Route",
    "RouteFailure",
    "RoutedAlert",
    "Rules",
    "field_text",
    "render_payload",
]

OnTemplateError = Literal["dead-letter", "use-defaults"]
FailureCode = Literal["template", "route:when", "route:match"]


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
    # Alertmanager's: this route's own (never its parent's), resolved by name at load
    mute_time_intervals: tuple[TimeInterval, ...] = ()
    active_time_intervals: tuple[TimeInterval, ...] = ()


@dataclass(frozen=True)
class RoutedAlert:
    """One alert event to send: the route that made it, where, and what."""

    route: str
    destination: str
    payload: AlertEventPayload


@dataclass(frozen=True)
class MutedRoute:
    """`route` would have delivered to `destination`, but a time interval keeps it quiet:
    outside its `active_time_intervals` (`by`), or inside its `mute_time_intervals`.
    `intervals` are the names that say so; `at` is the time they were asked about."""

    route: str
    destination: str
    by: str
    intervals: tuple[str, ...]
    at: datetime


@dataclass(frozen=True)
class RouteFailure:
    """The event was meant for `route` but no valid alert could be made: dead-letter it.

    `code` is the dead letter's stable reason: `template` (a field would not render or
    the alert is invalid), `route:when` (the route's `when:` raised) or `route:match`
    (a matcher raised; not expected). `reason` says what went wrong, in words."""

    route: str
    destination: str | None
    reason: str
    code: FailureCode = "template"


@dataclass(frozen=True)
class Evaluation:
    """What the rules make of one event: alert events to send, failures to dead-letter."""

    deliveries: tuple[RoutedAlert, ...] = ()
    failures: tuple[RouteFailure, ...] = ()
    matched: tuple[str, ...] = ()  # route paths that matched (drop routes included)
    muted: tuple[MutedRoute, ...] = ()  # routes a time interval kept quiet

    @property
    def dropped(self) -> bool:
        """Nothing to deliver, nothing failed, nothing muted: the rules dropped the event."""
        return not self.deliveries and not self.failures and not self.muted


class _Outcome(Enum):
    NOT_MATCHED = "not matched"
    MATCHED = "matched"
    FAILED = "failed"


class _Walk:
    """One traversal of the tree for one event; with `explain`, it also records why each
    route did or did not match. `evaluate` and `explain` are two views of this walk."""

    def __init__(
        self,
        rules: Rules,
        event: Mapping[str, Any],
        *,
        explain: bool,
        at: datetime | None = None,
    ) -> None:
        self.rules = rules
        self.event = event
        self.variables = variables_of(event)
        self.explain = explain
        self.at = at
        self.deliveries: list[RoutedAlert] = []
        self.failures: list[RouteFailure] = []
        self.matched: list[str] = []
        self.muted: list[MutedRoute] = []
        self.entries: list[dict[str, Any]] = []

    def run(self) -> Evaluation:
        if not self._level(self.rules.routes, self.entries):
            default = self.rules.default
            entry: dict[str, Any] | None = None
            if self.explain:
                entry = {"route": "default", "result": "applies: no route matched"}
                self.entries.append(entry)
            if default is not None:
                self._deliver(default, entry)
            elif entry is not None:
                entry["delivers_to"] = "drop"
        return Evaluation(
            tuple(self.deliveries), tuple(self.failures), tuple(self.matched), tuple(self.muted)
        )

    def _level(self, routes: tuple[Route, ...], entries: list[dict[str, Any]]) -> bool:
        """Tries `routes` in order; whether any matched (or failed: it counts as one).
        Without `explain`, only the routes the level's index says could match are tried;
        the result is the same (route_index.py)."""
        any_matched = False
        stopped = False
        event = self.event
        if not self.explain:
            routes = self.rules.candidates(routes, event)
        matcher: Matcher | None
        for route in routes:
            entry: dict[str, Any] | None = None
            if self.explain:
                entry = {"route": route.path}
                entries.append(entry)
            if stopped:
                if entry is None:
                    break
                entry["result"] = "not tried: an earlier route matched without continue"
                continue
            if entry is None:  # the filter path (most events, most routes): inline, cheap
                try:
                    for matcher in route.matchers:
                        if not matcher.matches(event):
                            break
                    else:
                        matcher = None
                    if matcher is not None:
                        continue
                except Exception:
                    pass  # `_test` tries again and records the failure
            outcome = self._test(route, entry)
            if outcome is _Outcome.NOT_MATCHED:
                continue
            any_matched = True
            if outcome is _Outcome.MATCHED:
                children: list[dict[str, Any]] = []
                if not self._level(route.children, children):
                    self._deliver(route, entry)
                if entry is not None and children:
                    entry["children"] = children
            stopped = not route.continue_
        return any_matched

    def _test(self, route: Route, entry: dict[str, Any] | None) -> _Outcome:
        stage: FailureCode = "route:match"
        try:
            if entry is None:
                for matcher in route.matchers:
                    if not matcher.matches(self.event):
                        return _Outcome.NOT_MATCHED
            else:
                entry["matchers"] = [
                    {
                        "matcher": m.text,
                        "value": field_text(self.event, m.path),
                        "holds": m.matches(self.event),
                    }
                    for m in route.matchers
                ]
                if not all(m["holds"] for m in entry["matchers"]):
                    entry["result"] = "not matched"
                    return _Outcome.NOT_MATCHED
            if route.when is not None:
                stage = "route:when"
                holds = route.when(self.variables)
                if entry is not None:
                    entry["when"] = {"expression": route.when.source, "holds": holds}
                if not holds:
                    if entry is not None:
                        entry["result"] = "not matched"
                    return _Outcome.NOT_MATCHED
        except Exception as e:
            # The event may have been meant for this route: dead-letter it, do not let
            # it fall through to a later sibling.
            reason = f"{stage.removeprefix('route:')}: {type(e).__name__}: {e}"
            self.failures.append(RouteFailure(route.path, route.destination, reason, stage))
            if entry is not None:
                if route.when is not None and stage == "route:when":
                    entry["when"] = {"expression": route.when.source, "error": str(e)}
                entry["result"] = "failed: dead-lettered"
                entry["dead_letter"] = {"code": stage, "reason": reason}
            return _Outcome.FAILED
        if entry is not None:
            entry["result"] = "matched"
        return _Outcome.MATCHED

    def _deliver(self, route: Route, entry: dict[str, Any] | None) -> None:
        self.matched.append(route.path)
        if entry is not None:
            entry["delivers_to"] = route.destination or "drop"
        if route.destination is None:
            return
        if route.mute_time_intervals or route.active_time_intervals:
            if self.at is None:  # read once, and only by routes that ask
                self.at = datetime.now(UTC)
            quiet = muted_by(route.mute_time_intervals, route.active_time_intervals, self.at)
            if quiet is not None:
                by, names = quiet
                said = {"by": by, "intervals": list(names), "at": self.at.isoformat()}
                resolve = self._resolve(route)
                if resolve is not None:  # it closes what an earlier firing opened
                    self.deliveries.append(RoutedAlert(route.path, route.destination, resolve))
                    if entry is not None:
                        entry["resolve_not_muted"] = said
                    return
                self.muted.append(MutedRoute(route.path, route.destination, by, names, self.at))
                if entry is not None:
                    entry["muted"] = said
                return
        try:
            payload = render_payload(route, self.variables)
        except FieldFailed as e:
            self.failures.append(RouteFailure(route.path, route.destination, str(e)))
            if entry is not None:
                entry["dead_letter"] = {"code": "template", "reason": str(e)}
        else:
            self.deliveries.append(RoutedAlert(route.path, route.destination, payload))

    def _resolve(self, route: Route) -> AlertEventPayload | None:
        """The alert event a muted route would send, when it is a resolve (None: a firing,
        or a template that fails: muted as before, never dead-lettered by a mute window)."""
        try:
            payload = render_payload(route, self.variables)
        except FieldFailed:
            return None
        return payload if payload.status == "resolved" else None


class Rules:
    """A compiled rules file: routes in order, the default (None: drop) and the inhibit
    rules (applied after routing, streamer/inhibition.py)."""

    def __init__(
        self,
        routes: tuple[Route, ...],
        default: Route | None,
        inhibit_rules: tuple[InhibitRule, ...] = (),
    ) -> None:
        self.routes = routes
        self.default = default
        self.inhibit_rules = inhibit_rules
        # per level (by identity of its tuple): the routes that could match an event
        self._index = {id(index.routes): index for index in indexes(routes)}

    def candidates(self, routes: tuple[Route, ...], event: Mapping[str, Any]) -> tuple[Route, ...]:
        """Of one level's routes, those that could match `event` (route_index.py)."""
        index = self._index.get(id(routes))
        return routes if index is None else index.candidates(event)

    def walk(self) -> Iterator[Route]:
        """Every route, depth first, in file order (not an evaluation)."""
        stack = list(reversed(self.routes))
        while stack:
            route = stack.pop()
            yield route
            stack.extend(reversed(route.children))

    def quiet_routes(self, at: datetime) -> list[tuple[str, str, tuple[str, ...]]]:
        """The routes a time interval keeps quiet at `at`: (route path, the setting, the
        intervals), for what is muted right now (a gauge, `/pending`)."""
        out = []
        for route in self.walk():
            quiet = muted_by(route.mute_time_intervals, route.active_time_intervals, at)
            if quiet is not None and route.destination is not None:
                out.append((route.path, *quiet))
        return out

    def evaluate(self, event: Mapping[str, Any], at: datetime | None = None) -> Evaluation:
        """Where this event goes, with time intervals asked about `at` (aware; None: the
        wall clock now); never raises for a schema-valid event."""
        return _Walk(self, event, explain=False, at=at).run()

    def explain(self, event: Mapping[str, Any], at: datetime | None = None) -> list[dict[str, Any]]:
        """Why each route did or did not match, in evaluation order (for `rules test`):
        the evaluation itself, recorded, so it cannot disagree with `evaluate`."""
        return self.trace(event, at)[1]

    def trace(
        self, event: Mapping[str, Any], at: datetime | None = None
    ) -> tuple[Evaluation, list[dict[str, Any]]]:
        """The decision and its explanation, from one walk."""
        walk = _Walk(self, event, explain=True, at=at)
        decision = walk.run()
        return decision, walk.entries
