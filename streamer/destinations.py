"""Destinations: where each waiting delivery stands, and whether it may start now.

Each destination (an alert source with its token) has a queue of deliveries whose key is
free (per-key order is the ledger's job: only a key's active delivery is ever queued
here, so the queue's order, its `priority`, never reorders a key; `coalescing.py`), two
rolling-window limiters (its alert source's and its API key's, the latter
shared by every destination with the same token), and a hold.

Invariants:

- **Limits.** A delivery starts only when both limiters have a slot, taken together (all
  or nothing). A 429 pauses the alert source's limiter until its retry-after.
- **Holds.** A destination that answers 401/403/404 or a redirect is misconfigured, not
  its events: it is held; nothing of it starts except one probe every
  `hold_retry_seconds`; the first answer that is not a hold releases it. Other
  destinations keep flowing.
- **Shares.** Replicas split each limit by the partitions they own, or mostly by where
  deliveries wait (`share_by_demand`, fed by `group_budget.py`), or a fixed fraction, so
  the group never starts more than the limit. Each start is attributed to its partition
  (`spent`): that partition's next owner inherits it.

Pure: plain values and the caller's clock (monotonic seconds); nothing here sleeps.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Collection, Iterator, Mapping
from typing import Literal

from pydantic import SecretStr

from streamer.coalescing import WaitingQueue, rank_of
from streamer.config import DeliverySettings, Destination
from streamer.failure_policy import Accepted, Decision, HoldDestination
from streamer.ledger import Job, Partition
from streamer.rate_limit import RollingWindowLimiter, acquire, move_later, share_by_demand

HoldChange = Literal["held", "released"] | None


class DestinationState:
    def __init__(
        self,
        name: str,
        spec: Destination,
        token: SecretStr,
        key_limiter: RollingWindowLimiter,
        margin: float,
        window: float = 60.0,
    ) -> None:
        self.name = name
        self.spec = spec
        self.token = token
        self.limiter = RollingWindowLimiter(spec.events_per_minute, window, margin=margin)
        self.key_limiter = key_limiter
        # active deliveries, one per key, in the order they may start (`priority`)
        self.ready = WaitingQueue()
        self.held_reason: str | None = None
        self.probe_at = 0.0
        self.probing = False  # the one request a held destination may have in flight
        # the starts made for each partition (monotonic): its next owner inherits them
        self.spent: dict[Partition, deque[float]] = {}
        self.last_start = -math.inf  # monotonic: this member's latest start (liveness.py)
        # how its alert source's share was worked out, in words (`/pending`: a share)
        self.share_basis = "the whole limit"

    def take_slot(self, now: float) -> bool:
        """Takes the slot for the queue's head if it may start now (hold, limiters);
        False (nothing taken) if it may not."""
        if self.held_reason is not None:
            if self.probing or now < self.probe_at:
                return False
            self.probing = True
        if acquire([self.limiter, self.key_limiter], now) is not None:
            self.probing = False
            return False
        if self.ready:  # the head starts (passed-over heads are rare: drains only)
            self.spent.setdefault(self.ready[0].partition, deque()).append(now)
        self.last_start = now
        return True

    def earliest_start(self, now: float) -> float:
        """When the queue's head could start at the earliest (for drains)."""
        start = max(self.limiter.next_start(now), self.key_limiter.next_start(now))
        if self.held_reason is not None:
            start = max(start, self.probe_at)
        return start

    def request_ended(self, started: float, now: float, partition: Partition | None = None) -> bool:
        """A request of this destination, started at `started` for `partition`, came back
        at `now` (answered or not): its slots are kept, and handed over, until a window
        after `now`. Was it the probe?"""
        for limiter in (self.limiter, self.key_limiter):
            limiter.ended(started, now)
        if partition is not None and partition in self.spent:
            move_later(self.spent[partition], started, now)
        was_probe, self.probing = self.probing, False
        return was_probe

    def answered(
        self, decision: Decision, *, was_probe: bool, now: float, hold_retry: float
    ) -> HoldChange:
        """What one answer does to the destination (the delivery's fate is the caller's).

        A hold is released by any answer that is not a hold and is either the probe's or
        an acceptance; a hold answer (re)schedules the probe. `now` is monotonic.
        """
        change: HoldChange = None
        answered = not isinstance(decision, HoldDestination) and (
            was_probe or isinstance(decision, Accepted)
        )
        if self.held_reason is not None and answered:
            self.held_reason = None
            change = "released"
        if isinstance(decision, HoldDestination):
            if self.held_reason is None:
                change = "held"
            self.held_reason = decision.reason
            self.probe_at = now + hold_retry
        return change

    def rate_limited(self, until: float) -> None:
        """incident.io said 429: nothing of this alert source starts before `until`."""
        self.limiter.pause_until(until)

    def drop(self, partitions: Collection[Partition]) -> list[Job]:
        """Takes the queued deliveries of these partitions out; returns them."""
        return self.ready.drop(partitions)

    @property
    def coalesces(self) -> bool:
        """Whether a waiting key sends only its newest event (`coalesce: latest`)."""
        return self.spec.coalesce == "latest"

    def rank(self, job: Job) -> int:
        """Where a delivery ranks among the waiting keys (`priority`); lower goes first."""
        return rank_of(getattr(job.work, "payload", None), self.spec.priority)


