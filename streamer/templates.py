"""Operator templates and expressions, in a Jinja2 sandbox that cannot reach Python.

Templates are compiled once, when the rules are loaded. They see the event's top-level
fields as variables (`alert`, `check`, `labels`, `severity`, ...) and the whole event
as `event`; nothing else: no environment, no files, no imports, no attributes that start
with an underscore, no mutation (ImmutableSandboxedEnvironment). A reference to
something that does not exist fails (StrictUndefined) instead of rendering "".

The built-in defaults below render any event valid under schemas/ (alert or check), and
make the deduplication key the identity of the alerting thing, never of the event.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from jinja2 import StrictUndefined, TemplateError, meta
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = [
    "DEFAULT_METADATA",
    "DEFAULT_TEMPLATES",
    "CompiledExpression",
    "CompiledTemplate",
    "TemplateError",
    "undeclared_variables",
    "variables_of",
]


def _regex_replace(value: object, pattern: str, replacement: str, count: int = 0) -> str:
    return re.sub(pattern, replacement, str(value), count=count)


def _tojson(value: object) -> str:
    # Jinja's own tojson escapes for HTML; alert text is not HTML.
    return json.dumps(value, default=str, sort_keys=True)


_MAX_EXPONENT = 64
_MAX_REPEAT = 100_000


class _AlertSandbox(ImmutableSandboxedEnvironment):
    """The sandbox, also refusing arithmetic that would hang or exhaust the process.

    A template runs once per event on the consumer's path: `9 ** 99999999` or
    `'x' * 10 ** 9` must fail that one event, not stall its partition.
    """

    intercepted_binops = frozenset({"**", "*"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int) and abs(right) > _MAX_EXPONENT:
            raise SecurityError(f"exponent {right} is larger than {_MAX_EXPONENT}")
        if operator == "*":
            sizes = [v for v in (left, right) if isinstance(v, int) and not isinstance(v, bool)]
            sequences = [v for v in (left, right) if isinstance(v, str | list | tuple)]
            if sequences and sizes and sizes[0] * max(len(sequences[0]), 1) > _MAX_REPEAT:
                raise SecurityError(f"repeating a value more than {_MAX_REPEAT} characters long")
        return super().call_binop(context, operator, left, right)


def _environment() -> ImmutableSandboxedEnvironment:
    env = _AlertSandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)
    env.filters["regex_replace"] = _regex_replace
    env.filters["tojson"] = _tojson
    # Nothing from outside the event: no globals beyond Jinja's harmless ones.
    env.globals = {k: v for k, v in env.globals.items() if k in ("range", "dict")}
    return env


_ENV = _environment()

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


class CompiledTemplate:
    """One template, compiled at load; `render` raises TemplateError for this event only."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._template = _ENV.from_string(source)

    def render(self, variables: Mapping[str, Any]) -> str:
        return self._template.render(variables).strip()


class CompiledExpression:
    """A boolean expression (`when:`), compiled at load, evaluated in the sandbox."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._expression = _ENV.compile_expression(source, undefined_to_none=False)

    def __call__(self, variables: Mapping[str, Any]) -> bool:
        return bool(self._expression(**variables))


def variables_of(event: Mapping[str, Any]) -> dict[str, Any]:
    """What templates see: each top-level field by name, and the whole as `event`."""
    return {**event, "event": event}


def undeclared_variables(source: str, *, expression: bool = False) -> set[str]:
    """The variables a template (or expression) reads; for checking them at load."""
    return set(
        meta.find_undeclared_variables(_ENV.parse(f"{{{{ {source} }}}}" if expression else source))
    )
