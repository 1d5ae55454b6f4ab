"""Hand-overs: when a partition is taken, nothing of it starts before our claim is on the
broker; when it is let go, no request of it may start too late.

Invariant (rate limits across owners): a partition just assigned starts nothing until a
commit of it carrying this member's note is confirmed (the claim), and then for one more
`settle` (the group's view interval and a margin). From then on the note on the broker
names this member as the writer, so whoever owns the partition next (after a kill -9 too)
counts this member's unconfirmed starts (`budget.Spent.tail`); without the claim, a member
killed before its first commit would hide every start it made. The settle lets every other
member read the claim (its announced share) before anything of it starts: two members
that had no demand before, and had written no note, each took the room one start leaves
(the simulator's demand-shift seeds: 10 arrivals in a window of 9).

Invariant (per-key order across owners): a request of a partition being revoked, or of
any partition at shutdown, starts only if it can end before the drain does. A request
started later could still be in flight after the partition changed hands, and land after
the next owner's request for the same key: a reorder. So each partition being let go gets
a last start, `drain deadline - request timeout - START_MARGIN` (the client ends every
request within its timeout of being called; the margin covers the hand-off to a worker
thread), and nothing of it starts at or after that instant.

A drain also ends early when waiting cannot change anything: nothing is in flight, and
everything waiting (for a rate limit, a backoff, a held destination) could start only
after its partition's last start. Those events go to the next owner.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable

from streamer.ledger import Partition

START_MARGIN = 0.25  # seconds between deciding to start a request and the client's clock


class HandOver:
    def __init__(self, request_timeout: float, settle: float = 0.0) -> None:
        self.request_timeout, self.settle = request_timeout, settle
        self._last_start: dict[Partition, float] = {}
        self._unclaimed: set[Partition] = set()
        self._settling: dict[Partition, float] = {}  # claimed: may start from then

    def take(self, partitions: Iterable[Partition]) -> None:
        """Newly assigned: nothing of them starts until `claimed`."""
        self._unclaimed.update(partitions)

    def claimed(self, partition: Partition, now: float = 0.0) -> None:
        """A commit of the partition with our note was confirmed (at `now`)."""
        if partition in self._unclaimed:
            self._unclaimed.discard(partition)
            if self.settle > 0:
                self._settling[partition] = now + self.settle

    def settled_at(self, now: float) -> float | None:
        """When the next claimed partition may start, if any still settles."""
        for p, at in list(self._settling.items()):
            if at <= now:
                del self._settling[p]
        return min(self._settling.values(), default=None)

    def unclaimed(self) -> set[Partition]:
        return self._unclaimed

    def begin(self, partitions: Iterable[Partition], drain_deadline: float) -> None:
        for p in partitions:
            self._last_start[p] = drain_deadline - self.request_timeout - START_MARGIN

    def stop(self, partitions: Iterable[Partition]) -> None:
        """The drain is over (its final note is built): nothing of them starts any more."""
        for p in partitions:
            self._last_start[p] = -math.inf

    def end(self, partitions: Collection[Partition]) -> None:
        for p in partitions:
            self._last_start.pop(p, None)
            self._unclaimed.discard(p)
            self._settling.pop(p, None)

    def last_start(self, partition: Partition) -> float:
        """When the partition's last request may start; infinity if it is not being let go."""
        return self._last_start.get(partition, math.inf)

    def may_start(self, partition: Partition, now: float) -> bool:
        settled = self._settling.get(partition, -math.inf) <= now
        return partition not in self._unclaimed and settled and now < self.last_start(partition)

    def worth_waiting(self, *, in_flight: bool, starts: Iterable[tuple[Partition, float]]) -> bool:
        """Could anything still finish, or start before its cut-off?

        `starts` are the earliest instants the waiting work could start (a destination's
        next slot for its queue's head, a retry's due time), with their partitions.
        """
        if in_flight:
            return True
        # an unclaimed partition starts nothing: a drain serves no commit answers
        return any(start < self.last_start(p) and p not in self._unclaimed for p, start in starts)
