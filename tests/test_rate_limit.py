"""No rolling window ever admits more than the limit; a 429 pauses the whole limiter."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.rate_limit import RollingWindowLimiter, acquire, share_by_demand, share_of


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


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 20),
    st.lists(st.floats(0, 30), max_size=40),
    st.lists(st.floats(0.0, 3.0), min_size=1, max_size=300),
)
def test_inherited_starts_count_like_our_own(limit, inherited, gaps) -> None:
    """A partition's next owner counts what its previous owner started in the window."""
    limiter = RollingWindowLimiter(limit, 10.0, margin=0.0)
    limiter.inherit(sorted(inherited))
    ours, now = [], 30.0
    for gap in gaps:
        now += gap
        if acquire([limiter], now) is None:
            ours.append(now)
    starts = sorted([*inherited, *ours])
    for t in ours:  # every window that ends with a start of ours holds at most the limit
        assert sum(1 for s in starts if t - 10.0 < s <= t) <= limit


def test_a_slot_is_kept_until_a_window_after_the_answer() -> None:
    limiter = RollingWindowLimiter(1, 10.0, margin=0.0)
    assert acquire([limiter], 0.0) is None
    limiter.ended(0.0, 3.0)  # incident.io may have counted it as late as 3.0
    assert acquire([limiter], 10.5) == 13.0


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 5),
    st.lists(st.tuples(st.floats(0, 3), st.floats(0, 1)), min_size=1, max_size=60),
    st.integers(1, 4),
)
def test_arrivals_never_exceed_the_limit_whatever_each_request_takes(
    limit, requests, burst
) -> None:
    """Each request arrives at incident.io some time between its start and its answer
    (latency below the window): counted at its answer, arrivals stay within the limit."""
    window, step = 10.0, 0.1
    limiter = RollingWindowLimiter(limit, window, margin=0.0)
    todo, in_flight, arrivals = list(requests), [], []
    now = 0.0
    while todo or in_flight:
        for start, end in [r for r in in_flight if r[1] <= now]:
            limiter.ended(start, end)
            in_flight.remove((start, end))
        for _ in range(burst):
            if todo and acquire([limiter], now) is None:
                latency, at = todo.pop()
                in_flight.append((now, now + latency))
                arrivals.append(now + at * latency)
        now = round(now + step, 6)
    assert_never_more_than(limit, window, sorted(arrivals))


def test_others_starts_count_against_the_ceiling() -> None:
    limiter = RollingWindowLimiter(10, 10.0, margin=0.0)
    limiter.set_ceiling(10, [([1.0] * 8, 0)])  # the rest of the group spent 8
    assert acquire([limiter], 2.0) is None
    assert acquire([limiter], 2.0) is None
    assert acquire([limiter], 2.0) == 11.0  # 10 in the window: wait for theirs to leave it


def test_another_members_share_is_kept_for_it_when_its_old_starts_leave() -> None:
    """The room its old starts leave is its own to refill: taking it too would let two
    members start into the same room."""
    limiter = RollingWindowLimiter(10, 10.0, margin=0.0)
    limiter.set_ceiling(10, [([1.0] * 2, 6)])  # spent 2 of a share of 6
    assert sum(acquire([limiter], 2.0) is None for _ in range(10)) == 4
    assert acquire([limiter], 11.5) == 12.0  # theirs left, their share did not: ours must
    limiter.set_ceiling(10, [([11.0] * 9, 6)])  # over its share (after a cut): 9 count
    assert acquire([limiter], 12.0) is None  # ours left the window: 9 + 1
    assert acquire([limiter], 12.0) == 21.0  # the first of its 9 to leave makes room