class Destinations:
    """Every configured destination, and the API-key limiters they share."""

    def __init__(self, settings: DeliverySettings) -> None:
        self.settings = settings
        self._states: dict[str, DestinationState] = {}
        self._key_limiters: dict[str, RollingWindowLimiter] = {}

    def configure(self, specs: Mapping[str, Destination], tokens: Mapping[str, SecretStr]) -> None:
        """Applies a (re)loaded configuration; queues, holds and spent budget carry over."""
        margin = self.settings.rate_limit_margin_seconds
        window = self.settings.rate_limit_window_seconds
        for name, spec in specs.items():
            token = tokens[name]
            key = token.get_secret_value()  # limiter per API key; the dict never leaves here
            key_limiter = self._key_limiters.setdefault(
                key,
                RollingWindowLimiter(
                    self.settings.requests_per_minute_per_api_key, window, margin=margin
                ),
            )
            state = self._states.get(name)
            if state is None:
                self._states[name] = DestinationState(
                    name, spec, token, key_limiter, margin, window
                )
            else:
                state.spec, state.token, state.key_limiter = spec, token, key_limiter

    def __getitem__(self, name: str) -> DestinationState:
        return self._states[name]

    def __iter__(self) -> Iterator[DestinationState]:
        return iter(self._states.values())

    def held(self) -> int:
        return sum(1 for s in self._states.values() if s.held_reason is not None)

    def share(
        self,
        owned_partitions: int,
        total_partitions: int,
        demand: Mapping[str, tuple[int, int]] | None = None,
        *,
        now: float = 0.0,
        raise_after: float = 0.0,
    ) -> None:
        """Sets every limiter to this replica's share of its limit: by partitions owned, or
        given `demand` (per destination: this replica's and the group's partitions with
        deliveries waiting for it), mostly by demand (`share_by_demand`); a raise then
        waits `raise_after` seconds, a cut applies at once."""
        key_limit = self.settings.requests_per_minute_per_api_key
        share = self.settings.rate_limit_share
        if share != "partitions":
            fraction = float(share)
            for state in self._states.values():
                state.limiter.set_limit(max(1, int(state.spec.events_per_minute * fraction)))
                state.share_basis = f"a fixed share (rate_limit_share: {share})"
            for limiter in self._key_limiters.values():
                limiter.set_limit(max(1, int(key_limit * fraction)))
            return
        key_demand: dict[int, tuple[int, int]] = {}
        for state in self._states.values():
            mine, group = (demand or {}).get(state.name, (0, 0))
            limit = share_by_demand(
                state.spec.events_per_minute, owned_partitions, total_partitions, mine, group
            )
            state.limiter.set_limit(limit, now=now, raise_after=raise_after)
            state.share_basis = (
                f"by demand: {mine} of the group's {group} partitions with deliveries "
                "waiting for it are this member's"
                if group > 0
                else f"by partitions: {owned_partitions} of {total_partitions} owned"
            )
            before = key_demand.get(id(state.key_limiter), (0, 0))
            key_demand[id(state.key_limiter)] = (before[0] + mine, before[1] + group)
        for limiter in self._key_limiters.values():
            mine, group = key_demand.get(id(limiter), (0, 0))
            limit = share_by_demand(key_limit, owned_partitions, total_partitions, mine, group)
            limiter.set_limit(limit, now=now, raise_after=raise_after)

    def limiters(self) -> Iterator[tuple[RollingWindowLimiter, int, list[str]]]:
        """Each API-key limiter, its whole limit, and the destinations that share it."""
        for limiter in self._key_limiters.values():
            names = [s.name for s in self._states.values() if s.key_limiter is limiter]
            yield limiter, self.settings.requests_per_minute_per_api_key, names

    def drop(self, partitions: Collection[Partition]) -> list[Job]:
        """Every queued delivery of these partitions, taken out of its queue."""
        # Split first, release after (the caller): releasing a job activates the next job
        # of its key, which may be appended to the very queue being split.
        dropped: list[Job] = []
        for state in self._states.values():
            dropped += state.drop(partitions)
        return dropped

    def earliest_starts(self, now: float) -> Iterator[tuple[Partition, float]]:
        """Each non-empty queue's head partition, and when it could start."""
        for state in self._states.values():
            if state.ready:
                yield state.ready[0].partition, state.earliest_start(now)
