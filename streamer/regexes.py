"""Regular expressions that run in linear time, in Alertmanager's dialect.

Invariant: no pattern, whatever an operator writes or an event carries, costs more than
time linear in the text it is matched against, nor more memory than a fixed bound;
a pattern outside the dialect is refused when it is compiled (at load, for the rules),
never half-accepted.

The dialect is RE2's, which is Go's `regexp` syntax and so Alertmanager's: `\\d`, `\\w`,
`\\s` and `\\b` are ASCII-only; `[[:digit:]]`, `\\pL`, `\\p{Greek}`, `\\z`, `\\Q...\\E` and
flags such as `(?i)` or `(?s)` (at the start or inside a group) work; backreferences and
look-around do not exist. `$` means the end of the text, never "before a final newline".

- `Regex.fullmatch` is how matchers (`=~`, `!~`) compare: the pattern must match the whole
  text, as Alertmanager anchors it (`^(?:pattern)$`);
- `Regex.replace` is the `regex_replace` template filter: every match (or the first
  `count`), with Python's replacement syntax (`\\1`, `\\g<name>`), and an output longer
  than `max_length` is refused before it is built. Its time is at worst about the text's
  length times the pattern's program size (RE2's simulation with captures, or a DFA that
  ran out of memory, visits each instruction per byte): `for_replace` refuses a program
  over MAX_REPLACE_PROGRAM instructions, and `replace` reports that product to `steps`
  before matching, so a caller can refuse it (the template budget does).

Mechanism: the `google-re2` binding. A text is handed to RE2 as UTF-8 (lone surrogates
passed through, so no text makes matching raise); a compiled program is capped at
`MAX_PROGRAM_MEMORY`, so a huge pattern is refused rather than allowed to grow.
"""

from __future__ import annotations

import functools
import re
import weakref
from collections.abc import Callable
from typing import Any

import re2  # type: ignore[import-untyped]  # the binding ships no type hints

from streamer.errors import StreamerError

__all__ = [
    "MAX_PROGRAM_MEMORY",
    "MAX_REPLACE_PROGRAM",
    "Regex",
    "RegexError",
    "RegexLimitError",
    "compiled",
    "for_replace",
    "literal_cover",
]

MAX_PROGRAM_MEMORY = 2 << 20  # bytes per compiled pattern; RE2 refuses larger programs
# Instructions in a `regex_replace` pattern's program: `\pL+` is ~1200, `(.*){1000}`
# 10 000 (seconds per 100 000 characters).
MAX_REPLACE_PROGRAM = 2_000


class RegexError(StreamerError, ValueError):
    """The pattern is not a valid RE2 (Go) regular expression; the message says why."""


class RegexLimitError(StreamerError, ValueError):
    """A replacement would produce more text than allowed."""


def _options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # errors are raised (and reported at load), not logged
    options.max_mem = MAX_PROGRAM_MEMORY
    return options


_OPTIONS = _options()


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


