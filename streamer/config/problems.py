"""Load problems, each tied to the line of the YAML file it comes from.

`Problems` collects every problem found in one file, so an operator fixes it in one pass;
each names `file:line`, the route path where there is one ("route a > b"), and what is
wrong. `ConfigError` carries them all, sorted by line.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from streamer.errors import StreamerError


class ConfigError(StreamerError):
    """Everything wrong with a configuration file, one problem per line."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(f"{path}: {count}:\n" + "\n".join(f"  {p}" for p in problems))


Loc = tuple[str | int, ...]


class Problems:
    """Collects problems with the line each came from in the YAML file.

    `nodes` composes the file's YAML nodes (with their lines) when the first problem or
    warning needs a line, not before: a big file's nodes outweigh the rest of its load
    (a 10,000-route file's are ~40 MiB), and a file that loads cleanly never needs them."""

    def __init__(self, path: Path, nodes: Callable[[], yaml.Node | None], data: Any) -> None:
        self.path, self.data = path, data
        self._nodes: Callable[[], yaml.Node | None] | None = nodes
        self._root: yaml.Node | None = None
        self.items: list[tuple[int, str]] = []
        self.warnings: list[tuple[int, str]] = []

    @property
    def root(self) -> yaml.Node | None:
        if self._nodes is not None:
            self._root, self._nodes = self._nodes(), None
        return self._root

    def add(self, loc: Loc, message: str) -> None:
        self.items.append(self._located(loc, message))

    def warn(self, loc: Loc, message: str) -> None:
        """Not a problem (the file loads), but worth a look: said as problems are."""
        self.warnings.append(self._located(loc, message))

    def sorted_warnings(self) -> tuple[str, ...]:
        return tuple(text for _, text in sorted(self.warnings))

    def _located(self, loc: Loc, message: str) -> tuple[int, str]:
        where = _route_path(self.data, loc) or ".".join(map(str, loc)) or "(file)"
        line = _line_of(self.root, loc)
        return line, f"{self.path}:{line}: {where}: {message}"

    def raise_if_any(self) -> None:
        if self.items:
            raise ConfigError(self.path, [text for _, text in sorted(self.items)])


def _line_of(node: yaml.Node | None, loc: Loc) -> int:
    """The 1-based line of the deepest YAML node along `loc` that exists."""
    if node is None:
        return 1
    line = node.start_mark.line + 1
    for key in loc:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == key or (key == "continue_" and k.value == "continue"):
                    child = v
                    line = k.start_mark.line + 1
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            child = node.value[key]
        if child is None:
            return line
        node = child
        line = node.start_mark.line + 1
    return line


def _route_path(data: Any, loc: Loc) -> str:
    """ "route a > b" for a location inside the routing tree, "" elsewhere."""
    names: list[str] = []
    node = data
    keys = list(loc)
    while len(keys) >= 2 and keys[0] == "routes" and isinstance(keys[1], int):
        routes = node.get("routes") if isinstance(node, dict) else None
        if not isinstance(routes, list) or keys[1] >= len(routes):
            break
        node = routes[keys[1]]
        names.append(
            str(node.get("name", f"#{keys[1]}")) if isinstance(node, dict) else f"#{keys[1]}"
        )
        keys = keys[2:]
    if not names:
        return "default route" if loc[:1] == ("default",) else ""
    rest = ".".join(map(str, keys))
    return f"route {' > '.join(names)}" + (f" ({rest})" if rest else "")
