"""Which of Alertmanager's matcher parsers reads a `matchers:` text: its three modes.

Invariant: in every mode a text means what it means to Alertmanager (0.27 and later) in the
same mode, and a text the two parsers read differently is never read silently:

- `fallback` (the default, as Alertmanager's): a text the classic parser
  (`streamer.classic_matchers`) reads is read as classic, whatever the UTF-8 parser makes of
  it; a text only the UTF-8 parser (`streamer.label_matchers`) reads is read as UTF-8. A
  warning names the text when only the classic parser reads it (with the UTF-8 spelling to
  write instead), and when both read it differently (with both readings):
  `foo="\\xf0\\x9f\\x99\\x82"` is that text of 16 characters to the classic parser, 🙂 to
  the UTF-8 one;
- `utf8-strict` (Alertmanager's `--enable-feature=utf8-strict-mode`): the UTF-8 parser only;
- `classic` (`--enable-feature=classic-mode`, Alertmanager 0.26 and older): the classic
  parser only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from streamer.classic_matchers import parse_classic_matchers
from streamer.label_matchers import parse_label_matchers
from streamer.matchers import Matcher

__all__ = ["DEFAULT_MODE", "MODES", "MatcherMode", "MatchersReading", "read_matchers"]

MatcherMode = Literal["fallback", "utf8-strict", "classic"]
MODES: tuple[MatcherMode, ...] = get_args(MatcherMode)
DEFAULT_MODE: MatcherMode = "fallback"


@dataclass(frozen=True)
class MatchersReading:
    matchers: list[Matcher]
    warning: str | None = None  # fallback mode: the parsers disagree, or only classic reads it


def read_matchers(source: str, mode: MatcherMode = DEFAULT_MODE) -> MatchersReading:
    """The matchers of one `matchers:` text in `mode`; raises ValueError (MatcherSyntaxError,
    RegexError) when the mode's parser(s) refuse it."""
    if mode == "utf8-strict":
        return MatchersReading(parse_label_matchers(source))
    if mode == "classic":
        return MatchersReading(parse_classic_matchers(source))
    try:
        utf8: list[Matcher] | None = parse_label_matchers(source)
        utf8_error = None
    except ValueError as e:
        utf8, utf8_error = None, e
    try:
        classic = parse_classic_matchers(source)
    except ValueError as e:
        if utf8 is not None:
            return MatchersReading(utf8)  # UTF-8 only (a dotted or quoted name, say)
        classic_error = str(e).removeprefix(f"matchers {source!r}: ")
        raise ValueError(
            f"{utf8_error} (Alertmanager's classic parser refuses it too: {classic_error})"
        ) from None
    if utf8 is None:
        return MatchersReading(
            classic,
            f"matchers {source!r} are read by Alertmanager's classic parser only, as "
            f"{_spelled(classic)} (the UTF-8 parser refuses them: {utf8_error}); write "
            f"{_spelled(classic)} to mean the same in every mode",
        )
    if _meaning(utf8) != _meaning(classic):
        return MatchersReading(
            classic,
            f"matchers {source!r} mean {_spelled(classic)} to Alertmanager's classic parser "
            f"but {_spelled(utf8)} to its UTF-8 parser; read as classic, as Alertmanager does "
            "in fallback mode: write the one you mean in the UTF-8 syntax",
        )
    return MatchersReading(utf8)


def _meaning(matchers: list[Matcher]) -> list[tuple[tuple[str, ...], str, str]]:
    return [(m.path, m.op, m.value) for m in matchers]


def _spelled(matchers: list[Matcher]) -> str:
    return "{" + ", ".join(m.text for m in matchers) + "}" if matchers else "{} (no matcher)"
