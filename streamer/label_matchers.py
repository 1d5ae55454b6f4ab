"""Alertmanager's matcher language, for routes that test an alert's labels.

Invariant: a text is read exactly as Alertmanager's UTF-8 matchers parser reads it, or
refused with the column and the reason; what is read becomes ordinary `Matcher`s on
`alert.labels.<name>`, so the walk, `explain` and the routes' index treat them like any
other matcher (a missing label reads as "", regexes are RE2 and anchored at both ends).

The language (`matchers:` in Alertmanager's routes, `amtool` and silences):

- a list of `name OP value`, comma-separated, optionally in braces, with an optional
  trailing comma: `alertname="Foo"`, `{env=~"prod|staging", team!=""}`; `{}` and "" hold
  no matcher; OP is one of = != =~ !~;
- names and values are unquoted runs of any characters but whitespace and
  ``{ } ! = ~ , \\ " ' ` `` (`foo🙂`, `name-with-dashes`), or double-quoted strings with
  Go's escapes (`\\"`, `\\\\`, `\\n`, `\\t`, `\\xf0`, `\\u00e9`, `\\U0001f642`, octal
  `\\101`), so a label name may hold dots or any UTF-8 (`"service.name"`) and a value may
  hold quotes, commas and newlines; the unquoted text must be valid UTF-8.

The older `match:` (label = value) and `match_re:` (label =~ regex) maps need no parsing:
`label_matcher` builds their matchers one by one.

This is Alertmanager's UTF-8 parser, the one its `utf8-strict` mode uses; its default
(fallback) mode and its classic mode also use the classic parser
(`streamer.classic_matchers`), as `streamer.matcher_modes` decides.
"""

from __future__ import annotations

from dataclasses import dataclass

from streamer.errors import StreamerError
from streamer.matchers import Matcher, Operator
from streamer.regexes import Regex, RegexError

__all__ = ["LABELS_PATH", "label_matcher", "parse_label_matchers", "quote"]

LABELS_PATH = ("alert", "labels")  # what Alertmanager's matchers test: the alert's labels
_RESERVED = set("{}!=~,\\\"'`")
_ESCAPES = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 92, '"': 34}
_CLASSIC_NAME_START = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_CLASSIC_NAME = _CLASSIC_NAME_START | set("0123456789")


class MatcherSyntaxError(StreamerError, ValueError):
    """The text is not in Alertmanager's matcher language; the message says where."""


@dataclass(frozen=True)
class _Token:
    kind: str  # "{", "}", ",", "op", "quoted", "unquoted"
    text: str
    column: int  # 1-based, in characters

    def value(self, source: str) -> str:
        return _unquote(self.text, self.column, source) if self.kind == "quoted" else self.text


def _reserved(c: str) -> bool:
    return c.isspace() or c in _RESERVED


def _tokens(source: str) -> list[_Token]:
    out: list[_Token] = []
    i, n = 0, len(source)
    while i < n:
        c = source[i]
        if c.isspace():
            i += 1
        elif c in "{},":
            out.append(_Token(c, c, i + 1))
            i += 1
        elif c in "=!":
            two = source[i : i + 2]
            if two in ("!=", "!~", "=~"):
                out.append(_Token("op", two, i + 1))
                i += 2
            elif c == "=":
                out.append(_Token("op", "=", i + 1))
                i += 1
            else:
                raise _error(source, i + 1, "'!' must be followed by = or ~")
        elif c == '"':
            j, escaped = i + 1, False
            while j < n and (escaped or source[j] != '"'):
                escaped = not escaped and source[j] == "\\"
                j += 1
            if j >= n:
                raise _error(source, i + 1, "a quoted string has no closing quote")
            out.append(_Token("quoted", source[i : j + 1], i + 1))
            i = j + 1
        elif not _reserved(c):
            j = i
            while j < n and not _reserved(source[j]):
                j += 1
            out.append(_Token("unquoted", source[i:j], i + 1))
            i = j
        else:
            raise _error(
                source, i + 1, f"{c!r} is not allowed here (quote names and values holding it)"
            )
    return out


def _error(source: str, column: int, reason: str) -> MatcherSyntaxError:
    return MatcherSyntaxError(f"matchers {source!r}, column {column}: {reason}")


