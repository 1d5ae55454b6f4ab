"""Alertmanager's classic matcher parser (streamer/classic_matchers.py); the facts from its
own tests are in the conformance suite (tests/alertmanager_conformance/matchers.yaml)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamer.classic_matchers import parse_classic_matchers


def read(text: str) -> list[tuple[str, str, str]]:
    return [(m.path[-1], m.op, m.value) for m in parse_classic_matchers(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a=b, c!=d ,", [("a", "=", "b"), ("c", "!=", "d")]),
        ('a="x,y",b=~"1|2"', [("a", "=", "x,y"), ("b", "=~", "1|2")]),
        ('a="x\\",y"', [("a", "=", 'x",y')]),  # an escaped quote does not close the quote
        ("  a\t=\n b  ", [("a", "=", "b")]),  # blanks around each part
        ("k8s:pod=p", [("k8s:pod", "=", "p")]),  # colons are classic name characters
        ("a=b c", [("a", "=", "b c")]),  # the value runs to the end, inner blanks kept
        ('a="b"', [("a", "=", "b")]),
        ('a=""', [("a", "=", "")]),
        ("a=\\", [("a", "=", "\\")]),  # a trailing backslash is literal
        ("{}", []),
        ("", []),
    ],
)
def test_reads(text: str, expected: list[tuple[str, str, str]]) -> None:
    assert read(text) == expected


@pytest.mark.parametrize(
    "text",
    ["a=b,,c=d", ",a=b", "1a=b", "a.b=c", 'a="b', 'a=b"', 'a="b"c"', "a", "=b", "a=~(", "🙂=x"],
)
def test_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_classic_matchers(text)


def test_a_long_run_of_blanks_is_read_in_linear_time() -> None:
    # Go's `(.*?)\s*$` run by a backtracking engine is quadratic here (~10^11 steps): this
    # test would not end within the suite's per-test timeout.
    text = "a=" + " " * 200_000 + "x" + " " * 200_000 + "y"
    assert read(text) == [("a", "=", "x" + " " * 200_000 + "y")]


@given(st.text(max_size=60))
def test_any_text_is_read_or_refused_with_a_value_error(text: str) -> None:
    with contextlib.suppress(ValueError):
        parse_classic_matchers(text)
