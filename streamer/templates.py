"""Operator templates and expressions, in a sandbox that cannot reach Python or run long.

Invariant: a template or `when:` expression sees the event and nothing else, and one
render costs a bounded time and memory (streamer/sandbox.py: the sandbox and its
budgets); any failure, a budget included, is a TemplateError for that event only.
A pattern given to `regex_replace` as a literal is checked when the rules load.

Templates are compiled once, when the rules are loaded. They see the event's top-level
fields as variables (`alert`, `check`, `labels`, `severity`, ...) and the whole event
as `event`; nothing else: no environment, no files, no imports, no attributes that start
with an underscore, no mutation (ImmutableSandboxedEnvironment). A reference to
something that does not exist fails (StrictUndefined) instead of rendering "".
`regex_replace(pattern, replacement, count=0)` uses RE2 (Go's syntax,
streamer/regexes.py) with Python's `\\1`/`\\g<name>` replacements.

The built-in defaults below render any event valid under schemas/ (alert or check), and
make the deduplication key the identity of the alerting thing, never of the event.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from jinja2 import TemplateError, meta, nodes

from streamer.regexes import for_replace
from streamer.sandbox import environment
from streamer.template_budget import TemplateLimitError, bounded

__all__ = [
    "DEFAULT_METADATA",
    "DEFAULT_TEMPLATES",
    "CompiledExpression",
    "CompiledTemplate",
    "TemplateError",
    "TemplateLimitError",
    "variables_of",
]


_ENV = environment()

# Identity of the alerting thing: Alertmanager's fingerprint of the label set, or the
# host/service/check triple. Never the event id or a time.
DEFAULT_TEMPLATES: Mapping[str, str] = {
    "title": (
        "{% if alert %}{{ alert.annotations.summary | default(alert.labels.alertname"
        " | default('Alert from ' ~ source_system)) }}"
        "{% else %}{{ check.check }} on {{ check.host }}"
        "{% if check.service %} ({{ check.service }}){% endif %} is {{ check.state }}{% endif %}"
    ),
    "description": (
        "{% if alert %}{{ alert.annotations.description | default('') }}"
        "{% else %}{{ check.output }}{% endif %}"
    ),
    "deduplication_key": (
        "{% if alert %}{{ alert.fingerprint }}"
        "{% else %}{{ check.host }}/{{ check.service or '' }}/{{ check.check }}{% endif %}"
    ),
    "status": (
        "{% if alert %}{{ alert.status | lower }}"
        "{% else %}{{ 'resolved' if check.state == 'OK' else 'firing' }}{% endif %}"
    ),
    "source_url": "{% if alert and alert.generator_url %}{{ alert.generator_url }}{% endif %}",
}
DEFAULT_METADATA: Mapping[str, str] = {
    "source_system": "{{ source_system }}",
    "severity": "{{ severity }}",
    "event_id": "{{ event_id }}",
}


class _Unusual(Exception):
    """The event is not shaped as a fast path expects: let Jinja render (or fail) it."""


def _field(value: Any, name: str) -> Any:
    """`value.name` as the sandbox resolves it on a plain dict that has the key."""
    if type(value) is not dict or name not in value or hasattr(dict, name):
        raise _Unusual
    return value[name]


def _variable(variables: Mapping[str, Any], name: str) -> Any:
    if name not in variables:
        raise _Unusual  # StrictUndefined: Jinja raises the error the operator should see
    return variables[name]


def _fast_path(variables: Mapping[str, Any], path: tuple[str, ...]) -> str:
    value = _variable(variables, path[0])
    for name in path[1:]:
        value = _field(value, name)
    return str(value)


def _default_title(v: Mapping[str, Any]) -> str:
    alert = _variable(v, "alert")
    if alert:
        annotations, labels = _field(alert, "annotations"), _field(alert, "labels")
        fallback = "Alert from " + str(_variable(v, "source_system"))  # evaluated eagerly
        if type(annotations) is not dict or type(labels) is not dict:
            raise _Unusual
        return str(annotations.get("summary", labels.get("alertname", fallback)))
    check = _variable(v, "check")
    service = _field(check, "service")
    on = f" ({service})" if service else ""
    return f"{_field(check, 'check')} on {_field(check, 'host')}{on} is {_field(check, 'state')}"


def _default_description(v: Mapping[str, Any]) -> str:
    alert = _variable(v, "alert")
    if alert:
        annotations = _field(alert, "annotations")
        if type(annotations) is not dict:
            raise _Unusual
        return str(annotations.get("description", ""))
    return str(_field(_variable(v, "check"), "output"))


def _default_deduplication_key(v: Mapping[str, Any]) -> str:
    alert = _variable(v, "alert")
    if alert:
        return str(_field(alert, "fingerprint"))
    check = _variable(v, "check")
    host, service, name = (_field(check, k) for k in ("host", "service", "check"))
    return f"{host}/{service or ''}/{name}"


def _default_status(v: Mapping[str, Any]) -> str:
    alert = _variable(v, "alert")
    if alert:
        return str(_field(alert, "status")).lower()
    return "resolved" if _field(_variable(v, "check"), "state") == "OK" else "firing"


def _default_source_url(v: Mapping[str, Any]) -> str:
    alert = _variable(v, "alert")
    if alert:
        url = _field(alert, "generator_url")
        return str(url) if url else ""
    return ""


# The defaults, and plain `{{ a.b }}` look-ups, run as Python when the event has the shape
# they expect (a per-event saving measured in bench/delivery.py); anything else goes to
# Jinja, so results and errors are Jinja's (tests/test_templates.py compares the two).
_FAST_DEFAULTS: Mapping[str, Callable[[Mapping[str, Any]], str]] = {
    "title": _default_title,
    "description": _default_description,
    "deduplication_key": _default_deduplication_key,
    "status": _default_status,
    "source_url": _default_source_url,
}
_LOOKUP = re.compile(r"\{\{\s*([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)\s*\}\}")
_LITERALS = {"true", "false", "none", "True", "False", "None"}


class CompiledTemplate:
    """One template, compiled at load; `render` raises TemplateError for this event only.

    Immutable once made, so one instance serves every route that uses the same source
    (the rule compiler shares them: the defaults and a generator's repeated templates
    are compiled once per file, not once per route). `variables`: what it reads."""

    def __init__(self, source: str) -> None:
        self.source = source
        tree = _ENV.parse(source)
        _check_literal_patterns(tree)
        # Before compiling: the sandbox's code generator rewrites the tree it compiles.
        self.variables = frozenset(meta.find_undeclared_variables(tree))
        self._template = _ENV.from_string(tree)
        self._fast: Callable[[Mapping[str, Any]], str] | None = None
        lookup = _LOOKUP.fullmatch(source)
        if lookup and lookup.group(1).split(".")[0] not in _LITERALS:
            path = tuple(lookup.group(1).split("."))
            self._fast = lambda variables: _fast_path(variables, path)
        else:
            self._fast = next(
                (
                    fast
                    for name, fast in _FAST_DEFAULTS.items()
                    if DEFAULT_TEMPLATES[name] == source
                ),
                None,
            )

    def render(self, variables: Mapping[str, Any]) -> str:
        if self._fast is not None:
            try:
                return self._fast(variables).strip()
            except _Unusual:
                pass
        return self.render_with_jinja(variables)

    def render_with_jinja(self, variables: Mapping[str, Any]) -> str:
        return bounded(lambda: self._template.render(variables)).strip()


class CompiledExpression:
    """A boolean expression (`when:`), compiled at load, evaluated in the sandbox;
    immutable, shared like CompiledTemplate. `variables`: what it reads."""

    def __init__(self, source: str) -> None:
        self.source = source
        tree = _ENV.parse(f"{{{{ {source} }}}}")
        _check_literal_patterns(tree)
        self.variables = frozenset(meta.find_undeclared_variables(tree))
        self._expression = _ENV.compile_expression(source, undefined_to_none=False)

    def __call__(self, variables: Mapping[str, Any]) -> bool:
        return bounded(lambda: bool(self._expression(**variables)))


def _check_literal_patterns(tree: nodes.Template) -> None:
    """Compiles each `regex_replace('literal', ...)` pattern: raises RegexError (a
    ValueError) now, at load, rather than for every event (a program too large too)."""
    for node in tree.find_all(nodes.Filter):
        pattern = node.args[0] if node.name == "regex_replace" and node.args else None
        if isinstance(pattern, nodes.Const) and isinstance(pattern.value, str):
            for_replace(pattern.value)


def variables_of(event: Mapping[str, Any]) -> dict[str, Any]:
    """What templates see: each top-level field by name, and the whole as `event`."""
    return {**event, "event": event}