class Regex:
    """One compiled pattern; raises RegexError if RE2 refuses it.

    Immutable, and compiled once per pattern while in use: `Regex(p)` returns the instance
    already compiled for `p` if one is alive (`Regex(p) is Regex(p)`), so ten thousand
    routes testing `severity=~"critical|warning"` hold one program, not ten thousand."""

    __slots__ = ("__weakref__", "_anchored", "_search", "pattern")

    def __new__(cls, pattern: str) -> Regex:
        regex = _ALIVE.get(pattern)
        if regex is None:
            regex = super().__new__(cls)
            regex._compile(pattern)
            _ALIVE[pattern] = regex
        return regex

    def _compile(self, pattern: str) -> None:
        self.pattern = pattern
        self._search: Any = None  # compiled when first needed: most patterns only match
        try:
            # A one-pattern set matched with both ends anchored: a yes/no answer with no
            # captures to build, the cheapest call the binding offers (matchers run for
            # every event); the same as matching `^(?:pattern)$`.
            self._anchored = re2.Set.FullMatchSet(_OPTIONS)
            self._anchored.Add(_utf8(pattern))
            self._anchored.Compile()
        except re2.error as e:
            self._searcher()  # raises with RE2's own words ("missing ]"), where a set has none
            raise RegexError(_message(e)) from None

    def _searcher(self) -> Any:
        """The pattern compiled for searching (`replace`), on first use."""
        if self._search is None:
            try:
                self._search = re2.compile(_utf8(self.pattern), _OPTIONS)
            except re2.error as e:
                raise RegexError(_message(e)) from None
        return self._search

    @property
    def program_size(self) -> int:
        """The size of its compiled program, in instructions: what a search costs per byte."""
        search = self._searcher()
        return max(search.programsize, search.reverseprogramsize)  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"Regex({self.pattern!r})"

    def fullmatch(self, text: str) -> bool:
        """Whether the pattern matches all of `text` (Alertmanager's anchoring)."""
        return self._anchored.Match(_utf8(text)) is not None

    def replace(
        self,
        text: str,
        replacement: str,
        count: int = 0,
        *,
        max_length: int,
        steps: Callable[[int], None] | None = None,
    ) -> str:
        """`text` with the matches (the first `count` if > 0) replaced; raises
        RegexLimitError, before building it, for an output over `max_length` bytes of
        UTF-8 (so at most that many characters), and RegexError for a bad `\\1`.
        `steps` is told the worst-case cost (bytes x program size) before matching."""
        data, template = _utf8(text), _utf8(replacement)
        if steps is not None:
            steps(len(data) * self.program_size)
        literal = b"\\" not in template
        pieces: list[bytes] = []
        size = 0
        end = 0
        done = 0
        try:
            for found in self._searcher().finditer(data):
                start, stop = found.span()
                expanded = template if literal else found.expand(template)
                size += (start - end) + len(expanded)
                if size > max_length:
                    raise RegexLimitError(
                        f"regex_replace would make more than {max_length} characters"
                    )
                pieces += (data[end:start], expanded)
                end = stop
                done += 1
                if done == count:
                    break
        except (re2.error, IndexError, ValueError) as e:
            if isinstance(e, RegexLimitError):
                raise
            raise RegexError(f"bad replacement {replacement!r}: {e}") from None
        if size + len(data) - end > max_length:
            raise RegexLimitError(f"regex_replace would make more than {max_length} characters")
        pieces.append(data[end:])
        return b"".join(pieces).decode("utf-8", "surrogatepass")


# pattern -> its compiled Regex, for as long as something holds it (the rules in use).
_ALIVE: weakref.WeakValueDictionary[str, Regex] = weakref.WeakValueDictionary()


@functools.lru_cache(maxsize=64)
def compiled(pattern: str) -> Regex:
    """`Regex(pattern)`, cached: for patterns met at run time (a template's
    `regex_replace`); bounded, since each entry may hold up to MAX_PROGRAM_MEMORY."""
    return Regex(pattern)


@functools.lru_cache(maxsize=64)
def for_replace(pattern: str) -> Regex:
    """`compiled(pattern)`, refused (RegexError) if its program is over
    MAX_REPLACE_PROGRAM instructions: the pattern of a `regex_replace`."""
    regex = compiled(pattern)
    if regex.program_size > MAX_REPLACE_PROGRAM:
        raise RegexError(
            f"pattern too large for regex_replace: a program of {regex.program_size}"
            f" instructions, more than the {MAX_REPLACE_PROGRAM} allowed"
            " (large repetition counts such as {1000} make large programs)"
        )
    return regex


# Characters that stand for themselves anywhere outside a class: printable ASCII but RE2's
# operators (`]` and `}` too, though RE2 reads them as literals when alone).
_LITERAL = frozenset(map(chr, range(0x20, 0x7F))) - set("\\.+*?()|[]{}^$")
_QUANTIFIERS = frozenset("*+?{")
_FLAGS_ONLY = re.compile(r"\(\?[A-Za-z-]*\)")  # fixed and linear: Python's re will do


