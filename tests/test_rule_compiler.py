"""Compiling the routing tree: what is shared across routes changes nothing they do."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamer.config import ConfigError
from streamer.regexes import Regex
from tests.rules_helpers import alert, config_from

TITLE = "'{{ labels.team }}: {{ alert.labels.alertname }}'"


def test_routes_with_the_same_templates_share_them_and_render_their_own_events(
    tmp_path: Path,
) -> None:
    rules = config_from(
        tmp_path,
        f"""
        routes:
          - {{name: pay, destination: a, match: ['labels.team = payments'], templates: {{title: {TITLE}}}}}
          - {{name: search, destination: b, match: ['labels.team = search'], templates: {{title: {TITLE}}}}}
          - {{name: other, destination: a, match: ['labels.team = other']}}
          - {{name: more, destination: b, match: ['labels.team = more']}}
        """,
    ).rules
    pay, search, other, more = rules.routes
    assert pay.templates["title"] is search.templates["title"]  # compiled once
    assert other.metadata["severity"] is more.metadata["severity"]  # the built-in defaults
    payments = alert(labels={"team": "payments"})
    searching = alert(labels={"team": "search"}, severity="WARNING")
    searching["alert"] = {**searching["alert"], "labels": {"alertname": "SlowQueries"}}
    searching["alert"]["fingerprint"] = "fp-search"
    [first] = rules.evaluate(payments).deliveries
    [second] = rules.evaluate(searching).deliveries
    assert (first.route, first.payload.title) == ("pay", "payments: HighErrorRate")
    assert (second.route, second.payload.title) == ("search", "search: SlowQueries")
    assert first.payload.deduplication_key != second.payload.deduplication_key
    assert second.payload.metadata is not None
    assert second.payload.metadata["severity"] == "WARNING"


def test_a_routes_own_template_wins_over_a_shared_one_and_children_inherit_it(
    tmp_path: Path,
) -> None:
    rules = config_from(
        tmp_path,
        f"""
        routes:
          - name: parent
            destination: a
            match: ['labels.team = payments']
            templates: {{title: {TITLE}}}
            routes:
              - {{name: own, match: ['severity = WARNING'], templates: {{title: 'own title'}}}}
              - {{name: inherits, match: ['severity = CRITICAL']}}
          - {{name: sibling, destination: b, match: ['labels.team = search'], templates: {{title: {TITLE}}}}}
        """,
    ).rules
    parent, sibling = rules.routes
    own, inherits = parent.children
    assert inherits.templates is parent.templates  # nothing of its own: the parent's mapping
    assert own.templates["title"] is not parent.templates["title"]
    assert sibling.templates["title"] is parent.templates["title"]
    [warning] = rules.evaluate(alert(severity="WARNING")).deliveries
    [critical] = rules.evaluate(alert()).deliveries
    assert (warning.route, warning.payload.title) == ("parent > own", "own title")
    assert (critical.route, critical.payload.title) == (
        "parent > inherits",
        "payments: HighErrorRate",
    )
    # the default for a field no route sets, rendered per event
    assert critical.payload.status == "firing"


def test_a_bad_template_used_by_many_routes_is_reported_where_each_uses_it(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError) as error:
        config_from(
            tmp_path,
            """
            routes:
              - {name: one, destination: a, templates: {title: '{{ nope }}'}}
              - {name: two, destination: a, templates: {title: '{{ nope }}'}}
              - {name: three, destination: a, templates: {title: '{% if %}'}}
              - {name: four, destination: a, templates: {title: '{% if %}'}}
              - {name: five, destination: a, when: 'labels ==='}
              - {name: six, destination: a, when: 'labels ==='}
            """,
        )
    found = error.value.problems
    assert len(found) == 6
    for name in ("one", "two"):
        assert any(f"route {name} (templates.title): unknown variable(s) nope" in p for p in found)
    for name in ("three", "four"):
        assert any(f"route {name} (templates.title): template syntax error" in p for p in found)
    for name in ("five", "six"):
        assert any(f"route {name} (when): expression syntax error" in p for p in found)


def test_routes_with_the_same_matcher_share_it_and_its_compiled_pattern(tmp_path: Path) -> None:
    rules = config_from(
        tmp_path,
        """
        routes:
          - {name: one, destination: a, matchers: ['severity=~"critical|warning"', 'team="x"']}
          - {name: two, destination: b, matchers: ['severity=~"critical|warning"', 'team="y"']}
        """,
    ).rules
    one, two = rules.routes
    assert one.matchers[0] is two.matchers[0]  # equal matchers: one instance
    assert one.matchers[0].regex is two.matchers[0].regex
    assert one.matchers[1] != two.matchers[1]
    assert Regex("critical|warning") is one.matchers[0].regex
    event = alert()
    event["alert"]["labels"] = {"severity": "warning", "team": "y"}
    assert [d.route for d in rules.evaluate(event).deliveries] == ["two"]
