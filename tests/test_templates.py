"""Templates cannot run code, read files, read the environment, or stall the consumer."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.config import ConfigError
from streamer.templates import DEFAULT_METADATA, DEFAULT_TEMPLATES, CompiledTemplate, variables_of
from tests.rules_helpers import alert, config_from
from tests.strategies import events

CANARY = "s3cr3t-canary-value"

ESCAPES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ labels.__class__.__init__.__globals__ }}",
    "{{ (1).__class__.__base__.__subclasses__() }}",
    "{{ event.__getitem__('labels') }}",
    "{{ range.__globals__ }}",
    "{{ self.__init__.__globals__ }}",
    "{{ cycler.__init__.__globals__.os.environ }}",
    "{{ lipsum.__globals__['os'].environ }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ config.items() }}",
    "{{ request.application.__globals__ }}",
    "{{ '{0.__class__.__init__.__globals__}'.format(labels) }}",
    "{{ labels.update({'team': 'x'}) }}",
    "{% set _ = labels.pop('team') %}{{ labels }}",
    "{% include '/etc/passwd' %}",
    "{% import 'os' as os %}{{ os.environ }}",
    "{% extends '/etc/hostname' %}",
    "{{ 9 ** 99999999 }}",
    "{{ 'x' * 1000000000 }}",
    "{% for i in range(10**9) %}x{% endfor %}",
]


@pytest.mark.parametrize("template", ESCAPES)
def test_classic_escapes_fail_without_effect(tmp_path, monkeypatch, template: str) -> None:
    monkeypatch.setenv("STREAMER_TEST_CANARY", CANARY)
    (tmp_path / "secret.txt").write_text(CANARY)
    body = f"routes: [{{name: r, destination: a, templates: {{title: {json.dumps(template)}}}}}]"
    try:
        config = config_from(tmp_path, body)
    except ConfigError as refused_at_load:
        assert CANARY not in str(refused_at_load)
        return
    event = alert()
    decision = config.rules.evaluate(event)
    assert decision.deliveries == () and len(decision.failures) == 1
    assert CANARY not in decision.failures[0].reason
    assert event["labels"] == {"team": "payments", "service": "checkout"}  # nothing mutated


def test_the_environment_is_not_a_variable(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("STREAMER_TEST_CANARY", CANARY)
    with pytest.raises(ConfigError, match="unknown variable"):
        config_from(
            tmp_path, "routes: [{name: r, destination: a, templates: {title: '{{ environ }}'}}]"
        )


@pytest.mark.parametrize(
    ("template", "rendered"),
    [
        ("{{ labels.nope | default('n/a') }}", "n/a"),
        ("{{ alert.annotations.summary | truncate(9, true, '…', 0) }}", "Checkout…"),
        ("{{ alert.labels.values() | sort | join(', ') }}", "checkout-1, HighErrorRate"),
        ("{{ labels.team | upper }} {{ 'ABC' | lower }}", "PAYMENTS abc"),
        ("{{ labels | tojson }}", '{"service": "checkout", "team": "payments"}'),
        ("{{ alert.labels.instance | regex_replace('-\\\\d+$', '') }}", "checkout"),
        ("{{ event.severity }} {{ severity }}", "CRITICAL CRITICAL"),
        ("{{ event_time.strftime('%H:%M') }}", "09:00"),
        ("{{ 2 ** 10 }} {{ 'ab' * 3 }}", "1024 ababab"),
    ],
)
def test_the_filters_people_need(tmp_path, template: str, rendered: str) -> None:
    body = f"routes: [{{name: r, destination: a, templates: {{title: {json.dumps(template)}}}}}]"
    [delivery] = config_from(tmp_path, body).rules.evaluate(alert()).deliveries
    assert delivery.payload.title == rendered


# --- the fast paths: the same text, or the same error, as Jinja ----------------------------

_odd_values = st.none() | st.integers() | st.text(max_size=5) | st.just({}) | st.just([])


@st.composite
def _odd_events(draw: st.DrawFn) -> dict[str, object]:
    """Schema-valid events, then some of them bent: keys missing, types changed."""
    event: dict[str, object] = draw(events)
    for part in ("alert", "check"):
        value = event.get(part)
        if isinstance(value, dict) and draw(st.booleans()):
            value = dict(value)
            for key in draw(st.lists(st.sampled_from(sorted(value)), max_size=2, unique=True)):
                if draw(st.booleans()):
                    del value[key]
                else:
                    value[key] = draw(_odd_values)
            event[part] = value
    if isinstance(event.get("labels"), dict) and draw(st.booleans()):
        event["labels"] = {**event["labels"], "items": "a key named like a dict method"}
    for key in draw(st.lists(st.sampled_from(sorted(event)), max_size=1)):
        del event[key]
    return event


def _outcome(render: Callable[[], str]) -> tuple[str, str]:
    try:
        return ("text", render())
    except Exception as e:
        return ("error", type(e).__name__)


FAST_SOURCES = [
    *DEFAULT_TEMPLATES.values(),
    *DEFAULT_METADATA.values(),
    "{{ labels.team }}",
    "{{ alert.labels.alertname }}",
    "{{ check.service }}",
    "{{ labels.items }}",
    "{{ event.labels }}",
    "{{ none }}",
]


@pytest.mark.parametrize("source", FAST_SOURCES)
@given(event=_odd_events())
@settings(max_examples=100, deadline=None)
def test_fast_paths_render_exactly_what_jinja_renders(source: str, event: dict) -> None:
    template = CompiledTemplate(source)
    variables = variables_of(event)
    assert _outcome(lambda: template.render(variables)) == _outcome(
        lambda: template.render_with_jinja(variables)
    )
