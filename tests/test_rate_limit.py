"""No rolling window ever admits more than the limit; a 429 pauses the whole limiter."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.rate_limit import RollingWindowLimiter, acquire, share_of


def run(limiters, arrivals: list[float]) -> list[float]:
    """Each request waits until the limiters let it start; returns the start times."""
    starts = []
    now = 0.0
    for arrival in sorted(arrivals):
        now = max(now, arrival)
        while (retry_at := acquire(limiters, now)) is not None:
            assert retry_at > now
            now = retry_at
        starts.append(now)
    return starts


def assert_never_more_than(limit: int, window: float, starts: list[float]) -> None:
    # In any window [t, t + window) at most `limit` starts <=> any limit + 1 consecutive
    # starts span at least a whole window.
    for first, last in zip(starts, starts[limit:], strict=False):
        assert last - first >= window - 1e-9, (first, last)


@settings(max_examples=300, deadline=None)
@given(
    limit=st.integers(1, 20),
    window=st.floats(0.5, 120),
    arrivals=st.lists(st.floats(0, 600), max_size=200),
)
def test_no_rolling_window_ever_holds_more_than_the_limit(limit, window, arrivals) -> None:
    limiter = RollingWindowLimiter(limit, window, margin=0.0)
    assert_never_more_than(limit, window, run([limiter], arrivals))


@settings(max_examples=100, deadline=None)
@given(limit=st.integers(1, 30), windows=st.integers(1, 5))
def test_a_busy_destination_gets_the_whole_limit(limit, windows) -> None:
    # Never more than allowed, but not less either: the limit is what incident.io grants.
    limiter = RollingWindowLimiter(limit, 60.0, margin=0.0)
    starts = run([limiter], [0.0] * (limit * windows))
    assert starts[-1] == 60.0 * (windows - 1)


def test_the_margin_widens_the_window_for_network_latency() -> None:
    limiter = RollingWindowLimiter(2, 60.0, margin=0.5)
    starts = run([limiter], [0, 0, 0])
    assert starts == [0, 0, 60.5]


@settings(max_examples=200, deadline=None)
@given(arrivals=st.lists(st.floats(0, 300), max_size=120))
def test_source_and_key_limits_hold_together(arrivals) -> None:
    source = RollingWindowLimiter(5, 60.0, margin=0.0)
    api_key = RollingWindowLimiter(3, 10.0, margin=0.0)
    starts = run([source, api_key], arrivals)
    assert_never_more_than(5, 60.0, starts)
    assert_never_more_than(3, 10.0, starts)


def test_a_429_pauses_the_whole_limiter_until_its_retry_after() -> None:
    limiter = RollingWindowLimiter(100, 60.0)
    assert acquire([limiter], 0.0) is None
    limiter.pause_until(30.0)
    assert acquire([limiter], 1.0) == 30.0  # every request waits, not just the one
    assert acquire([limiter], 30.0) is None
    limiter.pause_until(10.0)  # an earlier pause does not shorten a later one
    assert limiter.paused_until == 30.0


def test_a_lower_share_applies_from_now_on() -> None:
    limiter = RollingWindowLimiter(4, 60.0, margin=0.0)
    for t in range(3):
        assert acquire([limiter], float(t)) is None
    limiter.set_limit(2)  # replicas joined: 3 starts in the window already exceed 2
    assert acquire([limiter], 3.0) == 61.0  # wait until only 1 start is left in the window


@settings(max_examples=300)
@given(limit=st.integers(1, 2000), split=st.lists(st.integers(1, 50), min_size=1, max_size=12))
def test_replica_shares_never_add_up_to_more_than_the_limit(limit, split) -> None:
    total = sum(split)
    shares = [share_of(limit, owned, total) for owned in split]
    assert all(share >= 1 for share in shares)
    if all(limit * owned // total >= 1 for owned in split):
        assert sum(shares) <= limit
    # Otherwise a replica's exact share is below one request per window; it still gets one
    # (a partition that cannot deliver would stall its alerts), which the docs call out.
