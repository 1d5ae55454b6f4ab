"""One route's alert event, rendered from an event's variables (`render_payload`).

Invariant: rendering never raises anything but `FieldFailed` with the reason (a template
that fails, a field past incident.io's limits, a payload its schema refuses), so a bad
template is one event's dead letter, never the process's; where the route says
`on_template_error: use-defaults`, a failed field is rendered with the built-in default.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from streamer.alert_event import FIELD_LIMITS, AlertEventPayload
from streamer.errors import StreamerError
from streamer.templates import DEFAULT_TEMPLATES, CompiledTemplate

if TYPE_CHECKING:
    from streamer.routing import Route

_DEFAULTS = {name: CompiledTemplate(source) for name, source in DEFAULT_TEMPLATES.items()}


class FieldFailed(StreamerError):
    """A field of the alert event could not be rendered (the reason is the message)."""


def _render_field(route: Route, name: str, variables: Mapping[str, Any]) -> str:
    template = route.templates.get(name) or _DEFAULTS[name]
    try:
        return _bounded(name, template.render(variables))
    except Exception as first:  # any template error is this event's, never the process's
        if route.on_template_error != "use-defaults" or template is _DEFAULTS[name]:
            raise FieldFailed(f"{name}: {type(first).__name__}: {first}") from first
        try:
            return _bounded(name, _DEFAULTS[name].render(variables))
        except Exception as second:
            raise FieldFailed(
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
                raise FieldFailed(f"metadata.{key}: {type(e).__name__}: {e}") from e
            out[key] = ""  # metadata is optional: an empty value beats a lost alert
    return out


def render_payload(route: Route, variables: Mapping[str, Any]) -> AlertEventPayload:
    """The alert event for one route; raises FieldFailed with the reason."""
    body: dict[str, Any] = {
        name: _render_field(route, name, variables)
        for name in ("title", "status", "deduplication_key", "description", "source_url")
    }
    body = {k: v for k, v in body.items() if v != "" or k in ("title", "status")}
    if route.metadata:
        body["metadata"] = _render_metadata(route, route.metadata, variables)
    if not body["title"]:
        raise FieldFailed("title: rendered empty; incident.io needs a title")
    if not body.get("deduplication_key"):
        raise FieldFailed("deduplication_key: rendered empty; it must identify the alert")
    try:
        return AlertEventPayload.model_validate(body)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, p['loc']))}: {p['msg']}" for p in e.errors())
        raise FieldFailed(f"the rendered alert is not valid: {problems}") from e