def test_a_pending_raise_is_announced_before_it_is_taken() -> None:
    limiter = RollingWindowLimiter(10, 60.0)
    limiter.set_limit(30, now=0.0, raise_after=2.0)
    assert (limiter.limit, limiter.announced) == (10, 30)
    limiter.set_limit(5, now=1.0, raise_after=2.0)
    assert (limiter.limit, limiter.announced) == (5, 5)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(2, 4),
    st.lists(
        st.tuples(st.floats(0, 30), st.lists(st.integers(1, 10), min_size=4, max_size=4)),
        max_size=6,
    ),
    st.floats(0.0, 1.4),
    st.integers(1, 6),
)
def test_members_that_see_each_other_late_never_exceed_the_group_limit(
    members, changes, lag, burst
) -> None:
    """Each member has its own limiter and share; shares change (cuts at once, raises
    after `raise_after`); each sees the others' starts and announced shares only as they
    were `lag` seconds ago, read again every `view` seconds, with lag + view below
    raise_after (as a note and a view are). Whatever the changes, every window of the
    group's starts holds at most the limit."""
    limit, window, view, raise_after, step = 40, 10.0, 0.5, 2.0, 0.05
    shares_at = [(0.0, [1] * 4), *sorted(changes)]
    limiters = [RollingWindowLimiter(limit // members, window, margin=0.0) for _ in range(members)]
    starts: list[list[float]] = [[] for _ in range(members)]
    announced: list[list[tuple[float, int]]] = [[] for _ in range(members)]
    group: list[float] = []
    for k in range(int(45 / step)):
        now = k * step
        weights = [w for at, w in shares_at if at <= now][-1][:members]
        for i, limiter in enumerate(limiters):
            limiter.set_limit(limit * weights[i] // sum(weights), now=now, raise_after=raise_after)
            announced[i].append((now, limiter.announced))
        seen = now - lag
        for i, limiter in enumerate(limiters):
            if k % int(view / step) == i % int(view / step):  # each its own view times
                others = [
                    (
                        [t for t in starts[j] if t <= seen],
                        [a for at, a in announced[j] if at <= seen][-1],
                    )
                    for j in range(members)
                    if j != i and announced[j][0][0] <= seen
                ]
                limiter.set_ceiling(limit, others)
            for _ in range(burst):
                if acquire([limiter], now) is None:
                    starts[i].append(now)
                    group.append(now)
    assert_never_more_than(limit, window, sorted(group))


def test_starts_no_confirmed_note_covers_are_capped_by_the_tail() -> None:
    limiter = RollingWindowLimiter(100, 10.0, margin=0.0)
    limiter.promise(3)
    for _ in range(3):
        assert acquire([limiter], 1.0) is None
    assert acquire([limiter], 1.0) is not None  # a kill now would hide at most 3
    limiter.confirmed(1.0)
    assert acquire([limiter], 1.1) is None


@given(
    st.integers(20, 5000),
    st.lists(st.tuples(st.integers(1, 8), st.integers(0, 8)), min_size=1, max_size=6),
)
def test_shares_by_demand_add_up_to_the_limit_at_most(limit, replicas) -> None:
    """Each replica: (partitions owned, of them with deliveries waiting)."""
    total = sum(owned for owned, _ in replicas)
    group = sum(min(w, owned) for owned, w in replicas)
    shares = [share_by_demand(limit, owned, total, min(w, owned), group) for owned, w in replicas]
    # rounded down, but at least one each (as share_of): only those can tip it over
    exact = [
        limit
        * (0.05 * owned / total + (0.95 * min(w, owned) / group if group else 0.95 * owned / total))
        for owned, w in replicas
    ]
    assert sum(shares) <= limit + sum(1 for e in exact if e < 1)


def test_a_replica_with_all_the_demand_gets_nearly_all_the_limit() -> None:
    # three replicas of one partition each; the hot key's partition is on the first
    shares = [share_by_demand(120, 1, 3, mine, 1) for mine in (1, 0, 0)]
    assert shares[0] >= 0.9 * 120
    assert sum(shares) <= 120


def test_a_raise_waits_and_a_cut_applies_at_once() -> None:
    limiter = RollingWindowLimiter(10, 60.0)
    limiter.set_limit(30, now=0.0, raise_after=2.0)
    assert limiter.limit == 10  # the others have not seen why yet
    limiter.set_limit(30, now=2.0, raise_after=2.0)
    assert limiter.limit == 30
    limiter.set_limit(5, now=2.1, raise_after=2.0)
    assert limiter.limit == 5


def test_shares_that_fill_the_limit_leave_one_start_a_window() -> None:
    """More replicas than a limit allows (each keeps a share of at least 1), or a raise
    announced before another's cut is seen: keeping every share would leave nobody room
    at all; while this member has no start in the window they are kept in proportion,
    one start of room left; once it has one, they count whole."""
    limiter = RollingWindowLimiter(1, 10.0, margin=0.0)
    limiter.set_ceiling(2, [([], 1), ([], 1)])
    assert acquire([limiter], 0.0) is None
    limiter = RollingWindowLimiter(120, 10.0, margin=0.0)
    limiter.set_ceiling(120, [([], 60), ([], 60)])
    assert sum(acquire([limiter], 0.0) is None for _ in range(120)) == 1
    assert acquire([limiter], 9.9) is not None
    assert acquire([limiter], 10.0) is None  # its start left the window: one more


def test_shares_that_fill_the_limit_count_whole_once_this_member_has_started() -> None:
    """The simulator's short seed 703: notes could not be read for seconds, so shares
    announced by demand added up past the limit (14 and 4 of 15), and kept in proportion
    (10 and 3) at every start, they let this member start one past the limit while the
    others had started all they announced (16 arrivals in 15). A member that has started
    in the window counts each other one as its whole share."""
    limiter = RollingWindowLimiter(3, 20.0, margin=0.0)
    limiter.set_ceiling(15, [([0.0] * 9, 14), ([1.0], 4)])
    assert acquire([limiter], 2.0) is None  # no start of ours in the window: one of room
    assert acquire([limiter], 3.0) is not None  # 14 + 4 counted whole: none
    assert limiter.why(3.0) is not None and limiter.why(3.0).constraint == "ceiling"


def test_a_request_longer_than_the_window_keeps_its_slot_from_its_answer() -> None:
    limiter = RollingWindowLimiter(1, 10.0, margin=0.0)
    assert acquire([limiter], 0.0) is None
    assert limiter.next_start(11.0) == 11.0  # its start left the window (still in flight)
    limiter.ended(0.0, 12.0)
    assert acquire([limiter], 12.5) == 22.0
