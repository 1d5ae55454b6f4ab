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
from collections.abc import Callable

import re2  # type: ignore[import-untyped]  # the binding ships no type hints

__all__ = [
    "MAX_PROGRAM_MEMORY",
    "MAX_REPLACE_PROGRAM",
    "Regex",
    "RegexError",
    "RegexLimitError",
    "compiled",
    "for_replace",
]

MAX_PROGRAM_MEMORY = 2 << 20  # bytes per compiled pattern; RE2 refuses larger programs
# Instructions in a `regex_replace` pattern's program: `\pL+` is ~1200, `(.*){1000}`
# 10 000 (seconds per 100 000 characters).
MAX_REPLACE_PROGRAM = 2_000


class RegexError(ValueError):
    """The pattern is not a valid RE2 (Go) regular expression; the message says why."""


class RegexLimitError(ValueError):
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
    """One compiled pattern; raises RegexError if RE2 refuses it."""

    __slots__ = ("_anchored", "_search", "pattern", "program_size")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        try:
            self._search = re2.compile(_utf8(pattern), _OPTIONS)
            # A one-pattern set matched with both ends anchored: a yes/no answer with no
            # captures to build, the cheapest call the binding offers (matchers run for
            # every event); the same as matching `^(?:pattern)$`.
            self._anchored = re2.Set.FullMatchSet(_OPTIONS)
            self._anchored.Add(_utf8(pattern))
            self._anchored.Compile()
        except re2.error as e:
            raise RegexError(_message(e)) from None
        self.program_size: int = max(self._search.programsize, self._search.reverseprogramsize)

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
            for found in self._search.finditer(data):
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


def _message(error: Exception) -> str:
    detail = error.args[0] if error.args else error
    if isinstance(detail, bytes):
        detail = detail.decode("utf-8", "replace")
    return f"{detail} (regexes are RE2, Go's syntax)"
