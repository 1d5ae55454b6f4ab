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


# --- budgets: a template that would take long or allocate much fails its event, at once ----

OVER_BUDGET = [
    ("{{ 'a'.ljust(10**8) }}", "str.ljust would make 100000000 characters"),
    ("{{ 'a'.center(10**8) }} {{ 'a'.zfill(10**8) }}", "str.center"),
    ("{{ ('\\t' * 1000).expandtabs(10**6) }}", "str.expandtabs"),
    ("{{ '%0100000000d' % 1 }}", "width or precision 100000000"),
    ("{{ '%.100000000f' % 1.0 }}", "width or precision 100000000"),
    ("{{ '%*d' % (10, 1) }}", "`*` width"),
    ("{{ '%s%s%s' % (('a' * 50000,) * 3) }}", "% formatting"),
    ("{{ '%(a)s%(a)s%(a)s' % {'a': 'x' * 50000} }}", "% formatting"),
    ("{{ '{:>100000000}'.format(1) }}", "format width or precision"),
    ("{{ '{0}{0}{0}'.format('a' * 50000) }}", "str.format"),
    ("{{ ('a' * 100000).replace('', 'a' * 1000) }}", "str.replace"),
    ("{{ ('a' * 100000) | replace('a', 'bb') }}", "replace"),
    ("{{ 'x'.join(['a' * 60000, 'b' * 60000]) }}", "join"),
    ("{{ ['a' * 60000, 'b' * 60000] | join }}", "join"),
    ("{{ 'a' | center(100000000) }}", "center"),
    ("{{ ('a\\n' * 1000) | indent(1000) }}", "indent"),
    ("{{ [1] | batch(100000000, 'x') | list }}", "batch"),
    ("{{ [[0] * 1000] * 1000 | sum(start=[]) }}", "sum adds numbers"),
    ("{{ ('a' * 100000) | regex_replace('', 'a' * 1000) }}", "regex_replace"),
    ("{{ 'a' * 60000 + 'b' * 60000 }}", "+"),
    ("{{ ((2 ** 64) ** 64) ** 64 }}", "bits"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}", "loops"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "loops"),
    (
        "{% for x in [1] recursive %}{% if loop.depth < 3 %}{{ loop(range(100000)) }}{% endif %}{% endfor %}",
        "loops",
    ),
    ("{% for i in range(10000) %}{{ range(100000) | sum }}{% endfor %}", "work"),
    ("{% set s = 'a' * 100000 %}{% for i in range(100) %}{{ s }}{% endfor %}", "output"),
    (
        "{% macro f(s, n) %}{% if n > 0 %}{{ f(s ~ s, n - 1) }}{% endif %}{% endmacro %}{{ f('a', 40) }}",
        "join",
    ),
    # small as values, huge as text: refused while being written, not after
    ("{% set a = [1] * 1000 %}{% set b = [a] * 1000 %}{{ [b] * 1000 }}", "into text"),
    ("{% set a = [1] * 1000 %}{% set b = [a] * 1000 %}{{ b ~ '' }}", "into text"),
    ("{% set a = [1] * 1000 %}{% set b = [a] * 1000 %}{{ ([b] * 1000) | tojson }}", "tojson"),
    ("{% set a = [1] * 1000 %}{% set b = [a] * 1000 %}{{ b | string }}", "into text"),
    ("{% set a = [1] * 1000 %}{% set b = [a] * 1000 %}{{ '{}'.format(b) }}", "into text"),
    # calls: a macro calling itself twice would cost 2**22 calls; nesting fails cleanly
    (
        "{% macro f(n) %}{% if n > 0 %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(22) }}",
        "more than 10000 calls",
    ),
    ("{% macro f(n) %}{{ f(n+1) }}{% endmacro %}{{ f(0) }}", "nest more than 50 deep"),
    # bytes: no size check measures them, so none are made
    ("{{ ('a'.encode() * 1000000000) | length }}", "str.encode: bytes are not available"),
    ("{{ 'a'.encode().ljust(10**9) | length }}", "bytes are not available"),
    ("{{ ('%0500000000d'.encode() % 1) | length }}", "bytes are not available"),
    ("{{ (1).to_bytes(10**9, 'big') | length }}", "int.to_bytes: bytes are not available"),
    # walking a container in C (`in`, `==`, `count`, a test, an attribute path) is work
    (
        "{% set l = range(100000) | list %}{% for i in range(10000) %}{{ -1 in l }}{% endfor %}",
        "work",
    ),
    (
        "{% set l = range(100000) | list %}{% for i in range(10000) %}{{ l == l }}{% endfor %}",
        "work",
    ),
    (
        "{% set l = range(100000) | list %}{% for i in range(10000) %}{{ l.count(0) }}{% endfor %}",
        "work",
    ),
    ("{% set l = range(100000) | list %}{{ range(100000) | select('in', l) | list }}", "work"),
    ("{{ range(100000) | sort(attribute='real' ~ '.real' * 2000) | first }}", "work"),
    # regex_replace pays bytes x program size: a loop of them cannot run for seconds
    (
        "{% set s = 'ab' * 50000 %}{% for i in range(100) %}{{ s | regex_replace('(.*){10}', '') }}{% endfor %}",
        "work",
    ),
]


