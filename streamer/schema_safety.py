"""Writer schemas that would let a few bytes stand for unbounded work, found before use.

Invariant: decoding with a writer schema costs time linear in the message's bytes.
fastavro reads an array or map count and then that many items; items that take no bytes
(null, fixed of size 0, records of only those) let a 353-byte message claim 2^62 of them,
and a schema that contains itself lets a short message nest past the C stack. Both are
refused when the schema is resolved (`hazards` names the field path). Arrays of items
whose reads fastavro's skips do not check against the end of the buffer (boolean, float,
double, fixed) are allowed but read through `CheckedBuffer`, which raises at the end.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

Schema = Any


# What one value costs at the end of the buffer: nothing (null, fixed of size 0, records
# of those); a read fastavro's *skips* do not check (boolean, float, double, fixed); or
# a read that raises there (everything else: varints, strings, unions, ...).
_NO_BYTES, _UNCHECKED, _CHECKED = 0, 1, 2
_COSTS = {"null": _NO_BYTES} | dict.fromkeys(("boolean", "float", "double", "fixed"), _UNCHECKED)


def hazards(schema: Schema, named: Mapping[str, Any]) -> tuple[str | None, bool]:
    """(Why a parsed writer schema lets few bytes stand for unbounded work, or None;
    whether its reads must check the end of the buffer). Linear in the schema: each
    named type is walked once."""
    expanding: list[str] = []
    walked: set[str] = set()
    costs: dict[str, int] = {}
    checked_reads = False

    def walk(s: Any, path: str) -> str | None:
        nonlocal checked_reads
        if isinstance(s, str):
            if s in expanding:
                return f"{path or 'the top level'} contains {s} again (recursion)"
            return walk(named[s], path) if s in named and s not in walked else None
        if isinstance(s, list):
            return next(filter(None, (walk(branch, path) for branch in s)), None)
        kind = s["type"]
        if kind in ("record", "error") and s["name"] not in walked:
            expanding.append(s["name"])
            for field in s["fields"]:
                if found := walk(field["type"], f"{path}.{field['name']}".lstrip(".")):
                    return found
            walked.add(expanding.pop())
        elif kind == "array":
            if found := walk(s["items"], f"{path}[]"):
                return found
            cost = _cost(s["items"], named, costs)
            if cost == _NO_BYTES:
                return f"{path or 'the top level'} is an array of items that take no bytes"
            checked_reads |= cost == _UNCHECKED
        elif kind == "map":  # every entry has its key's length: a checked read
            return walk(s["values"], f"{path}{{}}")
        return None

    return walk(schema, ""), checked_reads


def _cost(schema: Any, named: Mapping[str, Any], costs: dict[str, int]) -> int:
    """See _NO_BYTES; `costs` remembers named types (the schema is not recursive)."""
    if isinstance(schema, str):
        if schema not in named:
            return _COSTS.get(schema, _CHECKED)
        if schema not in costs:
            costs[schema] = _cost(named[schema], named, costs)
        return costs[schema]
    if isinstance(schema, list):  # a union reads its branch index
        return _CHECKED
    kind = schema["type"]
    if kind in ("record", "error"):
        return max((_cost(f["type"], named, costs) for f in schema["fields"]), default=_NO_BYTES)
    if kind == "fixed" and schema["size"] == 0:
        return _NO_BYTES
    return _cost(kind, named, costs)


class CheckedBuffer(io.BytesIO):
    """A buffer whose short reads raise, as fastavro's skips assume (they loop forever
    over a count of 2^62 booleans otherwise). Slower: used only when a schema needs it."""

    def read(self, size: int | None = -1, /) -> bytes:
        data = super().read(size)
        if size is not None and len(data) < size:
            raise EOFError(f"{size} bytes wanted, {len(data)} left")
        return data
