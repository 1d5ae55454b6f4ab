"""Budgets for one template render: limits, and the text operations that keep them.

Invariant: no operation done for a template makes a string over MAX_TEXT characters,
and one render (`bounded`) does at most MAX_WORK characters/items of work,
MAX_ITERATIONS loop iterations and MAX_CALLS calls, nested at most MAX_CALL_DEPTH deep;
past a limit, `TemplateLimitError` (a Jinja SecurityError, so a TemplateError) is
raised *before* the oversized thing is made. A render that overflows Python's stack
anyway fails with a TemplateLimitError too.

Mechanism: sizes are computed before allocating (`str_method_size`, `percent_format`'s
parse of its directives, `BoundedFormatter`'s widths); containers are turned into text
by `as_text`, which writes `str(value)` piece by piece and stops at the limit, since
`[[x] * 1000] * 1000` is small as a value and huge as text. The budget of the render
under way is a context variable, so the sandbox's hooks (streamer/sandbox.py) find it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from typing import Any, TypeVar

from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedFormatter

from streamer.errors import StreamerError

__all__ = [
    "LOOKUP_WORK",
    "MAX_CALLS",
    "MAX_CALL_DEPTH",
    "MAX_INT_BITS",
    "MAX_ITERATIONS",
    "MAX_TEXT",
    "MAX_WORK",
    "REGEX_STEPS_PER_WORK",
    "BoundedFormatter",
    "TemplateLimitError",
    "as_text",
    "bounded",
    "budget",
    "join_text",
    "percent_format",
]

MAX_TEXT = 100_000  # characters in any string a template makes, and in a render's output
MAX_ITERATIONS = 10_000  # loop iterations per render
MAX_WORK = 1_000_000  # characters made and items walked per render
MAX_CALLS = 10_000  # calls (macros, methods, `loop(...)`) per render
MAX_CALL_DEPTH = 50  # calls nested inside calls (a macro calling itself)
# `regex_replace` costs at worst (bytes of text x instructions of the pattern's program)
# steps of RE2, about 3 ns each: this many of them are one unit of work.
REGEX_STEPS_PER_WORK = 50
# A sandboxed attribute or item look-up (`a.b`, `a['b']`, each part of a filter's
# `attribute='a.b'` for each item) costs ~2 us, a thousand times a character made.
LOOKUP_WORK = 20
MAX_INT_BITS = 65_536
MAX_EXPONENT = 64
_T = TypeVar("_T")


class TemplateLimitError(StreamerError, SecurityError):
    """The template would go over a budget; the message says which."""


class _Budget:
    __slots__ = ("calls", "depth", "iterations", "work")

    def __init__(self) -> None:
        self.iterations = 0
        self.work = 0
        self.calls = 0
        self.depth = 0

    def spend(self, amount: int) -> None:
        self.work += amount
        if self.work > MAX_WORK:
            raise TemplateLimitError(
                f"the template does more than {MAX_WORK} characters/items of work"
            )


_CURRENT: ContextVar[_Budget | None] = ContextVar("template_budget", default=None)


def budget() -> _Budget:
    # Outside `bounded` (Jinja folding constants at load) each operation gets a fresh
    # budget: the per-operation limits still hold.
    return _CURRENT.get() or _Budget()


def bounded(run: Callable[[], _T]) -> _T:
    """`run()` (one render or one expression) under a fresh budget."""
    token = _CURRENT.set(_Budget())
    try:
        return run()
    except RecursionError:  # the stack is unwound by now: safe to go on
        raise TemplateLimitError("the template nests calls or values too deeply") from None
    finally:
        _CURRENT.reset(token)


def too_long(what: str, size: int) -> TemplateLimitError:
    return TemplateLimitError(
        f"{what} would make {size} characters, more than the {MAX_TEXT} allowed"
    )


def checked_text(text: str, what: str) -> str:
    if len(text) > MAX_TEXT:
        raise too_long(what, len(text))
    return text


# -- containers as text ----------------------------------------------------------------

_VIEWS: tuple[type, ...] = (type({}.keys()), type({}.values()), type({}.items()))
CONTAINERS = (list, tuple, dict, set, frozenset, *_VIEWS)


LEAVES = frozenset({str, int, float, bool, type(None)})


def _write(value: Any, parts: list[str], size: int) -> int:
    """Appends `repr(value)` to `parts` piece by piece; returns the size so far, raising
    once it passes MAX_TEXT (checked per item, so an item is never much over)."""
    kind = type(value)
    if kind is dict:
        opening, closing, items = "{", "}", None
    elif kind is list:
        opening, closing, items = "[", "]", value
    elif kind is tuple:
        opening, closing, items = "(", ",)" if len(value) == 1 else ")", value
    elif kind is set or kind is frozenset:
        name = kind.__name__
        if not value:
            opening, closing, items = f"{name}()", "", ()
        else:
            opening, closing = ("{", "}") if kind is set else (f"{name}({{", "})")
            items = value
    elif kind in _VIEWS:
        opening, closing, items = f"{kind.__name__}([", "])", value
    else:
        text = repr(value)
        parts.append(text)
        size += len(text)
        if size > MAX_TEXT:
            raise too_long("turning a value into text", size)
        return size
    parts.append(opening)
    size += len(opening) + len(closing)
    first = True
    append = parts.append
    if items is None:  # a dict
        for k, v in value.items():
            if not first:
                append(", ")
            first = False
            size = _write(k, parts, size + 4)
            append(": ")
            size = _write(v, parts, size)
    else:
        for item in items:
            if not first:
                append(", ")
            first = False
            if type(item) in LEAVES:
                text = repr(item)
                append(text)
                size += len(text) + 2
                if size > MAX_TEXT:
                    raise too_long("turning a value into text", size)
            else:
                size = _write(item, parts, size + 2)
    parts.append(closing)
    return size


def as_text(value: Any) -> str:
    """`str(value)`, refused beyond MAX_TEXT characters before it is built."""
    if isinstance(value, str):
        return checked_text(value, "a value")
    if isinstance(value, CONTAINERS):
        parts: list[str] = []
        _write(value, parts, 0)
        text = "".join(parts)
    else:
        text = checked_text(str(value), "turning a value into text")
    budget().spend(len(text))
    return text


def join_text(separator: str, values: Iterable[Any], *, strict: bool) -> str:
    """`separator.join(...)` of the values as text (`strict`: they must be str, as for
    `str.join`), refused as soon as the result would pass MAX_TEXT."""
    parts: list[str] = []
    size = -len(separator)
    for i, value in enumerate(values):
        kind = type(value)
        if kind is str:
            text = value
        elif strict:
            raise TypeError(f"sequence item {i}: expected str instance, {kind.__name__} found")
        elif kind in LEAVES:
            text = str(value)
        else:
            text = as_text(value)
        size += len(text) + len(separator)
        if size > MAX_TEXT:
            raise too_long("join", size)
        parts.append(text)
    budget().spend(max(size, 0))
    return separator.join(parts)


# -- formatting -------------------------------------------------------------------------

_DIGITS = re.compile(r"\d+")


def _number(digits: str, what: str) -> int:
    if len(digits) > 6 or int(digits) > MAX_TEXT:
        raise TemplateLimitError(f"{what} {digits[:12]} is larger than {MAX_TEXT}")
    return int(digits)


def _percent_specs(fmt: str) -> Iterator[tuple[str | None, int, int, str]]:
    """(key, width, precision, conversion) of each `%` directive, parsed as CPython does."""
    i, n = fmt.find("%"), len(fmt)
    while i != -1:
        j, key = i + 1, None
        if j < n and fmt[j] == "(":
            depth, start = 1, j + 1
            while j + 1 < n and depth:
                j += 1
                depth += {"(": 1, ")": -1}.get(fmt[j], 0)
            key, j = fmt[start:j], j + 1
        while j < n and fmt[j] in "-+ #0":
            j += 1
        numbers = []
        for prefix in ("", "."):
            if prefix and not (j < n and fmt[j] == "."):
                numbers.append(0)
                continue
            j += len(prefix)
            if j < n and fmt[j] == "*":
                raise TemplateLimitError("a `*` width or precision in % formatting is not allowed")
            start = j
            while j < n and "0" <= fmt[j] <= "9":
                j += 1
            numbers.append(_number(fmt[start:j], "a % width or precision") if j > start else 0)
        while j < n and fmt[j] in "hlL":
            j += 1
        conversion = fmt[j] if j < n else ""
        yield key, numbers[0], numbers[1], conversion
        i = fmt.find("%", j + 1)


def _size_as_text(value: Any, conversion: str) -> int:
    if isinstance(value, str):
        size = len(value)
    elif isinstance(value, bool) or value is None:
        size = 5
    elif isinstance(value, int):
        size = value.bit_length() // 3 + 2
    elif isinstance(value, float):
        size = 330  # %f of 1e308
    else:
        size = len(as_text(value))
    return size * 10 if conversion in ("r", "a") else size  # repr may escape each char


def percent_format(fmt: str, args: Any) -> str:
    """`fmt % args`, refused before formatting if the result could pass MAX_TEXT."""
    positional = args if isinstance(args, tuple) else (args,)
    mapping = args if isinstance(args, Mapping) else None
    estimate, position = len(fmt), 0
    for key, width, precision, conversion in _percent_specs(fmt):
        if conversion == "%":
            continue
        if key is not None and mapping is not None:
            value = mapping.get(key)
        else:
            value = positional[position] if position < len(positional) else None
            position += 1
        estimate += max(width, _size_as_text(value, conversion) + precision)
        if estimate > MAX_TEXT:
            raise too_long("% formatting", estimate)
    return checked_text(fmt % args, "% formatting")


class BoundedFormatter(SandboxedFormatter):
    """`str.format` in the sandbox, refusing widths and precisions over MAX_TEXT and a
    result over MAX_TEXT (counted field by field, before the next one is made)."""

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        self.size = 0

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        if conversion is not None and isinstance(value, CONTAINERS):
            as_text(value)  # repr/ascii of a container: weigh it first
        return super().convert_field(value, conversion)

    def format_field(self, value: Any, format_spec: str) -> Any:
        for digits in _DIGITS.findall(format_spec):
            _number(digits, "a format width or precision")
        if format_spec == "" and isinstance(value, CONTAINERS):
            value = as_text(value)
        text = super().format_field(value, format_spec)
        self.size += len(text)
        if self.size > MAX_TEXT:
            raise too_long("str.format", self.size)
        return text


# -- the environment ------------------------------------------------------------------


def width_of(args: tuple[Any, ...], kwargs: Mapping[str, Any], index: int, name: str) -> int:
    value = args[index] if len(args) > index else kwargs.get(name, 0)
    if isinstance(value, str):
        return len(value)
    return value if isinstance(value, int) else 0


def replace_size(text: str, old: Any, new: Any, count: Any) -> int:
    if not isinstance(old, str) or not isinstance(new, str):
        return len(text)
    found = text.count(old) if old else len(text) + 1
    if isinstance(count, int) and count >= 0:
        found = min(found, count)
    return len(text) + found * (len(new) - len(old))


def str_method_size(text: str, name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> int:
    """The most characters `text.name(*args, **kwargs)` can make, for those that grow."""
    if name in ("ljust", "rjust", "center", "zfill"):
        return max(len(text), width_of(args, kwargs, 0, "width"))
    if name == "expandtabs":
        tab = args[0] if args else kwargs.get("tabsize", 8)
        return len(text) + text.count("\t") * max(tab if isinstance(tab, int) else 8, 0)
    if name == "replace":
        count = args[2] if len(args) > 2 else kwargs.get("count", -1)
        old, new = (*args[:2], None, None)[:2]
        return replace_size(text, old, new, count)
    if name == "translate" and args and isinstance(args[0], Mapping):
        longest = max((len(v) for v in args[0].values() if isinstance(v, str)), default=1)
        return len(text) * max(longest, 1)
    return len(text)