@functools.lru_cache(maxsize=4096)  # generated rules repeat a few patterns on many routes
def literal_cover(pattern: str) -> tuple[frozenset[str], frozenset[str]] | None:
    """`(exact, prefixes)` such that every text `pattern` fully matches is one of `exact`
    or starts with one of `prefixes` (for the routes' index: a text that is neither
    cannot match); None when the pattern gives no such cover (a `.*` alternative, a
    flag such as `(?i)`, a class first, ...). Sound, not complete: a pattern this does not
    understand gets None, never a cover that leaves out a text it matches."""
    alternatives = _top_level_alternatives(pattern)
    if alternatives is None:
        return None
    exact: set[str] = set()
    prefixes: set[str] = set()
    for alternative in alternatives:
        # `^` first and `$` last are no-ops where the whole text must match.
        alternative = alternative.removeprefix("^")
        if alternative.endswith("$") and _escaped_to(alternative, len(alternative) - 1) == 0:
            alternative = alternative[:-1]
        body = _group_body(alternative)
        if body is not None:  # `(a|b)`, `(?:a|b)`: the group's own alternatives
            inner = literal_cover(body)
            if inner is None:
                return None
            exact |= inner[0]
            prefixes |= inner[1]
            continue
        end = 0
        while end < len(alternative) and alternative[end] in _LITERAL:
            end += 1
        if end == len(alternative):
            exact.add(alternative)
            continue
        if alternative[end] in _QUANTIFIERS:
            end -= 1  # `ab*`: the quantifier makes the `b` optional
        if end <= 0:
            return None  # this alternative may start with anything
        prefixes.add(alternative[:end])
    return frozenset(exact), frozenset(prefixes)


def _top_level_alternatives(pattern: str) -> list[str] | None:
    """`pattern` split at its top-level `|`s; None where the split could mislead: a flag
    group outside any group (`(?i)` applies to every later alternative), `\\Q...\\E`
    quoting, or brackets that do not balance."""
    if "\\Q" in pattern:
        return None
    alternatives: list[str] = []
    depth = start = i = 0
    n = len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if c == "[":
            i = _class_end(pattern, i)
            if i < 0:
                return None
            continue
        if c == "(":
            if depth == 0 and _FLAGS_ONLY.match(pattern, i):
                return None
            depth += 1
        elif c == ")":
            depth -= 1
            if depth < 0:
                return None
        elif c == "|" and depth == 0:
            alternatives.append(pattern[start:i])
            start = i + 1
        i += 1
    if depth != 0:
        return None
    alternatives.append(pattern[start:])
    return alternatives


def _escaped_to(text: str, end: int) -> int:
    """How many backslashes run up to `end`, modulo 2 (1: the character at `end` is
    escaped)."""
    count = 0
    while end - count - 1 >= 0 and text[end - count - 1] == "\\":
        count += 1
    return count % 2


_GROUP_OPENING = re.compile(r"\((?:\?:|\?P?<\w+>)?")  # `(`, `(?:`, `(?P<name>`, `(?<name>`


def _group_body(alternative: str) -> str | None:
    """What is inside `alternative` when it is one group, a plain or named one (not a
    flag group such as `(?i:...)`), and nothing else; else None."""
    opening = _GROUP_OPENING.match(alternative)
    if opening is None or alternative[opening.end() : opening.end() + 1] == "?":
        return None
    depth, i = 0, 0
    while i < len(alternative):
        c = alternative[i]
        if c == "\\":
            i += 2
            continue
        if c == "[":
            i = _class_end(alternative, i)
            if i < 0:
                return None
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return alternative[opening.end() : i] if i == len(alternative) - 1 else None
        i += 1
    return None


def _class_end(pattern: str, i: int) -> int:
    """The index just after the character class that opens at `i`, or -1."""
    i += 1
    if pattern[i : i + 1] == "^":
        i += 1
    if pattern[i : i + 1] == "]":
        i += 1  # a `]` first is a literal
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
        elif pattern.startswith("[:", i):
            close = pattern.find(":]", i + 2)
            i = i + 1 if close < 0 else close + 2
        elif c == "]":
            return i + 1
        else:
            i += 1
    return -1


def _message(error: Exception) -> str:
    detail = error.args[0] if error.args else error
    if isinstance(detail, bytes):
        detail = detail.decode("utf-8", "replace")
    return f"{detail} (regexes are RE2, Go's syntax)"
