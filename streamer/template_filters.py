"""Jinja2's filters and tests under the template budget (streamer/template_budget.py).

Filters that can amplify (`join`, `format`, `center`, `indent`, `replace`, `batch`,
`slice`, `tojson`, `regex_replace`, ...) are replaced by bounded versions or checked
before they run; every other filter pays for what it walks and makes; every test pays
for the containers it compares (`select('in', items)`). Constant-time filters
(`default`, `length`, ...) are left as they are.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from typing import Any

from jinja2 import Undefined
from jinja2.exceptions import SecurityError
from jinja2.filters import make_attrgetter
from jinja2.utils import pass_environment

from streamer.regexes import RegexError, RegexLimitError, for_replace
from streamer.template_budget import (
    CONTAINERS,
    MAX_TEXT,
    REGEX_STEPS_PER_WORK,
    TemplateLimitError,
    as_text,
    budget,
    checked_text,
    join_text,
    percent_format,
    replace_size,
    too_long,
    width_of,
)

__all__ = ["bounded_filters", "bounded_tests"]

_WEIGHED = frozenset({str, *CONTAINERS})


# Filters that look at a value's items, not at its text, or that bound their own text:
# their containers are not weighed as text first (they pay for their length instead).
_STRUCTURAL = frozenset(
    (
        *("abs", "attr", "batch", "count", "d", "default", "dictsort", "first", "float"),
        *("format", "groupby", "int", "items", "join", "last", "length", "list", "map"),
        *("max", "min", "random", "regex_replace", "reject", "rejectattr", "reverse"),
        *("round", "select", "selectattr", "slice", "sort", "sum", "tojson", "unique"),
    )
)


def _pre_check(name: str, value: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    if name == "center" and width_of(args, kwargs, 0, "width") > MAX_TEXT:
        raise too_long("center", width_of(args, kwargs, 0, "width"))
    if name == "indent" and isinstance(value, str):
        size = len(value) + (value.count("\n") + 1) * width_of(args, kwargs, 0, "width")
        if size > MAX_TEXT:
            raise too_long("indent", size)
    if name == "replace" and isinstance(value, str) and len(args) >= 2:
        count = args[2] if len(args) > 2 else kwargs.get("count")
        size = replace_size(value, args[0], args[1], -1 if count is None else count)
        if size > MAX_TEXT:
            raise too_long("replace", size)
    if name == "wordwrap" and isinstance(value, str):
        wrap = args[2] if len(args) > 2 else kwargs.get("wrapstring") or "\n"
        size = len(value) + (len(value) + 1) * len(wrap) if isinstance(wrap, str) else 0
        if len(value) > 1 and size > MAX_TEXT:
            raise too_long("wordwrap", size)
    if name in ("batch", "slice"):
        count = args[0] if args else kwargs.get("linecount", kwargs.get("slices", 0))
        if isinstance(count, int) and count > MAX_TEXT:
            raise TemplateLimitError(f"{name} into more than {MAX_TEXT} parts")
    if name == "sum":
        start = args[1] if len(args) > 1 else kwargs.get("start", 0)
        if not isinstance(start, int | float):
            raise TemplateLimitError("sum adds numbers (its start must be a number)")


def _counted(items: Iterator[Any]) -> Iterator[Any]:
    spent = budget()
    for item in items:
        spent.spend(1)
        yield item


# Filters that take constant time and make nothing new: left unwrapped, they are among
# the most used (`default`, `length`) and cost nothing to bound.
_CONSTANT = frozenset({"abs", "attr", "count", "d", "default", "first", "length", "round"})
_PRE_CHECKED = frozenset({"center", "indent", "replace", "wordwrap", "batch", "slice", "sum"})


def _bounded_filter(name: str, filter_: Callable[..., Any]) -> Callable[..., Any]:
    passes = 1 if getattr(filter_, "jinja_pass_arg", None) is not None else 0
    weighs_text = name not in _STRUCTURAL
    pre_checked = name in _PRE_CHECKED

    @functools.wraps(filter_)
    def bounded_filter(*args: Any, **kwargs: Any) -> Any:
        spent = 0
        if len(args) > passes:
            value = args[passes]
            kind = type(value)
            if kind is str:
                spent = len(value)
            elif kind in CONTAINERS:
                if weighs_text:
                    as_text(value)
                spent = len(value)
            elif isinstance(value, Iterator):
                args = (*args[:passes], _counted(value), *args[passes + 1 :])
            elif isinstance(value, Sized) and not isinstance(value, Undefined):
                spent = len(value)
            if pre_checked:
                _pre_check(name, value, args[passes + 1 :], kwargs)
        result = filter_(*args, **kwargs)
        kind = type(result)
        if kind is str:
            checked_text(result, name)
            spent += len(result)
        elif kind in CONTAINERS:
            spent += len(result)
        if spent:
            budget().spend(spent)
        return result

    return bounded_filter


def _regex_steps(steps: int) -> None:
    budget().spend(steps // REGEX_STEPS_PER_WORK)


def _regex_replace(value: object, pattern: str, replacement: str, count: int = 0) -> str:
    try:
        regex = for_replace(pattern)
        text = as_text(value)
        return regex.replace(text, replacement, count, max_length=MAX_TEXT, steps=_regex_steps)
    except RegexLimitError as e:
        raise TemplateLimitError(str(e)) from None
    except RegexError as e:
        raise SecurityError(f"regex_replace: {e}") from None


def _tojson(value: object) -> str:
    # Jinja's own tojson escapes for HTML; alert text is not HTML. Encoded piece by
    # piece, so a value that is small but huge as JSON is refused before it is built.
    parts, size = [], 0
    for part in json.JSONEncoder(default=str, sort_keys=True).iterencode(value):
        size += len(part)
        if size > MAX_TEXT:
            raise too_long("tojson", size)
        parts.append(part)
    budget().spend(size)
    return "".join(parts)


@pass_environment
def _join_filter(env: Any, value: Iterable[Any], d: str = "", attribute: Any = None) -> str:
    if attribute is not None:
        value = map(make_attrgetter(env, attribute), value)
    return join_text(as_text(d), value, strict=False)


def _format_filter(value: object, *args: Any, **kwargs: Any) -> str:
    if args and kwargs:
        raise SecurityError("format takes positional or keyword arguments, not both")
    return percent_format(as_text(value), kwargs or args)


def _bounded_test(test: Any) -> Callable[..., Any]:
    @functools.wraps(test)
    def bounded_test(*args: Any, **kwargs: Any) -> Any:
        size = sum(len(v) for v in (*args, *kwargs.values()) if type(v) in _WEIGHED)
        if size:
            budget().spend(size)  # `select('in', items)` compares each item with all
        return test(*args, **kwargs)

    return bounded_test


def bounded_filters(filters: Mapping[str, Any]) -> dict[str, Any]:
    """Jinja's filters with streamer's bounded ones in place, each paying its way."""
    replaced = {
        **filters,
        "regex_replace": _regex_replace,
        "tojson": _tojson,
        "join": _join_filter,
        "format": _format_filter,
    }
    return {
        name: f if name in _CONSTANT else _bounded_filter(name, f) for name, f in replaced.items()
    }


def bounded_tests(tests: Mapping[str, Any]) -> dict[str, Any]:
    return {name: _bounded_test(t) for name, t in tests.items()}
