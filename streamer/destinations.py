"""Destinations: where each waiting delivery stands, and whether it may start now.

Each destination (an alert source with its token) has a queue of deliveries whose key is
free (per-key order is the ledger's job: only a key's active delivery is ever queued
here), two rolling-window limiters (its alert source's and its API key's, the latter
shared by every destination with the same token), and a hold.

Invariants:

- **Limits.** A delivery starts only when both limiters have a slot, taken together (all
  or nothing). A 429 pauses the alert source's limiter until its retry-after.
- **Holds.** A destination that answers 401/403/404 or a redirect is misconfigured, not
  its events: it is held; nothing of it starts except one probe every
  `hold_retry_seconds`; the first answer that is not a hold releases it. Other
  destinations keep flowing.
- **Shares.** Replicas split each limit by the partitions they own (or a fixed fraction),
  so the group never starts more than the limit.

Pure: plain values and the caller's clock (monotonic seconds); nothing here sleeps.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Literal

from pydantic import SecretStr

from streamer.config import DeliverySettings, Destination
from streamer.failure_policy import Accepted, Decision, HoldDestination
from streamer.ledger import Job, Partition
from streamer.rate_limit import RollingWindowLimiter, acquire, share_of

HoldChange = Literal["held", "released"] | None


class DestinationState:
    def __init__(
        self,
        name: str,
        spec: Destination,
        token: SecretStr,
        key_limiter: RollingWindowLimiter,
        margin: float,
    ) -> None:
        self.name = name
        self.spec = spec
        self.token = token
        self.limiter = RollingWindowLimiter(spec.events_per_minute, 60.0, margin=margin)
        self.key_limiter = key_limiter
        self.ready: deque[Job] = deque()  # active deliveries, oldest first
        self.held_reason: str | None = None
        self.probe_at = 0.0
        self.probing = False  # the one request a held destination may have in flight

    def may_start(self, now: float) -> bool:
        """Takes the slot for the queue's head if it may start now (hold, limiters)."""
        if self.held_reason is not None:
            if self.probing or now < self.probe_at:
                return False
            self.probing = True
        if acquire([self.limiter, self.key_limiter], now) is not None:
            self.probing = False
            return False
        return True

    def earliest_start(self, now: float) -> float:
        """When the queue's head could start at the earliest (for drains)."""
        start = max(self.limiter.next_start(now), self.key_limiter.next_start(now))
        if self.held_reason is not None:
            start = max(start, self.probe_at)
        return start

    def request_ended(self) -> bool:
        """A request of this destination came back (answered or not); was it the probe?"""
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
        dropped = [job for job in self.ready if job.partition in partitions]
        if dropped:
            self.ready = deque(job for job in self.ready if job.partition not in partitions)
        return dropped


class Destinations:
    """Every configured destination, and the API-key limiters they share."""

    def __init__(self, settings: DeliverySettings) -> None:
        self.settings = settings
        self._states: dict[str, DestinationState] = {}
        self._key_limiters: dict[str, RollingWindowLimiter] = {}

    def configure(self, specs: Mapping[str, Destination], tokens: Mapping[str, SecretStr]) -> None:
        """Applies a (re)loaded configuration; queues, holds and spent budget carry over."""
        margin = self.settings.rate_limit_margin_seconds
        for name, spec in specs.items():
            token = tokens[name]
            key = token.get_secret_value()  # limiter per API key; the dict never leaves here
            key_limiter = self._key_limiters.setdefault(
                key,
                RollingWindowLimiter(
                    self.settings.requests_per_minute_per_api_key, 60.0, margin=margin
                ),
            )
            state = self._states.get(name)
            if state is None:
                self._states[name] = DestinationState(name, spec, token, key_limiter, margin)
            else:
                state.spec, state.token, state.key_limiter = spec, token, key_limiter

    def __getitem__(self, name: str) -> DestinationState:
        return self._states[name]

    def __iter__(self) -> Iterator[DestinationState]:
        return iter(self._states.values())

    def held(self) -> int:
        return sum(1 for s in self._states.values() if s.held_reason is not None)

    def share(self, owned_partitions: int, total_partitions: int) -> None:
        """Sets every limiter to this replica's share of its limit."""
        share = self.settings.rate_limit_share
        limit_of: Callable[[int], int]
        if share == "partitions":

            def limit_of(limit: int) -> int:
                return share_of(limit, owned_partitions, total_partitions)

        else:
            fraction = float(share)

            def limit_of(limit: int) -> int:
                return max(1, int(limit * fraction))

        for state in self._states.values():
            state.limiter.set_limit(limit_of(state.spec.events_per_minute))
        for limiter in self._key_limiters.values():
            limiter.set_limit(limit_of(self.settings.requests_per_minute_per_api_key))

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
