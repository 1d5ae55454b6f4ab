"""Liveness: why each destination's oldest waiting key waits, and when a wait is a stall.

Guarantee 10 (docs/design.md, "Liveness"): a wait always has a reason a person can read,
and a wait without one is a bug. `explain` names the one constraint that holds a waiting
key back, read from the parts without changing them (the limiters' `why`, the hand-over,
the hold); `StallWatch` notices a destination whose keys have waited past a threshold with
nothing started and neither a hold nor a 429's pause to explain it. Both run only in the
`/pending` refresh (about once a second, `pending.py`), never on the hot path.

Reasons, each with its words in `Wait.detail` (destination names, partitions, counts,
limits and other members' writer ids: never a payload or a secret):

- `turn`: a slot is free, but keys ranked before it go first, or every worker is busy;
- `window`: this member's own starts fill its limit (the whole limit is its share);
- `share`: its own starts fill its share, cut below the limit (by partitions owned, by
  where deliveries wait, a fixed fraction, or a raise announced and not yet taken);
- `ceiling`: the group's limit is full with the other members' starts and shares (the
  writers that fill it are named);
- `note`: a note must reach the broker first (its partition's claim is not confirmed, or
  more starts than the tail allows are not in a confirmed note yet);
- `api-key`: the API key's limit, shared with other destinations (which part of it);
- `hold`: held after 401/403/404 or a redirect; `paused`: a 429's retry-after;
- `backoff`: a retry after a 5xx or a transport error; `hand-over`: its partition is
  being released (the next owner sends it).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from streamer.config import DeliverySettings
from streamer.destinations import DestinationState
from streamer.handover import HandOver
from streamer.ledger import Partition
from streamer.rate_limit import Binding, RollingWindowLimiter

log = logging.getLogger(__name__)

Reason = Literal[
    "turn",
    "window",
    "share",
    "ceiling",
    "note",
    "api-key",
    "hold",
    "paused",
    "backoff",
    "hand-over",
]


def stall_threshold(settings: DeliverySettings) -> float:
    """How long a destination may wait with nothing started before it is stalled:
    `stall_warning_seconds`, or two rate-limit windows. A limit alone holds a start back
    at most a window after the answer that took its slot (and a stale or skewed note a
    window after it was first seen, docs/design.md "Liveness"); twice that is a bug."""
    if settings.stall_warning_seconds is not None:
        return settings.stall_warning_seconds
    return 2 * (settings.rate_limit_window_seconds + settings.rate_limit_margin_seconds)


@dataclass(frozen=True)
class Wait:
    """Why a key waits, in words a person reads."""

    reason: Reason
    detail: str
    until: float | None = None  # monotonic: when it frees, if known
    writers: tuple[str, ...] = ()  # the ceiling's: the other members that fill it

    def as_json(self, now: float) -> dict[str, Any]:
        out: dict[str, Any] = {"reason": self.reason, "detail": self.detail}
        if self.until is not None and math.isfinite(self.until):
            out["frees_in_seconds"] = round(max(0.0, self.until - now), 3)
        if self.writers:
            out["writers"] = list(self.writers)
        return out


@dataclass(frozen=True)
class KeyLimit:
    """An API key's limiter as its destinations share it: its whole limit, with whom, and
    what keeps its next start back (`why`, worked out once per look for all of them)."""

    limiter: RollingWindowLimiter
    limit: int
    destinations: tuple[str, ...]
    binding: Binding | None


def explain(
    state: DestinationState,
    now: float,
    *,
    key_limit: KeyLimit,
    workers_free: bool,
) -> Wait:
    """Why the head of `state`'s queue does not start now (its partition aside: see
    `partition_wait`). `turn` when nothing else holds it."""
    if state.held_reason is not None:
        return Wait(
            "hold",
            "held after 401/403/404 or a redirect: one probe every hold_retry_seconds",
            state.probe_at,
        )
    source, key = state.limiter.why(now), key_limit.binding
    if source is not None and (key is None or source.until >= key.until):
        return _limited(source, state.spec.events_per_minute, state.limiter, state.share_basis)
    if key is not None:
        inner = _limited(key, key_limit.limit, key_limit.limiter, "", "the API key's")
        shared = ", ".join(key_limit.destinations)
        return Wait(
            "api-key",
            f"{inner.reason}: {inner.detail} (the API key is shared by {shared})",
            inner.until,
            inner.writers,
        )
    if not workers_free:
        return Wait("turn", "a slot is free: every worker is busy with a request")
    return Wait("turn", "a slot is free: keys ranked before it go first")


def partition_wait(partition: Partition, now: float, handover: HandOver) -> Wait | None:
    """Why nothing of `partition` may start now, if something about it says so."""
    topic, number = partition
    if partition in handover.unclaimed():
        return Wait(
            "note",
            f"{topic}[{number}] is not claimed yet: nothing of it starts before a commit "
            "with this member's note is confirmed (and the previous owner's note is read)",
        )
    last = handover.last_start(partition)
    if now >= last:
        return Wait(
            "hand-over",
            f"{topic}[{number}] is being released: too late to start before its drain "
            "ends; the next owner sends it",
        )
    return None


def _limited(
    binding: Binding,
    whole: int,
    limiter: RollingWindowLimiter,
    basis: str,
    what: str = "its alert source's",
) -> Wait:
    """A limiter's binding constraint in words; `whole`: the limit before any share."""
    own, limit = binding.own, binding.limit
    match binding.constraint:
        case "paused":
            return Wait(
                "paused", "incident.io answered 429: paused until its retry-after", binding.until
            )
        case "ceiling":
            others = ", ".join(f"{w} ({n})" for w, n in binding.writers) or "none"
            return Wait(
                "ceiling",
                f"the group's rate limit of {binding.ceiling} a minute is full: this member "
                f"started {own} in the last window, the other members count for (their "
                f"starts or their share, whichever is more): {others}",
                binding.until,
                tuple(w for w, _ in binding.writers),
            )
        case "tail":
            return Wait(
                "note",
                f"{limiter.tail} starts are not in a confirmed note yet (the tail a kill "
                "could hide): waiting for the next commit",
                binding.until,
            )
    raising = limiter.announced > limit
    if limit >= whole and not raising:
        return Wait(
            "window",
            f"{what} rate limit: this member started {own} in the last window, its whole "
            f"limit of {limit} a minute",
            binding.until,
        )
    how = f" ({basis})" if basis else ""
    raise_words = f"; a raise to {limiter.announced} is announced, not taken yet" if raising else ""
    return Wait(
        "share",
        f"{what} rate limit: this member started {own} in the last window, its share of "
        f"{limit} of {whole} a minute{how}{raise_words}",
        binding.until,
    )


