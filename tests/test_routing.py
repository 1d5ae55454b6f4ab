"""Alertmanager's routing semantics, rule by rule, through the configuration file."""

from __future__ import annotations

import io
from pathlib import Path

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings

from streamer.config import ConfigError
from streamer.decoding import load_schema
from streamer.routing import Matcher, field_text
from tests.rules_helpers import SCHEMA, alert, check, config_from
from tests.strategies import events, rule_trees

_PARSED_V2 = fastavro.parse_schema(load_schema(SCHEMA))

# -- matchers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("matcher", "holds"),
    [
        ("labels.team = payments", True),
        ("labels.team = pay", False),
        ("labels.team != payments", False),
        ("labels.team != search", True),
        ('labels.team =~ "pay.*"', True),
        ("labels.team =~ pay", False),  # anchored: a partial match is no match
        ("labels.team =~ ayment", False),
        ('labels.team !~ "pay.*"', False),
        ("labels.team !~ search|infra", True),
        ("labels.missing = ''", True),  # a missing field reads as ""
        ('labels.missing = ""', True),
        ("labels.missing != x", True),
        ("labels.missing =~ .*", True),
        ("check.host = db-1", False),  # inside a null record: ""
        ("alert.labels.alertname = HighErrorRate", True),
        ("severity = CRITICAL", True),
        ('alert.annotations.summary = "Checkout errors"', True),  # quoted values keep spaces
        ("alert.ends_at = ''", True),
        ("alert.starts_at =~ 2026-11-26T09:00:00.*", True),
    ],
)
def test_each_matcher(matcher: str, holds: bool) -> None:
    assert Matcher.parse(matcher).matches(alert()) is holds


@pytest.mark.parametrize(
    ("matcher", "holds"),
    [
        ('severity =~ "(?i)critical"', True),  # a leading flag, refused before RE2
        ('severity =~ "(?s)CRIT.*"', True),
        ('severity =~ "CRITICAL|"', True),  # anchored around the whole alternation
        ('severity =~ "|CRIT"', False),
        ("alert.labels.instance =~ [[:alpha:]]+-[[:digit:]]+", True),
        (r'alert.labels.instance =~ "\pL+-\d+"', True),
        (r'labels.team =~ "\Qpay.ments\E"', False),  # \Q...\E quotes the dot
        (r'labels.team =~ "\Qpayments\E"', True),
        ("labels.team !~ (?i)PAY.*", False),
    ],
)
def test_regex_matchers_are_alertmanagers(matcher: str, holds: bool) -> None:
    assert Matcher.parse(matcher).matches(alert()) is holds


def test_a_backtracking_bomb_is_instant() -> None:
    # Reproduced in issue 11: with Python's re this took more than 20 s per event.
    matcher = Matcher.parse('alert.labels.instance =~ "([a-z0-9]+-?)+prod"')
    event = alert()
    event["alert"]["labels"]["instance"] = "a" * 41
    assert matcher.matches(event) is False


def test_a_regex_re2_refuses_is_refused_at_load_with_its_line(tmp_path) -> None:
    with pytest.raises(ConfigError) as refused:
        config_from(
            tmp_path,
            """
            routes:
              - name: r
                destination: a
                match: ['alert.labels.instance =~ "(?<=x)y"']
            """,
        )
    assert "streamer.yaml:10: route r (match.0)" in str(refused.value)
    assert "invalid regular expression" in str(refused.value) and "RE2" in str(refused.value)


def test_field_text_of_plain_values() -> None:
    event = alert()
    assert field_text(event, ("labels",)) == '{"service": "checkout", "team": "payments"}'
    assert field_text(event, ("nope", "deeper")) == ""


@pytest.mark.parametrize("text", ["", "labels.team", "labels.team == x", "= x", "labels.team ~ x"])
def test_malformed_matchers_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not of the form"):
        Matcher.parse(text)


# -- the tree ------------------------------------------------------------------------


def destinations(decision) -> list[tuple[str, str]]:
    return [(d.route, d.destination) for d in decision.deliveries]


