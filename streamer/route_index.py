"""Which routes of one level could match an event, without testing each of them.

Invariant: `candidates(event)` is a sub-sequence of the level's routes, in their order,
holding every route that could match the event. A route left out tests some field with
`=` against a value that field does not hold for this event, so it cannot match (and its
`when:` would never be evaluated). Walking the candidates therefore gives exactly what
walking every route gives: the same first match, the same fan-out, the same failures.

Why: monitoring topics are firehoses and most events match no route, so the walk over a
level's routes is most of what a dropped event costs; rules commonly test one field
(`labels.team`, `alert.labels.alertname`) for equality on many routes.

Mechanism: at load, the path that most routes of the level test with `=` is chosen, and
the routes are grouped by the value they require there; per event, one look-up of that
field (read as matchers read it) picks the group. Routes that do not test that path with
`=` belong to every group. A level where fewer than two routes share such a path is not
indexed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streamer.routing import Route


class LevelIndex:
    def __init__(self, routes: tuple[Route, ...]) -> None:
        self.routes = routes
        self._path: tuple[str, ...] | None = None
        self._groups: dict[str, tuple[Route, ...]] = {}
        self._others: tuple[Route, ...] = routes
        counts = Counter(
            path for route in routes for path in {m.path for m in route.matchers if m.op == "="}
        )
        if not counts:
            return
        path, count = counts.most_common(1)[0]
        if count < 2:
            return
        required = [
            next((m.value for m in route.matchers if m.op == "=" and m.path == path), None)
            for route in routes
        ]
        self._path = path
        self._others = tuple(r for r, value in zip(routes, required, strict=True) if value is None)
        self._groups = {
            value: tuple(
                r for r, needs in zip(routes, required, strict=True) if needs in (None, value)
            )
            for value in {v for v in required if v is not None}
        }
        # the matcher's own specialised look-up, read exactly as matchers read it
        first = next(m for r in routes for m in r.matchers if m.op == "=" and m.path == path)
        self._read: Callable[[Mapping[str, Any]], str] = first.text_of

    def candidates(self, event: Mapping[str, Any]) -> tuple[Route, ...]:
        if self._path is None:
            return self.routes
        return self._groups.get(self._read(event), self._others)


def indexes(routes: tuple[Route, ...]) -> Iterator[LevelIndex]:
    """An index for this level and every level below it."""
    yield LevelIndex(routes)
    for route in routes:
        if route.children:
            yield from indexes(route.children)
