"""YAML scalars read as Go's yaml.v2 reads them into Alertmanager's string fields: as text.

Invariant: wherever a label name or value is read (a route's `matchers:`, the keys and values
of its `match:` and `match_re:` maps, and everything in an Alertmanager file), an unquoted
scalar keeps the text it was written with, as yaml.v2 keeps it for a string field: `yes`
and `on` stay `yes` and `on` (PyYAML's YAML 1.1 resolver makes them True), `010` stays
`010` (not 8), `0x1F`, `1.50`, `.inf` and `2024-01-02` stay as written, and a null (`~`,
`null`, or nothing) is the empty text "", as yaml.v2 leaves a string field empty. The same
holds for time intervals (the top-level `time_intervals:`, and routes' `mute_time_intervals:`
and `active_time_intervals:`): `09:00` stays `09:00` (YAML 1.1 reads it as 540) and `1:3` as
written, except that a null stays null there (a field left out, as Alertmanager reads it).

Mechanism: `keep_label_text` re-tags those nodes of a composed streamer configuration as
strings before it is constructed. `load_go_yaml` reads an Alertmanager file whose only
implicit types are null and merge keys (every other plain scalar is text; the importer reads
booleans the yaml.v2 way, `go_bool`), into `Located` mappings and lists that remember the
line of each key and item, so every problem can name `file:line`; a key given twice is
refused, as Alertmanager's strict unmarshalling refuses it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml

from streamer.errors import StreamerError

__all__ = [
    "LocatedList",
    "LocatedMap",
    "YamlTextError",
    "go_bool",
    "keep_label_text",
    "line_of",
    "load_go_yaml",
]

_STR = "tag:yaml.org,2002:str"
_NULL = "tag:yaml.org,2002:null"
_TEXT_TAGS = {
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:timestamp",
    "tag:yaml.org,2002:value",
}
_LABEL_KEYS = ("match", "match_re", "matchers")
_INTERVAL_KEYS = ("mute_time_intervals", "active_time_intervals")


def _as_text(node: yaml.Node, *, keep_null: bool = False) -> None:
    """A scalar node made a string with yaml.v2's text; collections are walked."""
    if isinstance(node, yaml.ScalarNode):
        if node.tag == _NULL and not keep_null:
            node.value = ""
            node.tag = _STR
        elif node.tag in _TEXT_TAGS:
            node.tag = _STR
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            _as_text(key, keep_null=keep_null)
            _as_text(value, keep_null=keep_null)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _as_text(item, keep_null=keep_null)


def keep_label_text(root: yaml.Node | None) -> None:
    """Re-tags the label names and values of every route (`routes:`, nested) as text, and
    the time intervals (their definitions, and the names routes give)."""
    stack = [root]
    while stack:
        node = stack.pop()
        if not isinstance(node, yaml.MappingNode):
            continue
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):
                continue
            if key.value == "routes" and isinstance(value, yaml.SequenceNode):
                stack.extend(value.value)
            elif (key.value in _LABEL_KEYS and node is not root) or (
                key.value in _INTERVAL_KEYS and node is not root
            ):
                _as_text(value)
            elif key.value == "time_intervals" and node is root:
                _as_text(value, keep_null=True)


class YamlTextError(StreamerError, ValueError):
    """Not readable as an Alertmanager file; `line` is 1-based."""

    def __init__(self, line: int, message: str) -> None:
        self.line = line
        super().__init__(message)


class LocatedMap(dict[Any, Any]):
    """A mapping that knows its own line and each key's."""

    line: int = 0
    lines: dict[Any, int]


class LocatedList(list[Any]):
    """A list that knows its own line and each item's."""

    line: int = 0
    lines: list[int]


def line_of(container: Any, key: Any = None) -> int:
    """The 1-based line of `container[key]` (of the container when key is None); 0 when
    the data did not come from `load_go_yaml`."""
    if key is None:
        return int(getattr(container, "line", 0))
    if isinstance(container, LocatedMap):
        return container.lines.get(key, container.line)
    if isinstance(container, LocatedList) and isinstance(key, int) and key < len(container):
        return container.lines[key]
    return 0


# yaml.v2's booleans (YAML 1.1, with y and n, which PyYAML leaves out).
_TRUE = {"y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"}
_FALSE = {"n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"}


def go_bool(value: Any) -> bool | None:
    """A scalar read into a Go bool field as yaml.v2 reads it; None if it is not one."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
    return None


class _GoTextLoader(yaml.SafeLoader):
    """Only null and merge keys are implicit types; everything else is text."""


_GoTextLoader.yaml_implicit_resolvers = {
    first: [
        (tag, pattern) for tag, pattern in resolvers if tag in (_NULL, "tag:yaml.org,2002:merge")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _text(loader: yaml.SafeLoader, node: yaml.Node) -> str:
    assert isinstance(node, yaml.ScalarNode)
    return str(node.value)


def _mapping(loader: yaml.SafeLoader, node: yaml.Node) -> Iterator[LocatedMap]:
    assert isinstance(node, yaml.MappingNode)
    out = LocatedMap()
    out.line, out.lines = node.start_mark.line + 1, {}
    yield out
    own = {id(key) for key, _ in node.value}
    loader.flatten_mapping(node)  # merged (<<) pairs first: the mapping's own keys win
    for key_node, value_node in node.value:
        line = key_node.start_mark.line + 1
        key = loader.construct_object(key_node)
        try:
            hash(key)
        except TypeError:
            raise YamlTextError(line, "a key must be a plain value, not a collection") from None
        if key in out.lines and id(key_node) in own and out.lines[key] >= 0:
            raise YamlTextError(line, f"{key!r} appears twice in this mapping")
        out[key] = loader.construct_object(value_node)
        # a merged key's line is stored negated until the mapping's own key replaces it
        out.lines[key] = line if id(key_node) in own else -line
    for key, line in out.lines.items():
        out.lines[key] = abs(line)


def _sequence(loader: yaml.SafeLoader, node: yaml.Node) -> Iterator[LocatedList]:
    assert isinstance(node, yaml.SequenceNode)
    out = LocatedList()
    out.line, out.lines = node.start_mark.line + 1, []
    yield out
    for item in node.value:
        out.append(loader.construct_object(item))
        out.lines.append(item.start_mark.line + 1)


for _tag in _TEXT_TAGS:
    _GoTextLoader.add_constructor(_tag, _text)
_GoTextLoader.add_constructor("tag:yaml.org,2002:map", _mapping)
_GoTextLoader.add_constructor("tag:yaml.org,2002:seq", _sequence)


def load_go_yaml(text: str) -> Any:
    """The document, every scalar but null as its text, with lines (see the module doc);
    raises YamlTextError, or yaml.YAMLError when the text is not YAML."""
    loader = _GoTextLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