def test_first_match_wins(tmp_path) -> None:
    config = config_from(
        tmp_path,
        """
        routes:
          - {name: first, match: ['labels.team = payments'], destination: a}
          - {name: second, match: ['severity = CRITICAL'], destination: b}
    """,
    )
    assert destinations(config.rules.evaluate(alert())) == [("first", "a")]


def test_continue_fans_out_to_later_routes(tmp_path) -> None:
    config = config_from(
        tmp_path,
        """
        routes:
          - {name: first, match: ['labels.team = payments'], destination: a, continue: true}
          - {name: second, match: ['severity = CRITICAL'], destination: b}
          - {name: third, match: ['severity = CRITICAL'], destination: a}
    """,
    )
    assert destinations(config.rules.evaluate(alert())) == [("first", "a"), ("second", "b")]


def test_children_refine_and_inherit_the_destination(tmp_path) -> None:
    config = config_from(
        tmp_path,
        """
        routes:
          - name: payments
            match: ['labels.team = payments']
            destination: a
            routes:
              - {name: pages, match: ['severity = CRITICAL']}
              - {name: tickets, match: ['severity = WARNING'], destination: b}
    """,
    )
    rules = config.rules
    assert destinations(rules.evaluate(alert())) == [("payments > pages", "a")]
    assert destinations(rules.evaluate(alert(severity="WARNING"))) == [("payments > tickets", "b")]
    # no child matches: the parent itself delivers
    assert destinations(rules.evaluate(alert(severity="INFO"))) == [("payments", "a")]


def test_children_inherit_templates_field_by_field(tmp_path) -> None:
    config = config_from(
        tmp_path,
        """
        routes:
          - name: parent
            match: ['labels.team = payments']
            destination: a
            templates: {title: "parent {{ labels.team }}", description: "from parent"}
            routes:
              - {name: child, templates: {title: "child {{ severity }}"}}
    """,
    )
    [delivery] = config.rules.evaluate(alert()).deliveries
    assert delivery.payload.title == "child CRITICAL"
    assert delivery.payload.description == "from parent"


def test_drop_routes_drop_on_purpose_and_stop_matching(tmp_path) -> None:
    config = config_from(
        tmp_path,
        """
        routes:
          - {name: silence, match: ['alert.labels.alertname = HighErrorRate'], destination: drop}
          - {name: all, destination: a}
    """,
    )
    decision = config.rules.evaluate(alert())
    assert decision.dropped and decision.matched == ("silence",)


def test_no_match_takes_the_default(tmp_path) -> None:
    dropping = config_from(
        tmp_path, "routes: [{name: x, match: ['severity = INFO'], destination: a}]"
    )
    assert dropping.rules.evaluate(alert()).dropped
    routing = config_from(
        tmp_path,
        """
        default: {destination: b}
        routes: [{name: x, match: ['severity = INFO'], destination: a}]
    """,
    )
    assert destinations(routing.rules.evaluate(alert())) == [("default", "b")]


def test_when_says_what_matchers_cannot(tmp_path) -> None:
    config = config_from(
        tmp_path,
        """
        routes:
          - name: long-running
            when: "alert and (event_time - alert.starts_at).total_seconds() >= 0 and labels | length > 1"
            destination: a
    """,
    )
    assert destinations(config.rules.evaluate(alert())) == [("long-running", "a")]
    assert config.rules.evaluate(alert(labels={"team": "x"})).dropped


def test_a_when_that_fails_dead_letters_instead_of_dropping(tmp_path) -> None:
    config = config_from(
        tmp_path,
        """
        routes:
          - {name: fragile, when: "alert.labels.missing == 'x'", destination: a}
          - {name: later, destination: b}
    """,
    )
    decision = config.rules.evaluate(alert())
    [failure] = decision.failures
    assert failure.route == "fragile" and failure.reason.startswith("when: UndefinedError")
    assert failure.code == "route:when"
    assert decision.deliveries == ()  # it counted as this level's match: no fall-through