def stalled_since(state: DestinationState, oldest_since: float, now: float) -> float | None:
    """Since when `state` has had keys waiting with nothing started and neither a hold
    nor a 429's pause to explain it (None: a hold or a pause explains the wait)."""
    if state.held_reason is not None or state.limiter.paused_until > now:
        return None
    since = max(oldest_since, state.last_start)
    paused = state.limiter.paused_until
    if math.isfinite(paused):
        since = max(since, paused)  # a pause that ended: the wait begins again then
    return since


class StallWatch:
    """Which destinations are stalled (waited past `threshold` seconds with nothing
    started and no hold or 429): each stall is logged once, as a warning naming its
    reason, and its end once; never a line per look."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        # destination -> (waiting since, why) as the stall began: one stall keeps one
        # reason in the gauge's label (an alert's series), however its binding shifts
        self._stalled: dict[str, tuple[float, Wait]] = {}

    def observe(
        self, now: float, waiting: Mapping[str, tuple[float, Wait, int]]
    ) -> dict[str, tuple[float, Wait]]:
        """`waiting`: per destination with keys waiting and no hold or pause, since when
        nothing started, why its oldest key waits, and how many keys wait. Returns the
        stalled ones (since, and why as the stall began); logs the stalls that begin and
        end. A stall ends when something starts (or a hold or 429 explains the wait)."""
        stalled = {
            name: (since, why)
            for name, (since, why, _) in waiting.items()
            if now - since >= self.threshold
        }
        for name in [n for n in self._stalled if n not in stalled]:
            log.info(
                "destination %s is no longer stalled (after %.0f s)",
                name,
                now - self._stalled.pop(name)[0],
                extra={"destination": name},
            )
        for name, (since, why) in stalled.items():
            if name in self._stalled:
                continue  # logged when it began: its reason may change, /pending says
            self._stalled[name] = (since, why)
            log.warning(
                "destination %s is stalled: %d keys have waited %.0f s with nothing started "
                "and no hold or 429 to explain it: %s: %s",
                name,
                waiting[name][2],
                now - since,
                why.reason,
                why.detail,
                extra={"destination": name, "reason": why.reason},
            )
        return dict(self._stalled)
