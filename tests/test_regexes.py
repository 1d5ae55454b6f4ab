"""Regexes are RE2 in Go's syntax, anchored for matchers, linear whatever the input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.regexes import (
    MAX_REPLACE_PROGRAM,
    Regex,
    RegexError,
    RegexLimitError,
    for_replace,
    literal_cover,
)


@pytest.mark.parametrize(
    ("pattern", "text", "matches"),
    [
        ("pay", "payments", False),  # fully anchored, as Alertmanager's `^(?:...)$`
        ("pay.*", "payments", True),
        ("a|b", "ab", False),  # the anchors hold across alternation
        ("a|b", "b", True),
        ("(?i)critical", "CRITICAL", True),  # a leading flag works
        ("x(?i:abc)", "xABC", True),
        ("(?s).", "\n", True),
        (".", "\n", False),
        ("a$", "a\n", False),  # `$` is the end of the text, not before a last newline
        ("[[:digit:]]+", "123", True),
        (r"\d+", "١٢٣", False),  # \d is ASCII-only, as in Go
        (r"\w+", "é", False),
        (r"\pL+", "éa", True),
        (r"\p{Greek}+", "αβγ", True),
        (r"a\z", "a", True),
        (r"\Q.*\E", ".*", True),
        (r"\Q.*\E", "ab", False),
        ("", "", True),
        ("x", "\ud800x", False),  # a lone surrogate is no error
    ],
)
def test_fullmatch_is_go_syntax_fully_anchored(pattern: str, text: str, matches: bool) -> None:
    assert Regex(pattern).fullmatch(text) is matches


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        ("a(?=b)", "invalid perl operator"),  # no look-around
        (r"(a)\1", "invalid escape"),  # no backreferences
        ("(a", "missing )"),
        ("a)|(b", "unexpected )"),  # cannot escape the anchoring group
        ("x{2000}", "repetition"),
        (r"\Z", "invalid escape"),  # Go has \z, not Python's \Z
    ],
)
def test_patterns_outside_re2_are_refused(pattern: str, why: str) -> None:
    with pytest.raises(RegexError, match="RE2") as refused:
        Regex(pattern)
    assert why in str(refused.value)


def test_a_catastrophic_pattern_for_backtracking_is_linear() -> None:
    # Python's re takes minutes on this (issue 11); RE2 answers at once.
    assert Regex("([a-z0-9]+-?)+prod").fullmatch("a" * 41) is False
    assert Regex("([a-z0-9]+-?)+prod").fullmatch("a" * 100_000 + "-x") is False


def test_replace_uses_python_group_references() -> None:
    assert Regex(r"-\d+$").replace("checkout-1", "", max_length=100) == "checkout"
    assert Regex(r"(\w+)@(\w+)").replace("a@b c@d", r"\2 at \1", max_length=100) == "b at a d at c"
    assert Regex(r"(?P<n>\w)").replace("ab", r"<\g<n>>", max_length=100) == "<a><b>"
    assert Regex("a").replace("aaa", "b", 2, max_length=100) == "bba"
    assert Regex("é").replace("café!", "e", max_length=100) == "cafe!"


def test_a_bad_group_reference_is_an_error() -> None:
    with pytest.raises(RegexError, match="bad replacement"):
        Regex("a").replace("a", r"\3", max_length=10)


def test_replace_refuses_an_output_over_the_bound_before_building_it() -> None:
    with pytest.raises(RegexLimitError, match="more than 100000"):
        Regex("").replace("a" * 100_000, "a" * 1000, max_length=100_000)
    with pytest.raises(RegexLimitError):
        Regex("x").replace("y" * 11, "", max_length=10)  # the unmatched tail counts too
    assert Regex("x").replace("y" * 10, "", max_length=10) == "y" * 10


@pytest.mark.parametrize(
    ("pattern", "text"),
    [("(.*){1000}", "x"), ("(?i)\\w{1000}", "X" * 1000), (".{1000}x", "x" * 1001)],
)
def test_replace_refuses_a_pattern_whose_program_is_too_large(pattern: str, text: str) -> None:
    assert Regex(pattern).fullmatch(text)  # fine as a matcher: RE2's DFA is linear
    with pytest.raises(RegexError, match=f"more than the {MAX_REPLACE_PROGRAM} allowed"):
        for_replace(pattern)
    assert for_replace("\\pL+").replace("é a", "x", max_length=10) == "x x"


def test_replace_reports_its_worst_case_cost_before_matching() -> None:
    costs: list[int] = []
    regex = Regex("(.*){10}")

    def refuse(steps: int) -> None:
        costs.append(steps)
        raise RegexLimitError("too costly")

    with pytest.raises(RegexLimitError):
        regex.replace("é" * 1000, "", max_length=10_000, steps=refuse)
    assert costs == [2000 * regex.program_size]  # bytes of UTF-8 x instructions


def test_equal_patterns_share_one_compiled_regex_while_in_use() -> None:
    first = Regex("critical|warning")
    assert Regex("critical|warning") is first
    assert Regex("critical|warning|info") is not first


# Pieces of patterns that stress the cover: literals, alternation, groups (plain, named,
# non-capturing, with flags), classes holding `|` or `]`, quantifiers, anchors, escapes.
# fmt: off
_PIECES = st.sampled_from([
    "a", "b", "ab", "-", "/", " ", "|", "(", ")", "(?:", "(?P<n>", "(?i)", "(?i:", "(?s)",
    ".", ".*", "+", "?", "*", "{2}", "{1,}", "[ab]", "[|]", "[]a]", "[^a]", "[[:alpha:]]",
    "^", "$", r"\.", r"\|", r"\d", r"\Q|\E", r"\\", "A", "é",
])
# fmt: on
_TEXTS = st.text(alphabet="abAB-/ .|é\\", max_size=6)


@settings(max_examples=3000, deadline=None)
@given(pieces=st.lists(_PIECES, max_size=7), texts=st.lists(_TEXTS, max_size=8))
def test_a_literal_cover_holds_every_text_its_pattern_matches(
    pieces: list[str], texts: list[str]
) -> None:
    pattern = "".join(pieces)
    try:
        regex = Regex(pattern)
    except RegexError:
        return
    cover = literal_cover(pattern)
    if cover is None:
        return
    exact, prefixes = cover
    for text in [*texts, *exact, *(p + t for p in prefixes for t in texts[:2])]:
        if regex.fullmatch(text):
            assert text in exact or any(text.startswith(p) for p in prefixes), (pattern, text)


@pytest.mark.parametrize(
    ("pattern", "cover"),
    [
        ("critical|warning", ({"critical", "warning"}, set())),
        ("^(foo|bar)$", ({"foo", "bar"}, set())),
        (r"host-1\..*", (set(), {"host-1"})),
        ("App1Down|App1.*", ({"App1Down"}, {"App1"})),
        ("ab*", (set(), {"a"})),  # the quantifier makes the `b` optional
        ("", ({""}, set())),
        (".*", None),
        ("(?i)critical", None),  # the flag reaches every alternative
        ("a|(?i)b", None),
        ("[ab]c", None),
        (r"\Qa|b\E", None),
    ],
)
def test_literal_cover_of_common_patterns(
    pattern: str, cover: tuple[set[str], set[str]] | None
) -> None:
    assert literal_cover(pattern) == cover
