"""Which routes of one level could match an event, without testing each of them.

Invariant: `candidates(event)` is a sub-sequence of the level's routes, in their order,
holding every route that could match the event. A route left out has a matcher that
cannot hold for this event: an `=` against a value its field does not hold, or an `=~`
whose pattern only matches texts that the field's text is not and does not start with
(`streamer.regexes.literal_cover`: `critical|warning`, `^(a|b)$`, `host-1\\..*`). So it
cannot match, and its `when:` would never be evaluated. Walking the candidates therefore
gives exactly what walking every route gives: the same first match, the same fan-out,
the same failures (tests/test_route_index.py compares the two on generated trees).

Why: monitoring topics are firehoses and most events match no route, so the walk over a
level's routes is most of what a dropped event costs; generated rules (one route per team
or service, thousands of them) test a few fields for equality or a list of values on
every route. An event's cost must not grow with the routes it cannot match.

Mechanism: at load, each route is filed under one of its matchers: an `=`, or an `=~` with
a literal cover, on the path where it shares its texts and prefixes with the fewest other
routes (its team rather than the severity every route tests), then the path more routes
test (a path only one route tests is not worth a look-up: that route is tried on every
event instead). Per path, the routes are grouped by the exact texts and the prefixes
they require. Per event,
one read of each filed path (as matchers read it) and one look-up per exact text or
prefix length picks the groups; the routes filed nowhere are added, in file order. A
level where no path is tested by two routes is not indexed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from streamer.regexes import literal_cover

if TYPE_CHECKING:
    from streamer.matchers import Matcher
    from streamer.routing import Route

# A matcher's cover: the exact texts and the prefixes that every text it holds for is.
_Cover = tuple[frozenset[str], frozenset[str]]


def _cover(matcher: Matcher) -> _Cover | None:
    if matcher.op == "=":
        return frozenset((matcher.value,)), frozenset()
    if matcher.op == "=~" and matcher.regex is not None:
        return literal_cover(matcher.regex.pattern)
    return None


@dataclass
class _Filed:
    """The routes filed under one path, by the exact texts and prefixes they require."""

    read: Callable[[Mapping[str, Any]], str]  # the field, read as matchers read it
    exact: dict[str, list[int]] = field(default_factory=dict)  # text -> route positions
    prefixes: dict[str, list[int]] = field(default_factory=dict)
    prefix_lengths: tuple[int, ...] = ()

    def file(self, position: int, cover: _Cover) -> None:
        for text in cover[0]:
            self.exact.setdefault(text, []).append(position)
        for prefix in cover[1]:
            self.prefixes.setdefault(prefix, []).append(position)

    def hits(self, event: Mapping[str, Any], found: list[list[int]]) -> None:
        text = self.read(event)
        group = self.exact.get(text)
        if group is not None:
            found.append(group)
        for length in self.prefix_lengths:
            if length > len(text):
                break
            group = self.prefixes.get(text[:length])
            if group is not None:
                found.append(group)


class LevelIndex:
    def __init__(self, routes: tuple[Route, ...]) -> None:
        self.routes = routes
        self._filed: tuple[_Filed, ...] = ()
        self._unfiled: tuple[int, ...] = tuple(range(len(routes)))
        self._unfiled_routes = routes
        # One filed path and only exact texts (the common case): each text's candidates,
        # merged with the unfiled routes once, at load.
        self._merged: dict[str, tuple[Route, ...]] | None = None
        covers = [
            {m.path: (m, cover) for m in route.matchers if (cover := _cover(m)) is not None}
            for route in routes
        ]
        counts = Counter(path for found in covers for path in found)
        if not counts or counts.most_common(1)[0][1] < 2:
            return
        # How many routes each (path, text or prefix) would bring along: a route is filed
        # where its company is smallest, so `severity=~"critical|warning"` on every route
        # does not put every route in two groups when each also tests its own team.
        company = Counter(
            (path, kind, key)
            for found in covers
            for path, (_, cover) in found.items()
            for kind, keys in enumerate(cover)
            for key in keys
        )

        def crowd(
            found: dict[tuple[str, ...], tuple[Matcher, _Cover]], path: tuple[str, ...]
        ) -> tuple[int, int]:
            cover = found[path][1]
            shared = sum(
                company[path, kind, key] for kind, keys in enumerate(cover) for key in keys
            )
            return shared, -counts[path]  # then the path more routes test: fewer look-ups

        filed: dict[tuple[str, ...], _Filed] = {}
        unfiled: list[int] = []
        for position, found in enumerate(covers):
            usable = [path for path in found if counts[path] >= 2]
            if not usable:
                unfiled.append(position)
                continue
            path = min(usable, key=lambda p: crowd(found, p))
            matcher, cover = found[path]
            # every matcher on one path reads it the same way: the first one's look-up
            filed.setdefault(path, _Filed(matcher.text_of)).file(position, cover)
        for where in filed.values():
            where.prefix_lengths = tuple(sorted({len(p) for p in where.prefixes}))
        self._filed = tuple(filed.values())
        self._unfiled = tuple(unfiled)
        self._unfiled_routes = tuple(routes[i] for i in unfiled)
        if len(self._filed) == 1 and not self._filed[0].prefixes:
            self._merged = {
                text: self._routes_at(group) for text, group in self._filed[0].exact.items()
            }

    def _routes_at(self, *groups: list[int]) -> tuple[Route, ...]:
        positions = set(self._unfiled).union(*groups)
        return tuple(self.routes[i] for i in sorted(positions))

    def candidates(self, event: Mapping[str, Any]) -> tuple[Route, ...]:
        if self._merged is not None:
            return self._merged.get(self._filed[0].read(event), self._unfiled_routes)
        if not self._filed:
            return self.routes
        found: list[list[int]] = []
        for where in self._filed:
            where.hits(event, found)
        return self._routes_at(*found) if found else self._unfiled_routes


def indexes(routes: tuple[Route, ...]) -> Iterator[LevelIndex]:
    """An index for this level and every level below it."""
    yield LevelIndex(routes)
    for route in routes:
        if route.children:
            yield from indexes(route.children)
