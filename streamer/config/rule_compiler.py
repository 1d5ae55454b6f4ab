"""Compiles the routing tree of a validated file into `streamer.routing.Rules`, once.

Every matcher path, template variable and `when:` expression is checked against the
reader schema here, at load, so an event is never routed by a rule that cannot address it;
routes inherit destination, templates, metadata and on_template_error from their parent
(not their time intervals: Alertmanager's children do not inherit them); route names are
unique, and so are time interval names, each route naming only defined ones. Problems are
added to the file's `Problems`, never raised one by one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from types import MappingProxyType
from typing import Any

from jinja2 import TemplateSyntaxError

from streamer.config.inhibit_compiler import compile_inhibit_rules
from streamer.config.model import (
    DROP,
    TEMPLATE_FIELDS,
    ConfigFile,
    DefaultRoute,
    LabelValue,
    RouteSpec,
    Templates,
)
from streamer.config.problems import Loc, Problems
from streamer.label_matchers import label_matcher
from streamer.matcher_modes import read_matchers
from streamer.matchers import Operator
from streamer.routing import Matcher, Route, Rules
from streamer.templates import DEFAULT_METADATA, CompiledExpression, CompiledTemplate
from streamer.time_intervals import TimeInterval, parse_spec

_NONE: Mapping[str, CompiledTemplate] = MappingProxyType({})  # no templates of its own


class SchemaPaths:
    """Which dotted paths exist in the reader schema (for matchers and templates)."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.schema = schema
        self.names: dict[str, Any] = {}
        # per path, as thousands of routes test the same few paths
        self._problems: dict[tuple[str, ...], str | None] = {}
        self._enums: dict[tuple[str, ...], list[str] | None] = {}
        self._collect(schema)

    def _collect(self, schema: Any) -> None:
        if isinstance(schema, list):
            for branch in schema:
                self._collect(branch)
        elif isinstance(schema, dict):
            if "name" in schema and schema.get("type") in ("record", "enum", "fixed"):
                self.names[schema["name"]] = schema
                namespace = schema.get("namespace")
                if namespace:
                    self.names[f"{namespace}.{schema['name']}"] = schema
            for f in schema.get("fields", []):
                self._collect(f["type"])
            for key in ("items", "values"):
                if key in schema:
                    self._collect(schema[key])

    def top_level(self) -> set[str]:
        return {f["name"] for f in self.schema["fields"]}

    def problem(self, path: tuple[str, ...]) -> str | None:
        """None if `path` can address a value, else why not."""
        if path not in self._problems:
            problem = self._walk(self.schema, path, [])
            self._problems[path] = (
                f"unknown field path {'.'.join(path)}: {problem}" if problem else None
            )
        return self._problems[path]

    def never_matches(self, matcher: Matcher) -> str | None:
        """Why a matcher on an enum field can never hold (or always holds), or None.

        An enum field reads as one of its symbols, or "" where it may be missing.
        """
        if matcher.path not in self._enums:
            self._enums[matcher.path] = self._symbols(self.schema, matcher.path)
        symbols = self._enums[matcher.path]
        if symbols is None:
            return None
        readable = {*symbols, ""}
        where = f"{'.'.join(matcher.path)} is one of {', '.join(symbols)}"
        if matcher.regex is not None:
            matched = {s for s in readable if matcher.regex.fullmatch(s)}
            never = not matched if matcher.op == "=~" else matched == readable
            if not never and (matched or matcher.op == "=~"):
                return None
        elif matcher.value in readable:
            return None
        else:
            never = matcher.op == "="
        outcome = "can never match" if never else "always matches"
        return f"{matcher.text} {outcome}: {where} (check the spelling and case)"

    def _symbols(self, schema: Any, path: tuple[str, ...]) -> list[str] | None:
        """The symbols of the enum at `path` (every branch of a union an enum), or None."""
        if isinstance(schema, str) and schema in self.names:
            schema = self.names[schema]
        if isinstance(schema, list):
            branches = [self._symbols(b, path) for b in schema if b != "null"]
            if not branches or any(b is None for b in branches):
                return None
            return list(dict.fromkeys(s for b in branches for s in b or []))
        if not isinstance(schema, dict):
            return None
        if not path:
            return list(schema["symbols"]) if schema.get("type") == "enum" else None
        if schema.get("type") == "record":
            fields = {f["name"]: f["type"] for f in schema["fields"]}
            return self._symbols(fields[path[0]], path[1:]) if path[0] in fields else None
        if schema.get("type") == "map":
            return self._symbols(schema["values"], path[1:])
        return None

    def _walk(self, schema: Any, path: tuple[str, ...], seen: list[str]) -> str | None:
        if isinstance(schema, str) and schema in self.names:
            schema = self.names[schema]
        if isinstance(schema, list):  # a union: any branch will do
            reasons = [self._walk(b, path, seen) for b in schema if b != "null"]
            return (
                None
                if any(r is None for r in reasons)
                else next((r for r in reasons if r), "only null")
            )
        if not path:
            return None
        here = ".".join(seen) or "the event"
        if isinstance(schema, dict) and schema.get("type") == "record":
            fields = {f["name"]: f["type"] for f in schema["fields"]}
            if path[0] not in fields:
                return f"{here} has no field {path[0]!r} (fields: {', '.join(sorted(fields))})"
            return self._walk(fields[path[0]], path[1:], [*seen, path[0]])
        if isinstance(schema, dict) and schema.get("type") == "map":
            return self._walk(schema["values"], path[1:], [*seen, path[0]])
        return f"{here} is a plain value; it has no field {path[0]!r}"


