"""The routes' index: skipping routes that cannot match never changes an evaluation."""

from __future__ import annotations

import copy

from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.matchers import Matcher
from streamer.route_index import LevelIndex
from streamer.routing import Route, Rules
from tests.rules_helpers import alert
from tests.strategies import events, rule_trees

TEAMS = ["payments", "search", "", "x"]
EQUALITIES = [f"labels.team = '{t}'" for t in TEAMS] + [
    "severity = CRITICAL",
    "severity = WARNING",
    "alert.status = FIRING",
    "labels.missing = ''",
    "labels.team != search",
    'labels.team =~ "pay.*"',
    # what the index files besides `=`: literal alternations and prefixes, on more fields
    'labels.team =~ "payments|search"',
    'labels.team =~ "^(x|)$"',
    'labels.team =~ "(?i)PAY.*"',
    'labels.team =~ "se.*|pa(y|x)ments"',
    'severity =~ "CRITICAL|ERROR"',
    'labels.service =~ "check.*"',
    "labels.service = checkout",
    "labels.service = ''",
    'alert.labels.alertname =~ "High.*|Low"',
    "alert.labels.alertname = HighErrorRate",
]


@st.composite
def team_trees(draw: st.DrawFn) -> Rules:
    """Levels where many routes test the same field for equality (what gets indexed)."""
    names = iter(range(10**6))

    def route(parent: str | None, depth: int) -> Route:
        name = f"r{next(names)}"
        path = f"{parent} > {name}" if parent else name
        children = (
            ()
            if depth >= 3
            else tuple(route(path, depth + 1) for _ in range(draw(st.integers(0, 3))))
        )
        return Route(
            name=name,
            path=path,
            matchers=tuple(
                Matcher.parse(m) for m in draw(st.lists(st.sampled_from(EQUALITIES), max_size=3))
            ),
            destination=draw(st.sampled_from([None, "a", "b"])),
            continue_=draw(st.booleans()),
            children=children,
        )

    routes = tuple(route(None, 1) for _ in range(draw(st.integers(0, 8))))
    return Rules(routes, draw(st.none() | st.just(Route(name="d", path="d", destination="a"))))


def unindexed(rules: Rules) -> Rules:
    plain = copy.copy(rules)
    plain._index = {}
    return plain


def with_team(event: dict, team: str | None) -> dict:
    event = dict(event)
    labels = dict(event["labels"])
    if team is None:
        labels.pop("team", None)
    else:
        labels["team"] = team
    event["labels"] = labels
    return event


@settings(max_examples=300, deadline=None)
@given(
    rules=team_trees() | rule_trees(),
    event=events,
    team=st.none() | st.sampled_from(TEAMS),
)
def test_the_index_never_changes_what_the_rules_decide(rules, event, team) -> None:
    event = with_team(event, team)
    assert rules.evaluate(event) == unindexed(rules).evaluate(event)


def test_a_level_of_routes_on_one_field_tries_only_the_routes_for_the_events_value() -> None:
    routes = (
        *(
            Route(name=t, path=t, matchers=(Matcher.parse(f"labels.team = {t}"),), destination="a")
            for t in ("payments", "search", "storage")
        ),
        Route(name="any", path="any", matchers=(), destination="b"),
    )
    index = LevelIndex(routes)
    event = alert()
    assert [r.name for r in index.candidates(event)] == ["payments", "any"]
    event["labels"] = {"team": "nobody"}
    assert [r.name for r in index.candidates(event)] == ["any"]


def test_routes_on_several_fields_and_value_lists_try_only_those_the_event_can_match() -> None:
    def route(name: str, *matchers: str) -> Route:
        return Route(name=name, path=name, matchers=tuple(map(Matcher.parse, matchers)))

    routes = (
        route("pay", "labels.team = payments"),
        route("search", "labels.team = search"),
        route("checkout", "labels.service = checkout"),
        route("cart", "labels.service = cart"),
        route("high", 'alert.labels.alertname =~ "HighErrorRate|HighLatency"'),
        route("disk", 'alert.labels.alertname =~ "Disk.*"'),
        route("not-search", "labels.team != search"),  # no cover: tried on every event
    )
    index = LevelIndex(routes)
    event = alert()  # team payments, service checkout, alertname HighErrorRate
    assert [r.name for r in index.candidates(event)] == [
        "pay",
        "checkout",
        "high",
        "not-search",
    ]
    event["labels"] = {"team": "nobody"}
    event["alert"]["labels"] = {"alertname": "DiskFull"}
    assert [r.name for r in index.candidates(event)] == ["disk", "not-search"]
    event["alert"]["labels"] = {}
    assert [r.name for r in index.candidates(event)] == ["not-search"]


def test_a_level_without_a_shared_equality_is_not_indexed() -> None:
    routes = (
        Route(name="a", path="a", matchers=(Matcher.parse("severity = CRITICAL"),)),
        Route(name="b", path="b", matchers=(Matcher.parse('labels.team =~ "p.*"'),)),
    )
    assert LevelIndex(routes).candidates(alert()) == routes


def test_an_event_tries_no_route_it_cannot_match_however_many_there_are() -> None:
    """The cost of an event does not grow with the routes it cannot match: of 4,000
    generated routes on four fields, it tries only the one it matches."""
    kinds = (
        lambda i: f"labels.team = team-{i}",
        lambda i: f"labels.service = svc-{i}",
        lambda i: f'alert.labels.alertname =~ "App{i}Down|App{i}Slow"',
        lambda i: rf'alert.labels.instance =~ "host-{i}\..*"',
    )
    routes = tuple(
        Route(
            name=f"r{i}",
            path=f"r{i}",
            matchers=(
                Matcher.parse(kinds[i % 4](i)),
                Matcher.parse('severity =~ "CRITICAL|ERROR"'),
            ),
        )
        for i in range(4000)
    )
    index = LevelIndex(routes)
    event = alert()
    event["labels"] = {"team": "nobody"}
    event["alert"]["labels"] = {"alertname": "Other", "instance": "elsewhere:9100"}
    assert index.candidates(event) == ()
    for i, labels, alert_labels in [
        (1000, {"team": "team-1000"}, {}),
        (1001, {"service": "svc-1001"}, {}),
        (1002, {}, {"alertname": "App1002Slow"}),
        (1003, {}, {"instance": "host-1003.example:9100"}),
    ]:
        event["labels"] = labels
        event["alert"]["labels"] = alert_labels
        assert [r.name for r in index.candidates(event)] == [f"r{i}"]
