"""Rate limits that are never exceeded on purpose.

incident.io allows 120 events/minute per alert source and 1200 requests/minute per API
key, and does not say how it counts a minute. So the strictest reading: no more than
`limit` requests may *start* in any rolling window of `window` seconds. A token bucket
fails that (a full bucket plus its refill lets nearly 2x through in one window); a log
of the last `limit` start times keeps it exactly, in O(limit) memory.

incident.io counts arrivals, not our starts, and an arrival is somewhere between a
request's start and its answer: so a slot is taken at the start and kept until a window
after the answer (`ended`), however long the request took, and two requests never arrive
within one window of each other unless the limit allows it. A margin is still added to the
window, for what we cannot see (the server's own clock and queueing).

A 429 pauses the whole limiter until its retry-after, not just the one request. The
time comes from an injected clock (monotonic seconds); nothing here sleeps.

Through hand-overs (see `budget.py`): starts another incarnation made for a partition
this one now owns are `inherit`ed and count like its own; other members count against a
`ceiling` (the whole group's limit), each as its starts in the window as far as its
committed notes tell, but never less than the share it `announced` (its limit, or a raise
it waits to take): what another member has not used yet is its own to use, so two members
never both take the room one member's old starts leave; and `promise(tail)` caps the
starts not yet covered by a confirmed note, so a kill -9 can hide at most `tail` starts
from the next owner.

`why(now)` says, without changing anything, which of these keeps the next start back and
until when (for the ceiling: which members fill it): `/pending` and the stall warning
read it about once a second (`liveness.py`), never the hot path.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

FOREIGN_RECHECK = 1.0  # s: when the others' shares leave no room, read them again

# what keeps a limiter's next start back: a 429's pause, its own starts filling its limit
# (its share of the whole), the group's ceiling (the others' starts and shares with ours),
# or the tail (starts that no confirmed note covers yet)
Constraint = Literal["paused", "window", "ceiling", "tail"]


@dataclass(frozen=True)
class Binding:
    """Why a limiter cannot start a request now: its constraint that frees last."""

    constraint: Constraint
    until: float  # monotonic: when that constraint frees (a new look for the ceiling)
    own: int  # this limiter's starts in the window
    limit: int  # its limit (its share)
    # the ceiling's: the group's whole limit, and each other member that counts against
    # it (its writer id, and what it counts: its starts in the window or its share)
    ceiling: int | None = None
    writers: tuple[tuple[str, int], ...] = ()


class RollingWindowLimiter:
    def __init__(self, limit: int, window: float = 60.0, *, margin: float = 0.5) -> None:
        if limit < 1:
            raise ValueError("a rate limit must allow at least one request per window")
        self.window = window + margin
        self._limit = limit
        self._starts: deque[float] = deque()
        self._paused_until = -math.inf
        # other members' starts (sorted) and announced shares, for the ceiling
        self._others: list[tuple[list[float], int]] = []
        self._writers: tuple[str, ...] = ()  # who each of `_others` is (their notes' writer)
        self._room_at = -math.inf  # when the ceiling next has room, until starts change
        self._ceiling: int | None = None
        self._sparing: list[tuple[list[float], int]] | None = None  # see `set_ceiling`
        self._tail: int | None = None  # at most this many starts not yet in a confirmed note
        self._unconfirmed: deque[float] = deque()
        self._raise: tuple[int, float] | None = None  # a raise asked for, and since when

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def announced(self) -> int:
        """The most this limiter may allow before others hear of it again: its limit, or
        a raise it waits to take (others keep that much room for it meanwhile)."""
        return max(self._limit, self._raise[0] if self._raise else 0)

    def set_limit(self, limit: int, *, now: float = 0.0, raise_after: float = 0.0) -> None:
        """A new share of the limit; applies from now on. A cut applies at once; a raise
        only once it was asked for `raise_after` seconds in a row (time for the members
        whose shares shrink to see why and shrink first)."""
        limit = max(1, limit)
        if limit <= self._limit or raise_after <= 0:
            self._limit, self._raise = limit, None
            return
        if self._raise is None or self._raise[0] != limit:
            self._raise = (limit, now)
        if now - self._raise[1] >= raise_after:
            self._limit, self._raise = limit, None

    def next_start(self, now: float) -> float:
        """When a request may start: `now` if it may start now."""
        while self._starts and self._starts[0] <= now - self.window:
            self._starts.popleft()
        at = max(now, self._paused_until)
        if len(self._starts) >= self._limit:
            # the start that must leave the window before one more fits
            at = max(at, self._starts[len(self._starts) - self._limit] + self.window)
        if self._ceiling is not None and self._others:
            at = max(at, self._ceiling_frees(now))
        if self._tail is not None and len(self._unconfirmed) >= self._tail:
            at = max(at, now + 0.05)  # until the next note is confirmed (a commit away)
        return at

    def record_start(self, now: float) -> None:
        self._starts.append(now)
        self._room_at = -math.inf
        if self._tail is not None:
            self._unconfirmed.append(now)

    def ended(self, started: float, now: float) -> None:
        """The request started at `started` came back (answered or given up) at `now`:
        it was counted at its arrival, some time in between, so its slot is kept until a
        window after `now`."""
        move_later(self._starts, started, now)
        self._room_at = -math.inf

    def starts(self, now: float) -> list[float]:
        """The starts counted in the window that ends at `now`, oldest first."""
        return [t for t in self._starts if t > now - self.window]

    def inherit(self, starts: Iterable[float]) -> None:
        """Starts made for a partition this limiter's owner took over: they count as its own."""
        self._starts = deque(sorted([*self._starts, *starts]))
        self._room_at = -math.inf

    def set_ceiling(
        self,
        limit: int | None,
        others: Iterable[tuple[Iterable[float], int]] = (),
        *,
        writers: Sequence[str] = (),
    ) -> None:
        """The group's whole limit, and each other member's starts (as far as known) and
        announced share (0: not known): this limiter never lets its own starts and theirs,
        each member counted as at least its share, exceed the limit in a window.
        `writers`: who the others are (for `why`), in the same order."""
        self._ceiling = None if limit is None else max(1, limit)
        self._room_at = -math.inf
        most = self._ceiling or 0  # past the ceiling, older starts cannot matter
        self._others = [(sorted(starts)[-most:], max(0, share)) for starts, share in others]
        self._writers = tuple(writers)
        total = sum(share for _, share in self._others)
        self._sparing = None
        if total >= most:
            # Their shares alone fill the limit (shares rounded up to 1: more replicas than
            # the limit allows; or a raise announced before another's cut is seen, or while
            # notes cannot be read). Counted whole, each may have started its share unseen
            # (kept in proportion for every start, one of ours went past the limit: the
            # simulator's short seed 703, 16 in 15); but never none for good: while we have
            # no start in the window they are kept in proportion, leaving one start of room
            # (giving that room to the lowest writer id only starved a member for good: the
            # short seed 612). One start a window, until the shares follow demand.
            self._sparing = [
                (starts, share * (most - 1) // total) for starts, share in self._others
            ]

    def _ceiling_frees(self, now: float) -> float:
        """When the group leaves room under the ceiling for one more start of ours (the
        answer holds until a start is made, ended or inherited, or the ceiling is set)."""
        if now < self._room_at:
            return self._room_at
        self._room_at = self._ceiling_room(now, self._starts)  # `next_start` trimmed them
        return self._room_at

    def _ceiling_room(self, now: float, own: Sequence[float]) -> float:
        """`_ceiling_frees`, worked out afresh (changes nothing); `own`: our starts in
        the window."""
        assert self._ceiling is not None
        cut = now - self.window
        others = self._counted_others(own)
        counts = [len(s) - bisect.bisect_right(s, cut) for s, _ in others]
        group = len(own) + sum(max(c, f) for c, (_, f) in zip(counts, others, strict=True))
        if group < self._ceiling:
            return now
        # As starts leave the window, ours free room each; another member's only while it
        # has more in the window than its share: its oldest (count - share).
        freeing = [
            starts[len(starts) - c : len(starts) - c + max(0, c - share)]
            for c, (starts, share) in zip(counts, others, strict=True)
        ]
        k = group - self._ceiling  # the (k+1)th to leave makes room
        leaving = sorted(itertools.chain(own, *freeing))
        # their shares fill it: until the next view
        frees = leaving[k] + self.window if k < len(leaving) else now + FOREIGN_RECHECK
        if self._sparing is not None and own:  # none of ours in the window: one of room
            frees = min(frees, own[-1] + self.window)
        return frees

    def _counted_others(self, own: Sequence[float]) -> list[tuple[list[float], int]]:
        """The others as counted against the ceiling, given our starts in the window."""
        return self._sparing if self._sparing is not None and not own else self._others

    def why(self, now: float) -> Binding | None:
        """What keeps the next start back, read-only (None: it may start now). Of several
        constraints, the one that frees last; `next_start` is the hot path, this is not."""
        cut = now - self.window
        starts = [t for t in self._starts if t > cut]
        own = len(starts)
        found: list[Binding] = []
        if self._paused_until > now:
            found.append(Binding("paused", self._paused_until, own, self._limit))
        if own >= self._limit:
            frees = starts[own - self._limit] + self.window
            found.append(Binding("window", frees, own, self._limit))
        if self._ceiling is not None and self._others:
            room = self._ceiling_room(now, starts)
            if room > now:
                found.append(
                    Binding(
                        "ceiling", room, own, self._limit, self._ceiling, self._counted(cut, starts)
                    )
                )
        if self._tail is not None and len(self._unconfirmed) >= self._tail:
            found.append(Binding("tail", now + 0.05, own, self._limit))
        return max(found, key=lambda b: b.until, default=None)

    def _counted(self, cut: float, own: Sequence[float]) -> tuple[tuple[str, int], ...]:
        """Each other member that counts against the ceiling, most first: its writer id
        and what it counts (its starts in the window, or its share if that is more)."""
        names = self._writers if len(self._writers) == len(self._others) else ()
        counted = []
        for i, (starts, share) in enumerate(self._counted_others(own)):
            count = max(len(starts) - bisect.bisect_right(starts, cut), share)
            if count:
                counted.append((names[i] if names else f"member {i + 1}", count))
        return tuple(sorted(counted, key=lambda c: (-c[1], c[0])))

    def promise(self, tail: int | None) -> None:
        """At most `tail` starts may be made that no confirmed note covers yet."""
        self._tail = None if tail is None else max(1, tail)

    @property
    def tail(self) -> int | None:
        return self._tail

    def confirmed(self, through: float) -> None:
        """A note with every start up to `through` is on the broker."""
        while self._unconfirmed and self._unconfirmed[0] <= through:
            self._unconfirmed.popleft()

    def pause_until(self, until: float) -> None:
        """A 429 said to wait: nothing starts before `until` (a later pause wins)."""
        self._paused_until = max(self._paused_until, until)

    @property
    def paused_until(self) -> float:
        return self._paused_until


def move_later(times: deque[float], was: float, now: float) -> None:
    """Moves one `was` of the sorted `times` to `now`, if later; they stay sorted. A `was`
    no longer there (a request that took longer than the window: it aged out) is put
    back at `now`: its arrival may still count."""
    if now <= was:
        return
    i = bisect.bisect_left(times, was)
    if i < len(times) and times[i] == was:
        del times[i]
    bisect.insort(times, now)


def acquire(limiters: Sequence[RollingWindowLimiter], now: float) -> float | None:
    """Starts one request under every limiter at once, or says when to try again.

    All or nothing: a request counts against its alert source and its API key together,
    so taking one without the other would waste a slot.
    """
    ready_at = max(limiter.next_start(now) for limiter in limiters)
    if ready_at > now:
        return ready_at
    for limiter in limiters:
        limiter.record_start(now)
    return None


def share_of(limit: int, owned_partitions: int, total_partitions: int) -> int:
    """This replica's part of a limit shared by the consumer group, by partitions owned.

    Rounded down, so the replicas' shares never add up to more than the limit; at least
    one while anything is owned, so a replica with a partition can always make progress.
    The two meet only when some replica's exact share is below one request per window
    (more partitions than the limit, spread thinly): then the sum can exceed the limit,
    and a fixed split (fewer replicas, or `share:` in the configuration) is the answer.
    """
    if total_partitions <= 0 or owned_partitions <= 0:
        return 1
    return max(1, limit * owned_partitions // total_partitions)


DEMAND_FLOOR = 0.05  # the part of a limit shared by partitions owned, demand or not


def share_by_demand(
    limit: int, owned_partitions: int, total_partitions: int, mine: int, group: int
) -> int:
    """This replica's part of a limit, mostly by demand: `mine` of the `group`'s partitions
    with deliveries waiting for it are this replica's. A floor (`DEMAND_FLOOR` of the
    limit) is still shared by partitions owned, so a replica whose demand the others have
    not seen yet can start. The exact parts add up to the limit; rounded down (at least
    one, as `share_of`). Without demand anywhere: by partitions owned."""
    if group <= 0 or not 0 <= mine <= group or total_partitions <= 0:
        return share_of(limit, owned_partitions, total_partitions)
    exact = limit * (
        DEMAND_FLOOR * owned_partitions / total_partitions + (1 - DEMAND_FLOOR) * mine / group
    )
    return max(1, math.floor(exact + 1e-9))
