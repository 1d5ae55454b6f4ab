"""Alertmanager's matcher language on alert labels (streamer/label_matchers.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.label_matchers import label_matcher, parse_label_matchers, quote
from tests.rules_helpers import alert


def labels(**values: str) -> dict:
    event = alert()
    event["alert"]["labels"] = values
    return event


@pytest.mark.parametrize(
    ("text", "column", "reason"),
    [
        ("foo=bar}", 8, "a closing } without an opening {"),
        ("{foo=bar", 9, "expected a closing }"),
        ('{foo="bar\\w"}', 6, "invalid escape \\w"),
        ("job=", 5, "expected a label value"),
        ("{foo=bar\\n}", 9, "'\\\\' is not allowed here"),
        ('job="value', 5, "no closing quote"),
        ("foo!bar", 4, "'!' must be followed by = or ~"),
    ],
)
def test_a_refused_text_says_where_and_why(text: str, column: int, reason: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse_label_matchers(text)
    assert f"column {column}: " in str(refused.value)
    assert reason in str(refused.value)


def test_matchers_read_the_alert_labels_and_a_missing_label_reads_as_empty() -> None:
    (team, env) = parse_label_matchers('{team="payments", env!~"prod|staging"}')
    assert team.path == ("alert", "labels", "team")
    assert team.matches(labels(team="payments"))
    assert env.matches(labels()) and not env.matches(labels(env="prod"))
    assert parse_label_matchers('absent=""')[0].matches(labels())


def test_a_matcher_prints_as_alertmanager_writes_it() -> None:
    assert label_matcher("service.name", "=~", "api|web").text == '"service.name"=~"api|web"'
    assert label_matcher("team", "=", 'say "hi"\n').text == 'team="say \\"hi\\"\\n"'


texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)


@settings(max_examples=300, deadline=None)
@given(name=texts.filter(bool), value=texts, op=st.sampled_from(["=", "!="]))
def test_any_label_name_and_value_survive_quoting(name: str, value: str, op: str) -> None:
    # Whatever a label holds (quotes, commas, braces, line breaks, emoji), it can be written.
    (matcher,) = parse_label_matchers(f"{{{quote(name, name=True)} {op} {quote(value)},}}")
    assert matcher.path[2:] == (name,)
    assert matcher.value == value
    assert matcher.op == op