class RulesCompiler:
    """One file's routing tree, compiled.

    What is the same across routes is compiled once per file and shared: a template or
    `when:` source (the built-in metadata of every top-level route, a generator's title
    repeated on thousands of routes) becomes one compiled object, and so does a failed
    one (its problem is still reported at each place it is written); equal matchers are
    one instance (and equal regexes one program, streamer/regexes.py). All of them are
    immutable, so sharing cannot change what a route matches or renders."""

    def __init__(self, config: ConfigFile, paths: SchemaPaths, problems: Problems) -> None:
        self.config = config
        self.paths = paths
        self.problems = problems
        self.names_seen: dict[str, Loc] = {}
        self.variables = paths.top_level() | {"event"}
        self._templates: dict[str, CompiledTemplate | str] = {}  # source -> it, or why not
        self._expressions: dict[str, CompiledExpression | str] = {}
        self._matchers: dict[Matcher, Matcher] = {}  # equal matchers: one shared instance
        self.intervals = self._time_intervals()

    def _time_intervals(self) -> dict[str, TimeInterval]:
        """The named time intervals, each spec read as Alertmanager reads it."""
        out: dict[str, TimeInterval] = {}
        for i, named in enumerate(self.config.time_intervals):
            loc: Loc = ("time_intervals", i)
            if named.name in out:
                self.problems.add(
                    (*loc, "name"),
                    f"time interval {named.name!r} is defined twice; names must be unique",
                )
            specs = []
            for j, raw in enumerate(named.time_intervals):
                try:
                    specs.append(parse_spec(raw))
                except ValueError as e:
                    self.problems.add((*loc, "time_intervals", j), f"{named.name}: {e}")
            out[named.name] = TimeInterval(named.name, tuple(specs))
        return out

    def route_intervals(self, names: list[str], loc: Loc) -> tuple[TimeInterval, ...]:
        """A route's `mute_time_intervals:` or `active_time_intervals:`, by name."""
        out = []
        for i, name in enumerate(names):
            interval = self.intervals.get(name)
            if interval is None:
                known = ", ".join(self.intervals) or "none"
                self.problems.add(
                    (*loc, i), f"unknown time interval {name!r} (time_intervals: {known})"
                )
            else:
                out.append(interval)
        return tuple(out)

    def template(self, source: str, loc: Loc) -> CompiledTemplate | None:
        compiled = self._templates.get(source)
        if compiled is None:
            try:
                compiled = CompiledTemplate(source)
            except TemplateSyntaxError as e:
                compiled = f"template syntax error: {e.message}"
            except ValueError as e:  # streamer.regexes.RegexError: a literal regex_replace
                compiled = f"invalid regular expression in regex_replace: {e}"
            self._templates[source] = compiled
        if isinstance(compiled, str):
            self.problems.add(loc, compiled)
            return None
        self._check_variables(compiled.variables, loc)
        return compiled

    def expression(self, source: str, loc: Loc) -> CompiledExpression | None:
        compiled = self._expressions.get(source)
        if compiled is None:
            try:
                compiled = CompiledExpression(source)
            except TemplateSyntaxError as e:
                compiled = f"expression syntax error: {e.message}"
            except ValueError as e:  # streamer.regexes.RegexError, in a regex_replace
                compiled = f"invalid regular expression: {e}"
            self._expressions[source] = compiled
        if isinstance(compiled, str):
            self.problems.add(loc, compiled)
            return None
        self._check_variables(compiled.variables, loc)
        return compiled

    def _check_variables(self, used: frozenset[str], loc: Loc) -> None:
        unknown = used - self.variables
        if unknown:
            self.problems.add(
                loc,
                f"unknown variable(s) {', '.join(sorted(unknown))}; "
                f"templates see {', '.join(sorted(self.variables))}",
            )

    def templates(
        self, spec: Templates, inherited: Mapping[str, CompiledTemplate], loc: Loc
    ) -> Mapping[str, CompiledTemplate]:
        """The parent's templates with this route's own; a route that sets none shares
        its parent's mapping (routes only read it)."""
        own = {}
        for name in TEMPLATE_FIELDS:
            source = getattr(spec, name)
            if source is not None:
                compiled = self.template(source, (*loc, "templates", name))
                if compiled is not None:
                    own[name] = compiled
        return {**inherited, **own} if own else inherited

    def metadata(self, tree: Mapping[str, Any], loc: Loc) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            if isinstance(value, Mapping):
                out[key] = self.metadata(value, (*loc, key))
            elif isinstance(value, str | int | float | bool):
                compiled = self.template(str(value), (*loc, key))
                if compiled is not None:
                    out[key] = compiled
            else:
                self.problems.add(
                    (*loc, key), "metadata values are templates (text) or nested maps"
                )
        return out

    def destination(self, name: str | None, loc: Loc) -> str | None:
        if name is None or name == DROP:
            return None
        if name not in self.config.destinations:
            known = ", ".join(sorted(self.config.destinations)) or "none"
            self.problems.add(
                (*loc, "destination"),
                f"unknown destination {name!r} (destinations: {known}; or 'drop')",
            )
        return name

    def matchers(self, spec: RouteSpec, loc: Loc) -> list[Matcher]:
        """The route's matchers in the order written: `match:` (paths, or Alertmanager's
        label map), `match_re:`, `matchers:`; each checked against the reader schema."""
        found: list[tuple[Loc, Callable[[], list[Matcher]]]] = []
        if isinstance(spec.match, list):
            found += [
                ((*loc, "match", i), partial(_one, text)) for i, text in enumerate(spec.match)
            ]
        else:
            found += [
                ((*loc, "match", k), partial(_label, k, "=", v)) for k, v in spec.match.items()
            ]
        found += [
            ((*loc, "match_re", k), partial(_label, k, "=~", v)) for k, v in spec.match_re.items()
        ]
        found += [
            ((*loc, "matchers", i), partial(self._matchers_text, text, (*loc, "matchers", i)))
            for i, text in enumerate(spec.matchers)
        ]
        out: list[Matcher] = []
        for where, parse in found:
            try:
                parsed = parse()
            except ValueError as e:
                self.problems.add(where, str(e))
                continue
            for matcher in parsed:
                problem = self.paths.problem(matcher.path) or self.paths.never_matches(matcher)
                if problem:
                    self.problems.add(where, problem)
                out.append(self._matchers.setdefault(matcher, matcher))
        return out

    def _matchers_text(self, text: str, loc: Loc) -> list[Matcher]:
        """One `matchers:` text, read in the file's `matcher_mode`; a disagreement between
        Alertmanager's parsers is a warning with both readings (streamer.matcher_modes)."""
        reading = read_matchers(text, self.config.matcher_mode)
        if reading.warning:
            self.problems.warn(loc, reading.warning)
        return reading.matchers

    def route(self, spec: RouteSpec, loc: Loc, parent: Route | None) -> Route:
        if spec.name in self.names_seen:
            self.problems.add(
                (*loc, "name"), f"duplicate route name {spec.name!r}; names must be unique"
            )
        self.names_seen[spec.name] = loc
        matchers = self.matchers(spec, loc)
        when = None if spec.when is None else self.expression(spec.when, (*loc, "when"))
        inherited_destination = parent.destination if parent else None
        explicit = spec.destination
        destination = (
            self.destination(explicit, loc) if explicit is not None else inherited_destination
        )
        path = f"{parent.path} > {spec.name}" if parent else spec.name
        route = Route(
            name=spec.name,
            path=path,
            matchers=tuple(matchers),
            when=when,
            destination=destination,
            templates=self.templates(spec.templates, parent.templates if parent else _NONE, loc),
            metadata=(
                self.metadata(spec.templates.metadata, (*loc, "templates", "metadata"))
                if spec.templates.metadata is not None
                else (parent.metadata if parent else self.metadata(DEFAULT_METADATA, loc))
            ),
            on_template_error=spec.on_template_error
            or (parent.on_template_error if parent else "dead-letter"),
            continue_=spec.continue_,
            mute_time_intervals=self.route_intervals(
                spec.mute_time_intervals, (*loc, "mute_time_intervals")
            ),
            active_time_intervals=self.route_intervals(
                spec.active_time_intervals, (*loc, "active_time_intervals")
            ),
        )
        children = tuple(
            self.route(child, (*loc, "routes", i), route) for i, child in enumerate(spec.routes)
        )
        if explicit is None and parent is None:
            # Children inherit it; without one, an event no child matches would vanish.
            self.problems.add(
                loc, "a top-level route needs `destination:` (a destination name, or drop)"
            )
        return Route(**{**route.__dict__, "children": children})

    def rules(self) -> Rules:
        routes = tuple(
            self.route(spec, ("routes", i), None) for i, spec in enumerate(self.config.routes)
        )
        default = None
        if isinstance(self.config.default, DefaultRoute):
            spec = self.config.default
            default = Route(
                name="default",
                path="default",
                destination=self.destination(spec.destination, ("default",)),
                templates=self.templates(spec.templates, _NONE, ("default",)),
                metadata=self.metadata(
                    spec.templates.metadata or DEFAULT_METADATA,
                    ("default", "templates", "metadata"),
                ),
                on_template_error=spec.on_template_error or "dead-letter",
            )
        return Rules(routes, default, compile_inhibit_rules(self.config, self.problems))


def _one(text: str) -> list[Matcher]:
    return [Matcher.parse(text)]


def _label(name: str, op: Operator, value: LabelValue) -> list[Matcher]:
    # The loader keeps scalars' text (`code: 0500` is "0500"); only data built in code holds
    # other types, read as the text YAML would print.
    text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return [label_matcher(name, op, text)]
