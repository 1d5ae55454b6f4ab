"""Sets of offsets kept as ranges: the offset map's shape.

A partition's offset map (the offsets above its committed offset that are terminal
already, `budget.PartitionNote.done`) is mostly long runs: a topic whose rules drop most
events, behind one key that waits, has millions of terminal offsets and only as many gaps
as there are unfinished messages. So the map is kept, computed, merged and looked up as
sorted, disjoint, half-open ranges: its cost is the number of runs (bounded by the
unfinished messages, `max_unfinished`), never the number of offsets.

Pure: plain values in, plain values out.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

Range = tuple[int, int]  # [start, end): end is one past the last offset


@dataclass(frozen=True)
class OffsetRanges:
    """Sorted, disjoint, non-adjacent half-open ranges of offsets."""

    ranges: tuple[Range, ...] = ()

    @classmethod
    def of(cls, ranges: Iterable[Range]) -> OffsetRanges:
        """From ranges in any order, overlapping or touching (empty ones ignored)."""
        merged: list[list[int]] = []
        for start, end in sorted(r for r in ranges if r[0] < r[1]):
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        return cls(tuple((s, e) for s, e in merged))

    @classmethod
    def of_offsets(cls, offsets: Iterable[int]) -> OffsetRanges:
        return cls.of((o, o + 1) for o in offsets)

    def __contains__(self, offset: object) -> bool:
        if not isinstance(offset, int):
            return False
        i = bisect.bisect_right(self.ranges, (offset, float("inf"))) - 1
        return i >= 0 and self.ranges[i][0] <= offset < self.ranges[i][1]

    def __or__(self, other: OffsetRanges) -> OffsetRanges:
        if not other.ranges:
            return self
        if not self.ranges:
            return other
        return OffsetRanges.of((*self.ranges, *other.ranges))

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def __iter__(self) -> Iterator[int]:
        """Every offset (for small maps and tests: a map may hold millions)."""
        for start, end in self.ranges:
            yield from range(start, end)

    def count(self) -> int:
        """How many offsets."""
        return sum(end - start for start, end in self.ranges)

    def from_(self, base: int) -> OffsetRanges:
        """Only the offsets at or above `base`."""
        return OffsetRanges.of((max(s, base), e) for s, e in self.ranges if e > base)


EMPTY = OffsetRanges()
