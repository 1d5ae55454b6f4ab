"""The template sandbox: what a template or `when:` expression may do, and how much.

Invariant: one render (a template field, or a `when:` evaluation) cannot reach Python
(Jinja2's ImmutableSandboxedEnvironment: no underscored attributes, no mutation), and
cannot cost more than the budget of streamer/template_budget.py, whatever the template
or the event: it fails with `TemplateLimitError` (a TemplateError) instead, before
making the oversized thing:

- no string a template makes (an operator, a method, a filter, an output) is longer
  than MAX_TEXT characters, and no render outputs more than MAX_TEXT in all;
- loops run at most MAX_ITERATIONS times per render, all loops together;
- a render's work (characters made, items walked or compared, look-ups x LOOKUP_WORK,
  regex steps / REGEX_STEPS_PER_WORK) is at most MAX_WORK; integers have at most
  MAX_INT_BITS bits;
- a render makes at most MAX_CALLS calls (macros, methods), nested at most
  MAX_CALL_DEPTH deep, so a macro calling itself twice cannot cost 2**n;
- no bytes: `str.encode` and `int.to_bytes` are refused, and so is any operation on
  bytes, so every size check above, written for text, covers all that a render makes.

Mechanism: Jinja2's sandbox hooks, each checking sizes before the allocation: `call`
(str methods: `ljust`, `replace`, `join`, ...), `call_binop` (`*`, `**`, `%`, `+`),
`wrap_str_format` (`str.format`), `finalize` (`{{ }}` output), `concat` (a render's or
a macro's output); bounded replacements or pre-checks of the filters that can amplify
(`join`, `format`, `center`, `indent`, `replace`, `batch`, `slice`, `tojson`, ...);
`getattr`/`getitem` and every test (`in`, `eq`, ... in `select`) pay for what they walk;
and a code generator that routes `~`, every comparison's operands and every `for`
loop's iterable through the budget.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from jinja2 import StrictUndefined, nodes
from jinja2.compiler import CodeGenerator, Frame, operators, optimizeconst
from jinja2.runtime import LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from streamer.template_budget import (
    CONTAINERS,
    LOOKUP_WORK,
    MAX_CALL_DEPTH,
    MAX_CALLS,
    MAX_EXPONENT,
    MAX_INT_BITS,
    MAX_ITERATIONS,
    MAX_TEXT,
    BoundedFormatter,
    TemplateLimitError,
    as_text,
    budget,
    checked_text,
    join_text,
    percent_format,
    str_method_size,
    too_long,
)
from streamer.template_filters import bounded_filters, bounded_tests

__all__ = ["environment"]

_T = TypeVar("_T")
# Values whose comparison (`==`, `in`, ...) walks them: they pay their length.
_WEIGHED = frozenset({str, *CONTAINERS})
_WALKED = (*CONTAINERS, range)  # whose methods (`count`, `index`) may walk every item
# Methods that make bytes, which no size check here measures: refused.
_BYTES_MAKERS = frozenset({"encode", "to_bytes"})


def _no_bytes(what: str) -> TemplateLimitError:
    return TemplateLimitError(f"{what}: bytes are not available in templates (they work on text)")


class _CodeGenerator(CodeGenerator):
    """Jinja's code generator, with `~`, comparisons and loops under the budget."""

    @optimizeconst
    def visit_Compare(self, node: nodes.Compare, frame: Frame) -> None:
        # `a in b` runs as `environment.weighed(a) in environment.weighed(b)`.
        self.write("(environment.weighed(")
        self.visit(node.expr, frame)
        self.write(")")
        for op in node.ops:
            self.visit(op, frame)
        self.write(")")

    def visit_Operand(self, node: nodes.Operand, frame: Frame) -> None:
        self.write(f" {operators[node.op]} environment.weighed(")
        self.visit(node.expr, frame)
        self.write(")")

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.join_text((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        # `for x in items` runs as `for x in environment.iterate(items)`.
        if not _is_counted(node.iter):
            node.iter = nodes.Call(
                nodes.EnvironmentAttribute("iterate"), [node.iter], [], None, None
            ).set_lineno(node.iter.lineno)
        super().visit_For(node, frame)


def _is_counted(node: nodes.Node) -> bool:
    return (
        isinstance(node, nodes.Call)
        and isinstance(node.node, nodes.EnvironmentAttribute)
        and node.node.name == "iterate"
    )


class _AlertSandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"**", "*", "%", "+"})
    code_generator_class = _CodeGenerator

    def iterate(self, iterable: Iterable[_T]) -> Iterator[_T]:
        spent = budget()
        for item in iterable:
            spent.iterations += 1
            if spent.iterations > MAX_ITERATIONS:
                raise TemplateLimitError(f"loops ran more than {MAX_ITERATIONS} times")
            yield item

    def join_text(self, values: tuple[Any, ...]) -> str:
        return join_text("", values, strict=False)

    def weighed(self, value: _T) -> _T:
        if type(value) in _WEIGHED:
            budget().spend(len(value))  # type: ignore[arg-type]
        return value

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if isinstance(left, bytes | bytearray) or isinstance(right, bytes | bytearray):
            raise _no_bytes(operator)
        if operator == "%" and isinstance(left, str):
            return percent_format(left, right)
        ints = [v for v in (left, right) if isinstance(v, int) and not isinstance(v, bool)]
        if operator == "**" and isinstance(right, int) and abs(right) > MAX_EXPONENT:
            raise TemplateLimitError(f"exponent {right} is larger than {MAX_EXPONENT}")
        bits = sum(abs(v).bit_length() for v in ints)
        if operator == "**" and len(ints) == 2 and abs(left).bit_length() * right > MAX_INT_BITS:
            raise TemplateLimitError(f"a power of more than {MAX_INT_BITS} bits")
        if operator == "*" and len(ints) == 2 and bits > MAX_INT_BITS:
            raise TemplateLimitError(f"a product of more than {MAX_INT_BITS} bits")
        sequences = [v for v in (left, right) if isinstance(v, str | list | tuple)]
        if operator == "*" and sequences and ints and ints[0] * len(sequences[0]) > MAX_TEXT:
            raise TemplateLimitError(f"repeating a value to more than {MAX_TEXT} items")
        if operator == "+" and len(sequences) == 2 and len(left) + len(right) > MAX_TEXT:
            raise too_long("+", len(left) + len(right))
        return self._checked(super().call_binop(context, operator, left, right))

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        spent = budget()
        spent.calls += 1
        if spent.calls > MAX_CALLS:
            raise TemplateLimitError(f"the template makes more than {MAX_CALLS} calls")
        if spent.depth >= MAX_CALL_DEPTH:
            raise TemplateLimitError(f"calls nest more than {MAX_CALL_DEPTH} deep")
        spent.spend(len(args) + len(kwargs))
        if type(__obj) is LoopContext and args:  # a recursive loop's `loop(items)`
            args = (__self.iterate(args[0]), *args[1:])
        owner = getattr(__obj, "__self__", None)
        name = getattr(__obj, "__name__", "")
        if isinstance(owner, bytes | bytearray) or (
            name in _BYTES_MAKERS and isinstance(owner, str | int)
        ):
            raise _no_bytes(f"{type(owner).__name__}.{name}")
        if isinstance(owner, str) and not isinstance(__obj, type):
            if name == "join" and len(args) == 1 and not kwargs:
                return join_text(owner, args[0], strict=True)
            size = str_method_size(owner, name, args, kwargs)
            if size > MAX_TEXT:
                raise too_long(f"str.{name}", size)
            spent.spend(size)
        elif isinstance(owner, _WALKED):
            spent.spend(len(owner))  # type: ignore[arg-type]  # `list.count`: walks all
        spent.depth += 1
        try:
            return __self._checked(super().call(__context, __obj, *args, **kwargs))
        finally:
            spent.depth -= 1

    def getattr(self, obj: Any, attribute: str) -> Any:
        budget().spend(LOOKUP_WORK)  # an attribute path in `map`/`sort`/...: per item
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        budget().spend(LOOKUP_WORK)
        value = super().getitem(obj, argument)
        if isinstance(argument, slice) and isinstance(value, str | list | tuple):
            budget().spend(len(value))
        return value

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        if getattr(value, "__name__", None) not in ("format", "format_map"):
            return None
        text = getattr(value, "__self__", None)
        if type(text) is not str:
            return super().wrap_str_format(value)
        is_map = value.__name__ == "format_map"

        def formatted(*args: Any, **kwargs: Any) -> str:
            if is_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument")
                return str(BoundedFormatter(self).vformat(text, (), args[0]))
            return str(BoundedFormatter(self).vformat(text, args, kwargs))

        return functools.update_wrapper(formatted, value)

    @staticmethod
    def _checked(result: Any) -> Any:
        if isinstance(result, str):
            checked_text(result, "the operation")
            budget().spend(len(result))
        elif isinstance(result, list | tuple | dict | set | frozenset):
            budget().spend(len(result))
        return result


def _finalize(value: Any) -> str:
    if type(value) is str and len(value) <= MAX_TEXT:
        return value  # the common case, kept cheap: this runs for every `{{ }}`
    return as_text(value)


def _concat(pieces: Iterable[str]) -> str:
    parts: list[str] = []
    size = 0
    for piece in pieces:
        size += len(piece)
        if size > MAX_TEXT:
            raise too_long("the template's output", size)
        parts.append(piece)
    return "".join(parts)


def environment() -> ImmutableSandboxedEnvironment:
    env = _AlertSandbox(
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=False,
        finalize=_finalize,
    )
    env.concat = _concat  # type: ignore[method-assign]
    env.filters = bounded_filters(env.filters)  # streamer/template_filters.py
    env.tests = bounded_tests(env.tests)
    # Nothing from outside the event: no globals beyond Jinja's harmless ones.
    env.globals = {k: v for k, v in env.globals.items() if k in ("range", "dict")}
    return env