def test_explain_agrees_when_a_when_fails(tmp_path) -> None:
    # Issue 12: explain said `second` delivered to a while evaluate dead-lettered at first.
    config = config_from(
        tmp_path,
        """
        routes:
          - {name: first, when: "alert.labels.missing == 'x'", destination: b}
          - {name: second, destination: a}
    """,
    )
    decision, explanation = config.rules.trace(alert())
    assert config.rules.explain(alert()) == explanation
    first, second = explanation
    assert first["result"] == "failed: dead-lettered"
    assert first["dead_letter"]["code"] == "route:when"
    assert "missing" in first["when"]["error"]
    assert second["result"].startswith("not tried") and "delivers_to" not in second
    assert decision.deliveries == () and [f.route for f in decision.failures] == ["first"]


def test_explain_says_when_rendering_fails(tmp_path) -> None:
    config = config_from(
        tmp_path,
        """
        routes: [{name: r, destination: a, templates: {title: "{{ alert.labels.team }}"}}]
    """,
    )
    [entry] = config.rules.explain(alert())
    assert entry["delivers_to"] == "a" and entry["dead_letter"]["code"] == "template"
    [failure] = config.rules.evaluate(alert()).failures
    assert failure.code == "template" and entry["dead_letter"]["reason"] == failure.reason


def _verdict_of_explanation(rules, entries) -> tuple[list, list, list]:
    """(deliveries, failures, matched) read back from `explain`, in walk order."""
    deliveries, failures, matched = [], [], []

    def visit(entries) -> None:
        for entry in entries:
            if entry["result"].startswith("failed"):
                failures.append((entry["route"], entry["dead_letter"]["code"]))
            if entry["route"] == "default" and rules.default is None:
                continue  # no default route: explained as a drop, no route matched
            if "delivers_to" in entry:
                matched.append(entry["route"])
                if "dead_letter" in entry:
                    failures.append((entry["route"], entry["dead_letter"]["code"]))
                elif entry["delivers_to"] != "drop":
                    deliveries.append((entry["route"], entry["delivers_to"]))
            visit(entry.get("children", []))

    visit(entries)
    return deliveries, failures, matched


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules=rule_trees(), event=events)
def test_explain_is_the_evaluation(rules, event) -> None:
    decision = rules.evaluate(event)
    assert _verdict_of_explanation(rules, rules.explain(event)) == (
        [(d.route, d.destination) for d in decision.deliveries],
        [(f.route, f.code) for f in decision.failures],
        list(decision.matched),
    )


# -- the alert event -----------------------------------------------------------------


def test_default_templates_for_an_alert(tmp_path) -> None:
    config = config_from(tmp_path, "routes: [{name: all, destination: a}]")
    [delivery] = config.rules.evaluate(alert()).deliveries
    payload = delivery.payload
    assert (payload.title, payload.status, payload.deduplication_key) == (
        "Checkout errors",
        "firing",
        "fp-1",
    )
    assert payload.metadata == {
        "source_system": "ALERTMANAGER",
        "severity": "CRITICAL",
        "event_id": "e-1",
    }
    assert payload.source_url is None and payload.description is None  # empty: left out


def test_default_templates_for_a_check_and_its_resolve(tmp_path) -> None:
    config = config_from(tmp_path, "routes: [{name: all, destination: a}]")
    [firing] = config.rules.evaluate(check("CRITICAL")).deliveries
    [resolved] = config.rules.evaluate(check("OK")).deliveries
    assert firing.payload.title == "disk on db-1 (postgres) is CRITICAL"
    assert (firing.payload.status, resolved.payload.status) == ("firing", "resolved")
    # the same thing, so the same key: the resolve closes the alert the firing opened
    assert (
        firing.payload.deduplication_key
        == resolved.payload.deduplication_key
        == "db-1/postgres/disk"
    )


def test_a_failing_template_dead_letters_by_default(tmp_path) -> None:
    config = config_from(
        tmp_path,
        """
        routes: [{name: r, destination: a, templates: {title: "{{ alert.labels.team }}"}}]
    """,
    )
    decision = config.rules.evaluate(alert())
    [failure] = decision.failures
    assert failure.route == "r" and failure.reason.startswith("title:") and "team" in failure.reason
    assert not decision.dropped


