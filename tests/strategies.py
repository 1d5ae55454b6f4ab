"""Hypothesis strategies for monitoring events valid under schemas/ (v2)."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import strategies as st

text = st.text(max_size=30)
label_maps = st.dictionaries(
    st.sampled_from(
        [
            "team",
            "service",
            "env",
            "alertname",
            "instance",
            "severity",
            "summary",
            "description",
            "x",
        ]
    )
    | text,
    text,
    max_size=5,
)
times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
).map(lambda t: t.replace(microsecond=t.microsecond // 1000 * 1000))

alerts = st.fixed_dictionaries(
    {
        "status": st.sampled_from(["FIRING", "RESOLVED"]),
        "labels": label_maps,
        "annotations": label_maps,
        "starts_at": times,
        "ends_at": st.none() | times,
        "generator_url": st.none() | text,
        "fingerprint": text,
    }
)
checks = st.fixed_dictionaries(
    {
        "host": text,
        "service": st.none() | text,
        "check": text,
        "state": st.sampled_from(["OK", "WARNING", "CRITICAL", "UNKNOWN"]),
        "output": text,
    }
)
# Exactly one of alert and check is what producers promise; the schema allows both or
# neither, so the strategy does too: evaluation must survive what the schema lets through.
events = st.fixed_dictionaries(
    {
        "event_id": text,
        "event_time": times,
        "source_system": st.sampled_from(
            ["PROMETHEUS", "ALERTMANAGER", "DATADOG", "NAGIOS", "ICINGA", "CUSTOM", "OTHER"]
        ),
        "severity": st.sampled_from(["CRITICAL", "ERROR", "WARNING", "INFO", "UNKNOWN"]),
        "labels": label_maps,
        "alert": st.none() | alerts,
        "check": st.none() | checks,
        "runbook_url": st.none() | text,
    }
)


# -- rule trees (for properties of the routing walk) ------------------------------------


@st.composite
def rule_trees(draw: st.DrawFn, max_depth: int = 3):  # -> streamer.routing.Rules
    """Compiled rules built directly: matchers that often hold on `events`, `when:`
    expressions that hold, fail to hold or raise, templates that render or fail,
    drop routes, `continue`, children and a default."""
    from streamer.matchers import Matcher
    from streamer.routing import Route, Rules
    from streamer.templates import CompiledExpression, CompiledTemplate

    matchers = st.sampled_from(
        [
            "severity = CRITICAL",
            "severity != INFO",
            'severity =~ "CRITICAL|ERROR"',
            "source_system !~ ICINGA",
            "alert.status = FIRING",
            "labels.team =~ .*",
            "labels.missing = ''",
        ]
    ).map(Matcher.parse)
    whens = st.sampled_from(
        [
            "alert is not none",
            "labels | length > 1",
            "alert.labels.missing == 'x'",  # raises on every alert (StrictUndefined)
            "check.host != ''",  # raises when check is null
            "'a'.ljust(10**8) == 'a'",  # over budget: raises
        ]
    ).map(CompiledExpression)
    titles = st.sampled_from(["{{ severity }}", "{{ labels.nope }}", "{{ 'x' * 5000 }}"])
    names = iter(range(10**6))

    def route(parent: str | None, depth: int) -> Route:
        name = f"r{next(names)}"
        path = f"{parent} > {name}" if parent else name
        title = draw(st.none() | titles)
        children = (
            ()
            if depth >= max_depth
            else tuple(route(path, depth + 1) for _ in range(draw(st.integers(0, 2))))
        )
        return Route(
            name=name,
            path=path,
            matchers=tuple(draw(st.lists(matchers, max_size=2))),
            when=draw(st.none() | whens),
            destination=draw(st.sampled_from([None, "a", "b"])),
            templates={"title": CompiledTemplate(title)} if title else {},
            continue_=draw(st.booleans()),
            children=children,
        )

    routes = tuple(route(None, 1) for _ in range(draw(st.integers(0, 4))))
    default = draw(st.none() | st.just(Route(name="default", path="default", destination="a")))
    return Rules(routes, default)
