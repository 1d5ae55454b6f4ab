"""Bounded YAML: a file is refused before anything walks it when it could not be walked cheaply.

Invariant: a file that passes `read_yaml_text` and `check_yaml` is at most MAX_FILE_BYTES,
and what it composes to, with every alias expanded, holds at most its own values plus
MAX_ALIAS_VALUES repeated ones, is at most MAX_DEPTH collections deep and has no cycle; so
every later walk (validation, line look-ups, rule compilation, an Alertmanager import) is
linear in the file's size. A shared block (templates, a matcher list) reused by a few routes
passes easily; an alias bomb (each anchor aliased twice under the next: 2^N values from N
lines) is refused at the alias that passes the bound, naming its line and anchor.

Mechanism: one pass over the parser's events, before composition and without recursion:
each anchored value's expanded size and height are recorded when it ends, and an alias adds
them. `check_parsed` bounds already-parsed data (shared objects stand for aliases) the same
way, for callers that parsed a file themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from streamer.errors import StreamerError

__all__ = [
    "MAX_ALIAS_VALUES",
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "SafeLoader",
    "YamlLimitError",
    "check_parsed",
    "check_yaml",
    "read_yaml_text",
]

MAX_FILE_BYTES = 16 * 1024 * 1024  # a generated file of 50,000 routes is about 8 MiB
MAX_ALIAS_VALUES = 50_000  # values that aliases repeat, over the whole file
MAX_DEPTH = 100  # nested collections; a route and its routes: list are two

_ANCHORS_ARE_FOR = (
    "anchors and aliases are for small shared blocks (templates, matchers), "
    "not for copying routing trees"
)


# libyaml's parser, which PyYAML's wheels ship: the same events and nodes (with their
# lines) as the pure-Python parser, ten times faster; a 10,000-route file is read in 0.7 s
# instead of 7 (bench/config_scale.py).
SafeLoader: type[yaml.SafeLoader | yaml.CSafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class YamlLimitError(StreamerError, ValueError):
    """A file too large, too deep, or expanding too far; `line` is 1-based."""

    def __init__(self, line: int, message: str) -> None:
        self.line = line
        super().__init__(message)


def read_yaml_text(path: Path) -> str:
    """The file's text, read no further than MAX_FILE_BYTES; OSError or YamlLimitError."""
    with path.open("rb") as f:
        raw = f.read(MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:
        raise YamlLimitError(
            1, f"the file is larger than {MAX_FILE_BYTES // 2**20} MiB; is it the right file?"
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise YamlLimitError(line, "not UTF-8 text") from None


@dataclass
class _Open:
    """A collection being parsed: its anchor, expanded size so far, tallest child."""

    anchor: str | None
    size: int = 1
    height: int = 0


def check_yaml(text: str) -> None:
    """Raises YamlLimitError when the text, aliases expanded, is too deep, too large or
    cyclic; yaml.YAMLError when it is not YAML."""
    anchors: dict[str, tuple[int, int]] = {}  # anchor -> (expanded size, height)
    stack: list[_Open] = []
    repeated = 0
    for event in yaml.parse(text, Loader=SafeLoader):
        line = event.start_mark.line + 1 if event.start_mark else 1
        if isinstance(event, yaml.CollectionStartEvent):
            if len(stack) >= MAX_DEPTH:
                raise YamlLimitError(line, f"nested more than {MAX_DEPTH} levels deep")
            stack.append(_Open(event.anchor))
            continue
        if isinstance(event, yaml.CollectionEndEvent):
            done = stack.pop()
            size, height = done.size, done.height + 1
            if done.anchor is not None:
                anchors[done.anchor] = (size, height)
        elif isinstance(event, yaml.ScalarEvent):
            size, height = 1, 1
            if event.anchor is not None:
                anchors[event.anchor] = (size, height)
        elif isinstance(event, yaml.AliasEvent):
            name = event.anchor
            if any(o.anchor == name for o in stack):
                raise YamlLimitError(
                    line, f"the alias *{name} is inside its own anchor &{name}: it never ends"
                )
            if name not in anchors:
                continue  # composing reports the undefined alias
            size, height = anchors[name]
            repeated += size
            if repeated > MAX_ALIAS_VALUES:
                raise YamlLimitError(
                    line,
                    f"aliases repeat more than {MAX_ALIAS_VALUES:,} values in this file "
                    f"(*{name} here repeats {size:,}): {_ANCHORS_ARE_FOR}",
                )
            if len(stack) + height > MAX_DEPTH:
                raise YamlLimitError(
                    line, f"*{name} nests more than {MAX_DEPTH} levels deep once expanded"
                )
        else:
            continue  # stream and document events
        if stack:
            stack[-1].size += size
            stack[-1].height = max(stack[-1].height, height)


def check_parsed(data: Any) -> None:
    """Raises YamlLimitError (line 0: unknown) when parsed data, each shared list or mapping
    expanded where it recurs, is too deep or repeats too much; stops as soon as it does."""
    seen: set[int] = set()
    repeated = 0
    stack: list[tuple[Any, int, bool]] = [(data, 1, False)]
    while stack:
        value, depth, inside_repeat = stack.pop()
        collection = isinstance(value, dict | list)
        again = inside_repeat or (collection and id(value) in seen)
        if again:
            repeated += 1
            if repeated > MAX_ALIAS_VALUES:
                raise YamlLimitError(
                    0, f"aliases repeat more than {MAX_ALIAS_VALUES:,} values: {_ANCHORS_ARE_FOR}"
                )
        if not collection:
            continue
        if depth > MAX_DEPTH:
            raise YamlLimitError(0, f"nested more than {MAX_DEPTH} levels deep (with aliases)")
        seen.add(id(value))
        children = [v for kv in value.items() for v in kv] if isinstance(value, dict) else value
        stack.extend((child, depth + 1, again) for child in children)