def test_use_defaults_falls_back_to_the_built_in_template(tmp_path) -> None:
    config = config_from(
        tmp_path,
        """
        routes:
          - name: r
            destination: a
            on_template_error: use-defaults
            templates: {title: "{{ alert.labels.team }}", metadata: {x: "{{ labels.nope }}"}}
    """,
    )
    [delivery] = config.rules.evaluate(alert()).deliveries
    assert delivery.payload.title == "Checkout errors"
    assert delivery.payload.metadata == {"x": ""}


def test_a_value_too_long_is_a_template_error(tmp_path) -> None:
    config = config_from(
        tmp_path,
        """
        routes: [{name: r, destination: a, templates: {title: "{{ 'x' * 5000 }}"}}]
    """,
    )
    [failure] = config.rules.evaluate(alert()).failures
    assert "more than the 1000 allowed" in failure.reason


def test_a_rendered_status_outside_the_enum_is_refused_before_sending(tmp_path) -> None:
    config = config_from(
        tmp_path,
        """
        routes: [{name: r, destination: a, templates: {status: "open"}}]
    """,
    )
    [failure] = config.rules.evaluate(alert()).failures
    assert "status" in failure.reason


def test_an_empty_deduplication_key_is_refused(tmp_path) -> None:
    config = config_from(
        tmp_path,
        """
        routes: [{name: r, destination: a, templates: {deduplication_key: "{{ labels.nope | default('') }}"}}]
    """,
    )
    [failure] = config.rules.evaluate(alert()).failures
    assert failure.reason.startswith("deduplication_key")


def test_nested_metadata_renders_each_leaf(tmp_path) -> None:
    config = config_from(
        tmp_path,
        """
        routes:
          - name: r
            destination: a
            templates:
              metadata: {team: "{{ labels.team }}", links: {runbook: "{{ runbook_url or 'none' }}"}, tags: "{{ alert.labels | tojson }}"}
    """,
    )
    [delivery] = config.rules.evaluate(alert()).deliveries
    assert delivery.payload.metadata == {
        "team": "payments",
        "links": {"runbook": "none"},
        "tags": '{"alertname": "HighErrorRate", "instance": "checkout-1"}',
    }


def test_explain_says_why(tmp_path) -> None:
    config = config_from(
        tmp_path,
        """
        routes:
          - {name: info, match: ['severity = INFO'], destination: a}
          - {name: team, match: ['labels.team = payments'], destination: b}
          - {name: never, destination: a}
    """,
    )
    info, team, never = config.rules.explain(alert())
    assert info["result"] == "not matched"
    assert info["matchers"] == [{"matcher": "severity = INFO", "value": "CRITICAL", "holds": False}]
    assert team["result"] == "matched" and team["delivers_to"] == "b"
    assert never["result"].startswith("not tried")


# -- never raises ----------------------------------------------------------------------

_FRAGILE = """
    routes:
      - name: fragile
        match: ['labels.team =~ "pay.*|"']
        when: "labels.get('env', '') != 'never'"
        destination: a
        continue: true
        on_template_error: use-defaults
        templates:
          title: "{{ alert.labels.alertname }} {{ check.host }}"
          metadata: {deep: {x: "{{ alert.annotations.summary | truncate(5) }}"}}
      - name: strict
        destination: b
        templates: {title: "{{ labels.team | upper }}", deduplication_key: "{{ event_id }}"}
        routes:
          - {name: child, match: ['alert.status = FIRING'], when: "alert.labels.severity == 'x'"}
"""


@pytest.fixture(scope="module")
def rule_sets(tmp_path_factory):
    from streamer.config import load_config

    example = load_config(
        Path(__file__).parent.parent / "examples" / "streamer.yaml", check_secrets=False
    )
    return [example.rules, config_from(tmp_path_factory.mktemp("fragile"), _FRAGILE).rules]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event=events)
def test_evaluation_never_raises_for_events_valid_under_the_schema(rule_sets, event) -> None:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, _PARSED_V2, event)  # the strategy keeps to the schema
    for rules in rule_sets:
        decision = rules.evaluate(event)
        for delivery in decision.deliveries:
            assert delivery.payload.status in ("firing", "resolved")
            assert delivery.payload.title and delivery.payload.deduplication_key
        rules.explain(event)
