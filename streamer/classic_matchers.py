"""Alertmanager's classic matcher parser (0.26 and older; its `classic-mode` and fallback).

Invariant: a text is read as Alertmanager's `pkg/labels` parser reads it, or refused with the
reason; the result is ordinary label `Matcher`s, as from the UTF-8 parser
(`streamer.label_matchers`). Reading is linear in the text's length (no backtracking regex).

The classic language, which is tolerant where the UTF-8 one is strict:

- one optional `{` at the very start and one optional `}` at the very end are removed; the
  rest is split at commas outside double quotes (a `\\"` does not open or close a quote);
  a trailing comma (and blanks) is dropped, but an empty matcher elsewhere (`a=b,,c=d`) is
  refused;
- each matcher is `name OP value` with blanks (space, tab, line breaks) around the parts;
  the name is a classic label name (`[a-zA-Z_:][a-zA-Z0-9_:]*`), OP is = != =~ !~ (`=~`
  before `=`, so `a=~~~` is `a =~ "~~"`);
- the value is everything after OP, blanks trimmed, and may be empty (`foo=` is
  `foo=""`); it may be double-quoted as a whole; inside it only `\\n`, `\\"` and `\\\\` are
  escapes, any other backslash is a literal backslash (`"5\\d\\d"` is the regex `5\\d\\d`);
  an unescaped `"` anywhere but at both ends is refused.
"""

from __future__ import annotations

import re

from streamer.label_matchers import MatcherSyntaxError, label_matcher
from streamer.matchers import Matcher, Operator

__all__ = ["parse_classic_matchers"]

# Go's regexp `\s` (ASCII blanks): what the classic parser trims around each part.
_BLANKS = " \t\n\f\r"
# The classic parser's shape, without its lazy `(.*?)\s*$` (quadratic in Python's engine on
# a long run of blanks): trailing blanks are trimmed first, which reads the same.
_SHAPE = re.compile(r"[ \t\n\f\r]*([a-zA-Z_:][a-zA-Z0-9_:]*)[ \t\n\f\r]*(=~|=|!=|!~)(.*)", re.S)
# Go's unicode.IsSpace, which strings.TrimSpace uses (the trailing-comma rule).
_GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B)))
_GO_SPACE += "\u2028\u2029\u202f\u205f\u3000"


def parse_classic_matchers(source: str) -> list[Matcher]:
    """Every matcher in `source` as the classic parser reads it; raises MatcherSyntaxError,
    or RegexError (a ValueError too) for a regex RE2 refuses."""
    text = source.removeprefix("{").removesuffix("}")
    parts: list[str] = []
    part: list[str] = []
    inside_quotes = escaped = False
    for c in text:
        if c == "," and not inside_quotes:
            parts.append("".join(part))
            part = []
            continue
        if c == '"':
            if escaped:
                escaped = False
            else:
                inside_quotes = not inside_quotes
        elif c == "\\":
            escaped = not escaped
        elif c != ",":  # a comma inside quotes leaves a pending escape as it was
            escaped = False
        part.append(c)
    last = "".join(part).strip(_GO_SPACE)
    if last:
        parts.append(last)
    return [_one(p, source) for p in parts]


def _one(text: str, source: str) -> Matcher:
    shape = _SHAPE.fullmatch(text.rstrip(_BLANKS))
    if shape is None:
        raise MatcherSyntaxError(
            f"matchers {source!r}: bad matcher format: {text!r} (classic parser: a label name "
            "of letters, digits, _ and :, then = != =~ or !~, then the value)"
        )
    name, op, raw = shape.group(1), shape.group(2), shape.group(3).lstrip(_BLANKS)
    value = _unescape(raw, source)
    return label_matcher(name, _operator(op), value)


def _operator(op: str) -> Operator:
    if op == "=":
        return "="
    if op == "!=":
        return "!="
    return "=~" if op == "=~" else "!~"


def _unescape(raw: str, source: str) -> str:
    quoted = raw.startswith('"')
    body = raw[1:] if quoted else raw
    try:
        body.encode("utf-8")
    except UnicodeEncodeError:
        raise MatcherSyntaxError(f"matchers {source!r}: the value is not valid UTF-8") from None
    out: list[str] = []
    escaped = False
    last = len(body) - 1
    for i, c in enumerate(body):
        if escaped:
            escaped = False
            if c == "n":
                out.append("\n")
            elif c in '"\\':
                out.append(c)
            else:  # not an escape: the backslash is literal
                out.append("\\" + c)
            continue
        if c == "\\":
            if i < last:
                escaped = True
            else:
                out.append("\\")
        elif c == '"':
            if not quoted or i < last:
                raise MatcherSyntaxError(
                    f"matchers {source!r}: the value {raw!r} holds an unescaped double quote"
                )
            quoted = False  # the closing quote
        else:
            out.append(c)
    if quoted:
        raise MatcherSyntaxError(
            f"matchers {source!r}: the value {raw!r} holds an unescaped double quote"
        )
    return "".join(out)