@pytest.mark.parametrize(("template", "why"), OVER_BUDGET)
def test_templates_over_budget_fail_the_event(tmp_path, template: str, why: str) -> None:
    body = f"routes: [{{name: r, destination: a, templates: {{title: {json.dumps(template)}}}}}]"
    decision = config_from(tmp_path, body).rules.evaluate(alert())
    [failure] = decision.failures
    assert failure.code == "template" and failure.reason.startswith("title: TemplateLimitError")
    assert why in failure.reason


@pytest.mark.parametrize(
    "expression",
    [
        "'a'.ljust(10**8) == 'a'",
        "'%0100000000d' % 1 == 'a'",
        "('a' * 100000).replace('', 'a' * 1000) == 'a'",
        "range(100000) | map('string') | join(range(100000) | join) == 'x'",
        "('a'.encode() * 1000000000) | length > 0",
        "'%0500000000d'.encode() % 1 == 'a'",
    ],
)
def test_when_expressions_over_budget_fail_the_event(tmp_path, expression: str) -> None:
    body = f"routes: [{{name: r, destination: a, when: {json.dumps(expression)}}}]"
    [failure] = config_from(tmp_path, body).rules.evaluate(alert()).failures
    assert failure.code == "route:when" and "TemplateLimitError" in failure.reason


def test_use_defaults_applies_to_a_template_over_budget(tmp_path) -> None:
    body = """
        routes:
          - {name: r, destination: a, on_template_error: use-defaults, templates: {title: "{{ 'a'.ljust(10**8) }}"}}
    """
    [delivery] = config_from(tmp_path, body).rules.evaluate(alert()).deliveries
    assert delivery.payload.title == "Checkout errors"


@pytest.mark.parametrize(
    ("template", "rendered"),
    [
        ("{{ '%05.1f|%-4s|' % (3.14159, 'a') }}", "003.1|a   |"),
        ("{{ '%(team)s!' % labels }}", "payments!"),
        ("{{ '{:<6}|{team}'.format('ab', team=labels.team) }}", "ab    |payments"),
        ("{{ '{team}'.format_map(labels) }}", "payments"),
        ("{{ '%s-%s' | format('a', 'b') }}", "a-b"),
        ("{{ labels | dictsort | join(';') }}", "('service', 'checkout');('team', 'payments')"),
        (
            "{{ [1, (2,), {'a': [None, true]}, 1.5, labels.keys()] }}",
            "[1, (2,), {'a': [None, True]}, 1.5, dict_keys(['team', 'service'])]",
        ),
        ("{{ labels.items() | list ~ '' }}", "[('team', 'payments'), ('service', 'checkout')]"),
        (
            "{% for k, v in labels | dictsort %}{{ k }}={{ v }}{% if not loop.last %},{% endif %}{% endfor %}",
            "service=checkout,team=payments",
        ),
        ("{{ 'ab'.ljust(4, '.') }}{{ 'x'.zfill(3) }}{{ 'a-b'.replace('-', '+') }}", "ab..00xa+b"),
        (
            "{{ alert.labels.instance | regex_replace('(\\\\w+)-(\\\\d)', '\\\\2:\\\\1') }}",
            "1:checkout",
        ),
        ("{{ 'x\u06612' | regex_replace('\\\\d', '#') }}", "x\u0661#"),  # \\d: ASCII, as in Go
        ("{{ ('x' * 100000) | length }}", "100000"),
    ],
)
def test_what_stays_within_budget_renders_as_jinja_would(
    tmp_path, template: str, rendered: str
) -> None:
    body = (
        f"routes: [{{name: r, destination: a, templates: {{description: {json.dumps(template)}}}}}]"
    )
    [delivery] = config_from(tmp_path, body).rules.evaluate(alert()).deliveries
    assert delivery.payload.description == rendered


@pytest.mark.parametrize(
    ("field", "source"),
    [
        ("title", "{{ labels.team | regex_replace('(?<=p)a', 'A') }}"),
        ("when", "labels.team | regex_replace('\\\\Z', '') == 'x'"),
    ],
)
def test_a_literal_regex_replace_pattern_re2_refuses_is_refused_at_load(
    tmp_path, field, source
) -> None:
    if field == "when":
        body = f"routes: [{{name: r, destination: a, when: {json.dumps(source)}}}]"
    else:
        body = f"routes: [{{name: r, destination: a, templates: {{title: {json.dumps(source)}}}}}]"
    with pytest.raises(
        ConfigError, match=r"streamer\.yaml:\d+: route r.*invalid regular expression.*RE2"
    ):
        config_from(tmp_path, body)


def test_a_regex_replace_pattern_with_a_large_program_is_refused(tmp_path) -> None:
    # `(.*){1000}` compiles to 10 000 RE2 instructions: seconds per 100 000 characters
    source = "{{ labels.team | regex_replace('(.*){1000}', '') }}"
    body = f"routes: [{{name: r, destination: a, templates: {{title: {json.dumps(source)}}}}}]"
    with pytest.raises(ConfigError, match=r"streamer\.yaml:\d+: route r.*more than the 2000"):
        config_from(tmp_path, body)
    made_at_run_time = "{{ labels.team | regex_replace('(.*)' ~ '{1000}', '') }}"
    body = f"routes: [{{name: r, destination: a, templates: {{title: {json.dumps(made_at_run_time)}}}}}]"
    [failure] = config_from(tmp_path, body).rules.evaluate(alert()).failures
    assert "pattern too large for regex_replace" in failure.reason