def _unquote(text: str, column: int, source: str) -> str:
    """A double-quoted string with Go's escapes; its bytes must be valid UTF-8."""
    body, out, i = text[1:-1], bytearray(), 0
    while i < len(body):
        c = body[i]
        if c == "\n":
            raise _error(source, column, "a quoted string cannot hold a line break (write \\n)")
        if c != "\\":
            out += c.encode("utf-8", "surrogatepass")
            i += 1
            continue
        kind = body[i + 1 : i + 2]
        if kind in _ESCAPES:
            out.append(_ESCAPES[kind])
            i += 2
        elif kind in ("x", "u", "U") or (kind in "01234567" and kind):
            width = {"x": 2, "u": 4, "U": 8}.get(kind, 3)
            start = i + (1 if kind not in ("x", "u", "U") else 2)
            digits = body[start : start + width]
            base = 8 if kind not in ("x", "u", "U") else 16
            try:
                number = int(digits, base) if len(digits) == width else -1
            except ValueError:
                number = -1
            if number < 0 or (kind in "01234567" and number > 255):
                raise _error(source, column, f"invalid escape \\{kind}{digits} in {text}")
            if kind in ("u", "U"):
                if number > 0x10FFFF or 0xD800 <= number <= 0xDFFF:
                    raise _error(source, column, f"\\{kind}{digits} is not a Unicode character")
                out += chr(number).encode("utf-8")
            else:
                out.append(number)
            i = start + width
        else:
            raise _error(source, column, f"invalid escape \\{kind} in {text} (write \\\\{kind})")
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        raise _error(source, column, f"{text} is not valid UTF-8") from None


def parse_label_matchers(source: str) -> list[Matcher]:
    """Every matcher in `source` (none for "" or "{}"); raises MatcherSyntaxError, or
    RegexError (a ValueError too) for a regex RE2 refuses."""
    tokens = _tokens(source)
    end = len(source) + 1
    at = 0

    def peek() -> _Token | None:
        return tokens[at] if at < len(tokens) else None

    braced = bool(tokens) and tokens[0].kind == "{"
    if braced:
        at = 1
    found: list[Matcher] = []
    while True:
        token = peek()
        if token is None or token.kind == "}":
            break
        if token.kind not in ("quoted", "unquoted"):
            raise _error(source, token.column, f"expected a label name, found {token.text!r}")
        name = token.value(source)
        op = tokens[at + 1] if at + 1 < len(tokens) else None
        if op is None or op.kind != "op":
            where = op.column if op else end
            raise _error(source, where, "expected an operator: = != =~ !~")
        value_token = tokens[at + 2] if at + 2 < len(tokens) else None
        if value_token is None or value_token.kind not in ("quoted", "unquoted"):
            where = value_token.column if value_token else end
            raise _error(source, where, 'expected a label value ("" for the empty value)')
        found.append(label_matcher(name, op.text, value_token.value(source)))  # type: ignore[arg-type]
        at += 3
        after = peek()
        if after is None or after.kind == "}":
            break
        if after.kind != ",":
            raise _error(source, after.column, f"expected a comma or }}, found {after.text!r}")
        at += 1
    closing = peek()
    if braced:
        if closing is None or closing.kind != "}":
            raise _error(source, closing.column if closing else end, "expected a closing }")
        at += 1
    elif closing is not None:
        raise _error(source, closing.column, "a closing } without an opening {")
    if at < len(tokens):
        raise _error(source, tokens[at].column, "expected the end of the matchers")
    return found


def label_matcher(name: str, op: Operator, value: str) -> Matcher:
    """`alert.labels[name] OP value`; raises ValueError for an empty name or a bad regex."""
    if not name:
        raise MatcherSyntaxError("a label name cannot be empty")
    regex = None
    if op in ("=~", "!~"):
        try:
            regex = Regex(value)
        except RegexError as e:
            raise RegexError(f"{quote(name, name=True)}{op}{quote(value)}: {e}") from None
    text = f"{quote(name, name=True)}{op}{quote(value)}"
    return Matcher((*LABELS_PATH, name), op, value, text, regex)


def quote(text: str, *, name: bool = False) -> str:
    """`text` as Alertmanager writes it: label names bare when they are classic
    (`[a-zA-Z_][a-zA-Z0-9_]*`), everything else double-quoted with Go's escapes."""
    if name and text[:1] in _CLASSIC_NAME_START and set(text) <= _CLASSIC_NAME:
        return text
    escaped = []
    for c in text:
        if c in ('"', "\\"):
            escaped.append("\\" + c)
        elif c == "\n":
            escaped.append("\\n")
        elif c == "\t":
            escaped.append("\\t")
        elif c == "\r":
            escaped.append("\\r")
        elif not c.isprintable():
            escaped.append(f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}")
        else:
            escaped.append(c)
    return '"' + "".join(escaped) + '"'
