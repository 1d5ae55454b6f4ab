"""The group's shared budget: what a partition's next owner inherits through its notes."""

from __future__ import annotations

import bisect

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from streamer.budget import PartitionNote, Spent, encode
from streamer.config import DeliverySettings, Destination, TokenSource
from streamer.destinations import Destinations
from streamer.group_budget import GroupBudget
from streamer.ledger import DeliveryLedger, OrderingKey

P0, P1 = ("events", 0), ("events", 1)
WALL = 1_790_000_000.0  # wall clock = monotonic + WALL in these tests


def member(limit: int = 10, writer: str = "w") -> tuple[GroupBudget, Destinations, DeliveryLedger]:
    spec = Destination(
        alert_source_config_id="SRC", token=TokenSource(env="T"), events_per_minute=limit
    )
    ds = Destinations(DeliverySettings(rate_limit_margin_seconds=0.0))
    ds.configure({"a": spec}, {"a": SecretStr("t1")})
    ledger = DeliveryLedger()
    budget = GroupBudget(ds, ledger, tail_seconds=1.0, writer=writer)
    return budget, ds, ledger


def start(ds: Destinations, ledger: DeliveryLedger, partition, offset: int, now: float) -> bool:
    """One delivery of `partition` at the head of the queue asks for a slot."""
    [job] = ledger.add(partition, offset, [(OrderingKey("a", f"k{offset}"), "work")])
    ds["a"].ready.add(job, rank=0)
    started = ds["a"].take_slot(now)
    ds["a"].ready.drop([partition])
    return started


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 10), st.booleans())
def test_the_next_owner_starts_no_more_than_the_limit_in_the_window(spent, clean) -> None:
    """An owner spends `spent` of 10 on P0 and hands it over cleanly (or is killed): the
    next owner, a new process, never starts more than what is left in that window."""
    old, old_ds, old_ledger = member(writer="old")
    old_ledger.assign(P0)
    old.promise_tails()
    for offset in range(spent):
        now = 1.0 + offset * 0.01
        if not start(old_ds, old_ledger, P0, offset, now):
            break
        old.confirmed(now)  # each start's note confirmed (a kill hides nothing)
    offset = old_ledger.commit_offset(P0) or 0
    note = old.notes({P0: offset}, now=2.0, wall=WALL + 2.0, final=clean)[P0]
    new, new_ds, new_ledger = member(writer="new")
    new_ledger.assign(P0)
    new.take_over(P0, note, offset, now=3.0, wall=WALL + 3.0)  # another clock: wall matters
    started_before = sum(1 for t in old_ds["a"].spent.get(P0, ()) if t > 0)
    more = sum(start(new_ds, new_ledger, P0, 100 + i, 3.5) for i in range(20))
    assert started_before + more <= 10


def test_a_kill_hides_at_most_the_tail_and_the_next_owner_counts_it() -> None:
    old, old_ds, old_ledger = member(writer="old")
    old_ledger.assign(P0)
    old.promise_tails()
    tail = old_ds["a"].limiter.tail
    assert tail is not None
    note = old.notes({P0: 0}, now=1.0, wall=WALL + 1.0, final=False)[P0]  # then a kill
    hidden = sum(start(old_ds, old_ledger, P0, i, 1.5) for i in range(20))
    assert hidden == tail  # the writer kept its promise
    new, new_ds, new_ledger = member(writer="new")
    new_ledger.assign(P0)
    new.take_over(P0, note, 0, now=2.0, wall=WALL + 2.0)
    more = sum(start(new_ds, new_ledger, P0, 100 + i, 2.5) for i in range(20))
    assert hidden + more <= 10


def test_offsets_terminal_above_the_watermark_are_skipped_by_the_next_owner() -> None:
    old, _, old_ledger = member()
    old_ledger.assign(P0)
    old_ledger.add(P0, 0, [(OrderingKey("a", "x"), "still in flight")])
    [second] = old_ledger.add(P0, 1, [(OrderingKey("a", "y"), "done")])
    old_ledger.add(P0, 2, [])  # dropped by the rules
    old_ledger.finish(second)
    note = old.notes({P0: 0}, now=1.0, wall=WALL, final=False)[P0]
    new, _, new_ledger = member(writer="new")
    new_ledger.assign(P0)
    new.take_over(P0, note, 0, now=1.0, wall=WALL)
    assert [o for o in range(4) if new.already_done(P0, o)] == [1, 2]


def test_a_429_pause_is_handed_over() -> None:
    old, old_ds, old_ledger = member()
    old_ledger.assign(P0)
    old_ds["a"].rate_limited(until=40.0)
    note = old.notes({P0: 0}, now=10.0, wall=WALL + 10.0, final=True)[P0]
    new, new_ds, new_ledger = member(writer="new")
    new_ledger.assign(P0)
    new.take_over(P0, note, 0, now=500.0, wall=WALL + 20.0)  # 10 s later, another clock
    assert new_ds["a"].limiter.paused_until >= 520.0


def test_a_dead_members_pause_seen_in_a_view_is_not_taken_again_whole_at_its_hand_over() -> None:
    """The simulator's short seed 935: a member paused 600 s by a 429 is killed; its note,
    seen in the group's views, is taken over 20 s later (the session timeout). Read as
    written at the take-over, the pause ran 20 s past what incident.io asked for (and
    again at the next hand-over): a source started nothing for two windows after the
    pause was over. Read from when its write time was first seen, it ends on time (later,
    never earlier: the rounding of a tick)."""
    dead, dead_ds, dead_ledger = member(writer="dead")
    dead_ledger.assign(P0)
    dead_ds["a"].rate_limited(until=601.0)
    note = dead.notes({P0: 0}, now=1.0, wall=WALL + 1.0, final=False)[P0]
    new, new_ds, new_ledger = member(writer="new")
    new_ledger.assign(P1)
    new.observe({P0: (0, note)}, now=1.5, wall=WALL + 1.5, total_partitions=2)  # a view
    new_ledger.assign(P0)
    new.take_over(P0, note, 0, now=21.0, wall=WALL + 21.0)
    assert 601.0 <= new_ds["a"].limiter.paused_until <= 602.0


def test_a_replica_with_the_only_demand_gets_nearly_all_of_the_limit_after_a_delay() -> None:
    """Three partitions on three replicas, one hot key on P0: its owner's share grows to
    >= 0.9 of the limit once the others could have seen its demand; theirs stay small."""
    hot, hot_ds, hot_ledger = member(limit=30, writer="hot")
    hot_ledger.assign(P0)
    hot.promise_tails()
    hot_ds.share(1, 3)
    assert hot_ds["a"].limiter.limit == 10  # by partitions, before any demand is seen
    [job] = hot_ledger.add(P0, 0, [(OrderingKey("a", "hot"), "work")])
    hot_ds["a"].ready.add(job, rank=0)
    quiet = {("events", 1): (0, None), ("events", 2): (0, None)}
    hot.observe(quiet, now=1.0, wall=WALL + 1.0, total_partitions=3)
    assert hot_ds["a"].limiter.limit == 10  # a raise waits for the others to see it
    hot.observe(quiet, now=1.0 + hot.raise_after, wall=WALL, total_partitions=3)
    assert hot_ds["a"].limiter.limit >= 27


def test_what_others_started_counts_against_the_whole_limit() -> None:
    busy, busy_ds, busy_ledger = member(limit=10, writer="busy")
    busy_ledger.assign(P0)
    for offset in range(8):
        assert start(busy_ds, busy_ledger, P0, offset, 1.0)
    busy_ds.share(1, 2)  # its share cut to 5 after it spent 8 (a rebalance)
    note = busy.notes({P0: 0}, now=1.0, wall=WALL + 1.0, final=False)[P0]
    other, other_ds, other_ledger = member(limit=10, writer="other")
    other_ledger.assign(P1)
    [job] = other_ledger.add(P1, 0, [(OrderingKey("a", "waiting"), "work")])
    other_ds["a"].ready.add(job, rank=0)  # demand on both: a share of 5 each
    other.observe({P0: (0, note)}, now=2.0, wall=WALL + 2.0, total_partitions=2)
    assert other_ds["a"].limiter.limit == 5
    other_ds["a"].ready.drop([P1])
    assert sum(start(other_ds, other_ledger, P1, i, 2.0) for i in range(1, 10)) == 2


def test_starts_and_pauses_from_a_clock_far_ahead_count_as_now_and_end_in_bounds() -> None:
    """A writer whose clock runs a year ahead must not block the destination for a year."""
    from streamer.budget import PartitionNote, Spent, encode
    from streamer.failure_policy import MAX_RETRY_AFTER

    year = 365 * 86400.0
    ahead = PartitionNote(
        writer="skewed",
        final=True,
        spent={"a": Spent(starts=(WALL + year,) * 10, paused_until=WALL + year)},
    )
    budget, ds, ledger = member(limit=10)
    ledger.assign(P0)
    budget.take_over(P0, encode(ahead, 0), 0, now=0.0, wall=WALL)
    limiter = ds["a"].limiter
    assert limiter.next_start(0.0) <= MAX_RETRY_AFTER  # paused, but not for a year
    assert limiter.next_start(MAX_RETRY_AFTER) <= MAX_RETRY_AFTER + limiter.window


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 12), st.integers(0, 4)), min_size=1, max_size=6))
def test_a_chain_of_kills_never_starts_more_than_the_limit_in_a_window(lives) -> None:
    """Incarnation after incarnation takes the partition over, claims it (its note on the
    broker before any start), starts what its limiter allows, commits now and then, and is
    killed at any point: within one window, all of them together start at most the limit."""
    on_broker: str | None = None  # the partition's last confirmed note
    started, now = 0, 1.0
    for life, (attempts, commit_every) in enumerate(lives):
        budget, ds, ledger = member(writer=f"w{life}")
        ledger.assign(P0)
        budget.promise_tails()
        if on_broker is not None:
            budget.take_over(P0, on_broker, 0, now=now, wall=WALL + now)
        on_broker = budget.notes({P0: 0}, now, WALL + now, final=False)[P0]  # the claim
        budget.confirmed(now)
        for attempt in range(attempts):
            now += 0.01
            started += start(ds, ledger, P0, 100 * life + attempt, now)
            if commit_every and attempt % commit_every == 0:
                on_broker = budget.notes({P0: 0}, now, WALL + now, final=False)[P0]
                budget.confirmed(now)
        now += 0.01  # kill -9: whatever was not confirmed is lost with the process
    assert started <= 10


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans(), st.integers(1, 40)), max_size=8))
def test_shares_that_follow_shifting_demand_never_exceed_the_limit_together(phases) -> None:
    """Two replicas, one partition each, their demand switching on and off in phases of 0.5
    to 20 s: every second each commits its note and reads the other's (a view), shares move
    with the demand, and in no window do the two start more than the limit together."""
    limit, step = 10, 0.5
    members = [member(limit=limit, writer=w) for w in ("left", "right")]
    partitions = (P0, P1)
    broker: dict = {}  # partition -> (offset, note): the last confirmed commits
    queued: list = [None, None]  # each replica's head of the queue
    starts: list[float] = []
    for (budget, ds, ledger), p in zip(members, partitions, strict=True):
        ledger.assign(p)
        ds.share(1, 2)
        budget.promise_tails()
    now, offset = 1.0, 0
    for phase in [(True, True, 4), *phases, (False, False, 130)]:
        *demand, ticks = phase
        for _ in range(ticks):
            now += step
            for i, ((budget, ds, ledger), p) in enumerate(zip(members, partitions, strict=True)):
                for _ in range(limit):  # a backlog: as many as the limiter lets start
                    if demand[i] and queued[i] is None:
                        offset += 1
                        key = OrderingKey("a", f"k{offset}")
                        [queued[i]] = ledger.add(p, offset, [(key, "w")])
                        ds["a"].ready.add(queued[i], rank=0)
                    if queued[i] is None or not ds["a"].take_slot(now):
                        break
                    starts.append(now)
                    ds["a"].ready.remove(queued[i])
                    queued[i] = None
                if int(now / step) % int(1 / step) == 0:  # a commit interval: note and view
                    broker[p] = (0, budget.notes({p: 0}, now, WALL + now, final=False)[p])
                    budget.confirmed(now)
                    others = {q: n for q, n in broker.items() if q != p}
                    budget.observe(others, now, WALL + now, total_partitions=2)
    window = members[0][1]["a"].limiter.window
    busiest = max(bisect.bisect_left(starts, t + window) - i for i, t in enumerate(starts))
    assert busiest <= limit


def test_a_partition_handed_back_to_its_writer_is_not_counted_twice() -> None:
    """An eager rebalance takes every partition away and often gives it straight back: our
    own note's starts are in our limiters already."""
    budget, ds, ledger = member(limit=10, writer="same")
    ledger.assign(P0)
    for offset in range(5):
        assert start(ds, ledger, P0, offset, 1.0)
    note = budget.notes({P0: 0}, now=1.0, wall=WALL + 1.0, final=True)[P0]
    for _ in range(2):  # revoked and assigned back, twice
        budget.let_go([P0])
        budget.take_over(P0, note, 0, now=1.5, wall=WALL + 1.5)
    assert len(ds["a"].limiter.starts(2.0)) == 5
    assert sum(start(ds, ledger, P0, 100 + i, 2.0) for i in range(10)) == 5


def test_a_note_that_overflowed_counts_every_limit_as_spent_for_a_window() -> None:
    many = {f"dest-{i}": Spent((WALL,), 0.0, 5, 3) for i in range(2_000)}
    overflowed = encode(PartitionNote("old", final=False, spent=many), 0)
    new, ds, ledger = member(limit=10, writer="new")
    ledger.assign(P0)
    new.take_over(P0, overflowed, 0, now=1.0, wall=WALL + 1.0)
    assert not start(ds, ledger, P0, 1, 2.0)


def test_a_members_announced_share_counts_against_the_others_ceiling_until_it_is_cut() -> None:
    """The shares add up to the limit, but a hand-over moves partitions whose spend was
    uneven; what stops the new owner is the ceiling, so it counts another member as at
    least its announced share (what it may start before its next note is read), not only
    its starts. Once that member's demand is gone its share is cut to the floor, and a hot
    key elsewhere gets nearly the whole limit."""
    busy, busy_ds, busy_ledger = member(limit=10, writer="busy")
    busy_ledger.assign(P0)
    busy_ds.share(1, 2)  # by partitions: 5
    for offset in range(3):
        assert start(busy_ds, busy_ledger, P0, offset, 1.0)
    note = busy.notes({P0: 0}, now=1.0, wall=WALL + 1.0, final=False)[P0]
    other, other_ds, other_ledger = member(limit=10, writer="other")
    other_ledger.assign(P1)
    other.observe({P0: (0, note)}, now=1.5, wall=WALL + 1.5, total_partitions=2)
    other_ds["a"].limiter.set_limit(10)  # its share aside: the ceiling alone
    assert sum(start(other_ds, other_ledger, P1, 100 + i, 1.5) for i in range(10)) == 5
    busy_ds.share(1, 2, {"a": (0, 1)})  # no demand of its own: the floor
    idle = busy.notes({P0: 0}, now=100.0, wall=WALL + 100.0, final=False)[P0]
    other.observe({P0: (0, idle)}, now=100.0, wall=WALL + 100.0, total_partitions=2)
    other_ds["a"].limiter.set_limit(10)
    assert sum(start(other_ds, other_ledger, P1, 200 + i, 100.0) for i in range(10)) == 9
    final = busy.notes({P0: 0}, now=200.0, wall=WALL + 200.0, final=True)[P0]
    other.observe({P0: (0, final)}, now=200.0, wall=WALL + 200.0, total_partitions=2)
    other_ds["a"].limiter.set_limit(10)  # a final note starts nothing more: all ours
    assert sum(start(other_ds, other_ledger, P1, 300 + i, 200.0) for i in range(10)) == 10


def test_a_gone_members_share_is_no_longer_kept_once_its_notes_are_old() -> None:
    """A member killed on a partition nobody commits again (no message arrives) leaves its
    last note there: a live member's notes are written again every commit interval, so
    one older than a few of them keeps no share for its writer."""
    gone, gone_ds, gone_ledger = member(limit=10, writer="gone")
    gone_ledger.assign(P0)
    gone_ds.share(1, 2)  # 5
    note = gone.notes({P0: 0}, now=1.0, wall=WALL + 1.0, final=False)[P0]
    other, other_ds, other_ledger = member(limit=10, writer="other")
    other_ledger.assign(P1)
    # 5 while its share is kept; then 5 more (ours 5 + 5), not 0
    for now, can in ((1.5, 5), (1.0 + other.fresh + 0.5, 5)):
        other.observe({P0: (0, note)}, now=now, wall=WALL + now, total_partitions=2)
        other_ds["a"].limiter.set_limit(10)
        assert (
            sum(start(other_ds, other_ledger, P1, int(now * 100) + i, now) for i in range(10))
            == can
        )


def test_a_members_share_is_kept_while_its_note_cannot_be_read() -> None:
    """The simulator's short seed 703: reads of the group's notes failed for seconds on
    end, each failed partition kept its last note, and that note, unchanged, read as the
    note of a gone member: its share was dropped and the reader started 14 of 15 while
    the others started 2 (16 arrivals). A note that could not be read is no news of its
    writer: its share counts until a read says otherwise."""
    live, live_ds, live_ledger = member(limit=10, writer="live")
    live_ledger.assign(P0)
    live_ds.share(1, 2)  # 5
    note = live.notes({P0: 0}, now=1.0, wall=WALL + 1.0, final=False)[P0]
    other, other_ds, other_ledger = member(limit=10, writer="other")
    other_ledger.assign(P1)
    other.observe({P0: (0, note)}, now=1.5, wall=WALL + 1.5, total_partitions=2)
    other_ds["a"].limiter.set_limit(10)
    assert sum(start(other_ds, other_ledger, P1, i, 1.5) for i in range(10)) == 5
    later = 1.0 + other.fresh + 0.5  # the last note read, kept: P0's read failed
    other.observe({P0: (0, note)}, now=later, wall=WALL + later, total_partitions=2, unread={P0})
    other_ds["a"].limiter.set_limit(10)
    assert sum(start(other_ds, other_ledger, P1, 100 + i, later) for i in range(10)) == 0


def test_a_live_member_whose_clock_runs_behind_keeps_its_share() -> None:
    """Freshness is judged by when a member's notes last changed, by the reader's clock:
    one running seconds behind is not taken for gone."""
    late, late_ds, late_ledger = member(limit=10, writer="late")
    late_ledger.assign(P0)
    late_ds.share(1, 2)  # 5
    other, other_ds, other_ledger = member(limit=10, writer="other")
    other_ledger.assign(P1)
    for now in (1.0, 2.0, 3.0, 4.0, 5.0):
        note = late.notes({P0: 0}, now=now, wall=WALL + now - 30.0, final=False)[P0]
        other.observe({P0: (0, note)}, now=now, wall=WALL + now, total_partitions=2)
    other_ds["a"].limiter.set_limit(10)
    assert sum(start(other_ds, other_ledger, P1, i, 5.0) for i in range(10)) == 5


def test_a_gone_members_note_from_a_clock_running_ahead_stops_counting_a_window_later() -> None:
    """Issue 22 item 2: a member whose clock ran an hour ahead leaves a note that is never
    written again (its partition is idle). Its starts age by the reader's clock: a window
    after the reader first saw the note, the destination is free again (not "next start
    in 65 s" for as long as the note stays on the broker)."""
    hour = 3600.0
    gone, gone_ds, gone_ledger = member(limit=10, writer="gone")
    gone_ledger.assign(P0)
    for offset in range(10):
        assert start(gone_ds, gone_ledger, P0, offset, 1.0)
    note = gone.notes({P0: 0}, now=1.0, wall=WALL + 1.0 + hour, final=False)[P0]
    other, other_ds, other_ledger = member(limit=10, writer="other")
    other_ledger.assign(P1)
    window = other_ds["a"].limiter.window
    for now in (2.0, 10.0, 2.0 + window / 2):
        other.observe({P0: (0, note)}, now=now, wall=WALL + now, total_partitions=2)
        other_ds["a"].limiter.set_limit(10)
        assert not start(other_ds, other_ledger, P1, int(now * 100), now)  # the window is full
    later = 2.0 + window + 1.0
    other.observe({P0: (0, note)}, now=later, wall=WALL + later, total_partitions=2)
    other_ds["a"].limiter.set_limit(10)
    assert sum(start(other_ds, other_ledger, P1, 10_000 + i, later) for i in range(10)) == 10


def test_a_previous_owner_whose_clock_runs_behind_is_counted_for_a_whole_real_window() -> None:
    """Issue 22 item 3: the previous owner's clock runs 45 s behind, so its starts look 45 s
    older than they are; read by its note's write time they count for a whole real window:
    no more than the limit starts in any real window across the two owners."""
    behind = 45.0
    old, old_ds, old_ledger = member(limit=10, writer="old")
    old_ledger.assign(P0)
    for offset in range(10):
        assert start(old_ds, old_ledger, P0, offset, 1.0)
    note = old.notes({P0: 0}, now=1.0, wall=WALL + 1.0 - behind, final=True)[P0]
    new, new_ds, new_ledger = member(limit=10, writer="new")
    new_ledger.assign(P0)
    new.take_over(P0, note, 0, now=1.5, wall=WALL + 1.5)
    window = new_ds["a"].limiter.window
    starts = [
        now
        for i, now in enumerate(1.5 + k * 0.5 for k in range(int(4 * window)))
        if start(new_ds, new_ledger, P0, 100 + i, now)
    ]
    assert starts and starts[0] >= 1.0 + window  # none before the real window ends


def test_the_same_note_read_again_does_not_move_its_starts() -> None:
    """Reading a note again is not news: its starts stay where they were first placed."""
    writer, w_ds, w_ledger = member(limit=10, writer="w1")
    w_ledger.assign(P0)
    for offset in range(10):
        assert start(w_ds, w_ledger, P0, offset, 1.0)
    note = writer.notes({P0: 0}, now=1.0, wall=WALL + 1.0, final=False)[P0]
    reader, r_ds, r_ledger = member(limit=10, writer="r")
    r_ledger.assign(P1)
    window = r_ds["a"].limiter.window
    for now in [1.5 + k for k in range(int(window) + 3)]:
        reader.observe({P0: (0, note)}, now=now, wall=WALL + now, total_partitions=2)
    r_ds["a"].limiter.set_limit(10)
    assert r_ds["a"].limiter.next_start(1.5 + window + 2) <= 1.5 + window + 2


def test_offsets_dropped_behind_a_waiting_key_keep_the_note_small_and_readable() -> None:
    """Issue 22 item 1: one key waits at offset 0 while the rules drop the next 250,000
    events. The note stays within its byte budget and readable (past 100,000 offsets it
    was refused as a whole: the next owner re-sent done work and lost the 429 pause), and
    the next owner skips every dropped offset and inherits the pause."""
    old, old_ds, old_ledger = member(writer="old")
    old_ledger.assign(P0)
    old_ledger.add(P0, 0, [(OrderingKey("a", "waiting"), "work")])
    for offset in range(1, 250_001):
        old_ledger.add(P0, offset, [])  # dropped by the rules: terminal at once
    old_ds["a"].rate_limited(until=40.0)
    assert old_ledger.terminal_above_watermark(P0).ranges == ((1, 250_001),)
    note = old.notes({P0: 0}, now=10.0, wall=WALL + 10.0, final=True)[P0]
    assert len(note) <= 4096
    new, new_ds, new_ledger = member(writer="new")
    new_ledger.assign(P0)
    new.take_over(P0, note, 0, now=10.0, wall=WALL + 10.0)
    assert not new.already_done(P0, 0)
    assert all(new.already_done(P0, o) for o in (1, 125_000, 250_000))
    assert not new.already_done(P0, 250_001)
    assert new_ds["a"].limiter.paused_until >= 40.0


def test_a_writer_whose_clock_steps_back_is_read_by_its_new_clock() -> None:
    """A running member's wall clock steps back 40 minutes (NTP, a VM resumed): its next
    notes are written earlier than the ones before. What was known of its clock no longer
    holds: its new starts count for a whole real window, not as 40 minutes old."""
    back = 40 * 60.0
    writer, w_ds, w_ledger = member(limit=10, writer="stepper")
    w_ledger.assign(P0)
    reader, r_ds, r_ledger = member(limit=10, writer="reader")
    r_ledger.assign(P1)
    note = writer.notes({P0: 0}, now=1.0, wall=WALL + 1.0, final=False)[P0]
    reader.observe({P0: (0, note)}, now=1.0, wall=WALL + 1.0, total_partitions=2)
    for offset in range(10):
        assert start(w_ds, w_ledger, P0, offset, 2.0)
    note = writer.notes({P0: 0}, now=2.0, wall=WALL + 2.0 - back, final=False)[P0]
    reader.observe({P0: (0, note)}, now=2.5, wall=WALL + 2.5, total_partitions=2)
    r_ds["a"].limiter.set_limit(10)
    window = r_ds["a"].limiter.window
    assert not start(r_ds, r_ledger, P1, 100, 2.0 + window / 2)  # its 10 still count


def test_a_partition_assigned_but_not_yet_taken_over_still_counts_its_writers_starts() -> None:
    """The simulator's short seed 1175: a member killed after 3 starts at A (limit 6); its
    partition is assigned to its peer, and a view of the group lands before the previous
    owner's note is read (`take_over`). Read as ours already, that note left the view, its
    starts were counted nowhere (not in the ceiling, not yet in our limiters) for the
    moment between: the peer started 5, 7 arrivals in a window of 6."""
    dead, dead_ds, dead_ledger = member(limit=6, writer="dead")
    dead_ledger.assign(P0)
    dead_ds.share(1, 2)  # by partitions: 3
    for offset in range(3):
        assert start(dead_ds, dead_ledger, P0, offset, 1.0)
    note = dead.notes({P0: 3}, now=1.0, wall=WALL + 1.0, final=False)[P0]  # then a kill
    peer, peer_ds, peer_ledger = member(limit=6, writer="peer")
    peer_ledger.assign(P1)
    peer.observe({P0: (3, note)}, now=1.5, wall=WALL + 1.5, total_partitions=2)
    peer_ledger.assign(P0)  # assigned: its note is on its way
    peer.observe({P0: (3, note), P1: (0, None)}, now=2.0, wall=WALL + 2.0, total_partitions=2)
    peer_ds["a"].limiter.set_limit(6)  # its share aside: the ceiling alone
    assert sum(start(peer_ds, peer_ledger, P1, 100 + i, 2.0) for i in range(10)) == 3
    peer.take_over(P0, note, 3, now=2.5, wall=WALL + 2.5)
    assert sum(start(peer_ds, peer_ledger, P1, 200 + i, 2.5) for i in range(10)) == 0


def test_a_partition_whose_note_was_never_read_may_have_demand() -> None:
    """The simulator's short seed 8480: a member back after a kill -9, new to the group,
    while every read of the group's notes failed: the other partition's note was never
    read, and taken for no demand its share grew to 21 of 22 (23 arrivals in a window at
    the API key, with what the other member started). Unknown, it may have demand."""
    new, ds, ledger = member(limit=22, writer="new")
    ledger.assign(P0)
    [job] = ledger.add(P0, 0, [(OrderingKey("a", "waiting"), "work")])
    ds["a"].ready.add(job, rank=0)
    for now in (1.0, 1.0 + new.raise_after + 0.1):  # P1's note failed both times
        new.observe({P0: (0, None)}, now=now, wall=WALL + now, total_partitions=2)
    assert ds["a"].limiter.limit <= 11


def test_a_writers_tail_counted_at_a_hand_over_is_counted_again_at_a_later_one() -> None:
    """The simulator's short seed 12999: a member took a partition over from a live writer
    (its tail counted then, early), and 15 s later, once the writer was killed, its other
    partition; the writer's tail counted once per writer, its last unconfirmed starts
    (made after the first hand-over) were counted by no one: 17 arrivals in a window of
    16. A note written later than the one whose tail was counted may hide a new tail."""
    old, old_ds, old_ledger = member(limit=10, writer="old")
    old_ledger.assign(P0)
    old_ledger.assign(P1)
    old.promise_tails()
    tail = old_ds["a"].limiter.tail
    assert tail is not None
    first = old.notes({P1: 0}, now=1.0, wall=WALL + 1.0, final=False)[P1]
    new, new_ds, new_ledger = member(limit=10, writer="new")
    new_ledger.assign(P1)
    new.take_over(P1, first, 0, now=1.0, wall=WALL + 1.0)  # its tail counted, at 1.0
    note = old.notes({P0: 0}, now=10.0, wall=WALL + 10.0, final=False)[P0]
    hidden = sum(start(old_ds, old_ledger, P0, i, 10.5) for i in range(20))  # then a kill
    assert hidden == tail
    new_ledger.assign(P0)
    new.take_over(P0, note, 0, now=16.0, wall=WALL + 16.0)
    # once the first count has left the window, the hidden starts still count
    later = 1.0 + new_ds["a"].limiter.window + 0.1
    assert later < 10.5 + new_ds["a"].limiter.window
    more = sum(start(new_ds, new_ledger, P0, 100 + i, later) for i in range(20))
    assert hidden + more <= 10


def test_a_raise_is_taken_only_at_a_view_that_read_every_note() -> None:
    """The simulator's long seed 1103: while reads of the group's notes failed, three
    members each took a raise (10 to 13 of 40) that the others could not read, each
    counting the others at their old 10: 41 arrivals in a window. A raise waits for a
    view that read every note (the others' announcements with it)."""
    hot, hot_ds, hot_ledger = member(limit=30, writer="hot")
    hot_ledger.assign(P0)
    hot_ds.share(1, 3)
    [job] = hot_ledger.add(P0, 0, [(OrderingKey("a", "hot"), "work")])
    hot_ds["a"].ready.add(job, rank=0)
    quiet = {("events", 1): (0, None), ("events", 2): (0, None)}
    hot.observe(quiet, now=1.0, wall=WALL + 1.0, total_partitions=3)  # the raise asked
    later = 1.0 + hot.raise_after
    hot.observe(quiet, now=later, wall=WALL + later, total_partitions=3, unread=[P1])
    assert hot_ds["a"].limiter.limit == 10  # a note could not be read: not yet
    hot.observe(quiet, now=later + 1, wall=WALL + later + 1, total_partitions=3)
    assert hot_ds["a"].limiter.limit >= 27


def test_a_note_its_writer_no_longer_writes_keeps_no_share_for_it() -> None:
    """The simulator's short seed 14492: a member's last note on a partition it let go
    was not final (a periodic commit answered after the revoke's), it announced the whole
    limit (10), and the next owner never committed that partition again. The writer, live,
    kept writing notes elsewhere (its share now 1), so it never looked gone, and a reader
    counted it as 10 for good: one start a window. A note not written again for `fresh`
    is no longer its writer's: its starts count, its share does not (its live writer's
    share is in the notes it writes now)."""
    p2 = ("events", 2)
    old, old_ds, old_ledger = member(limit=10, writer="m1")
    old_ledger.assign(P0)
    old_ledger.assign(p2)
    old_ds["a"].limiter.set_limit(10)  # all the demand was its own
    left = old.notes({p2: 0}, now=1.0, wall=WALL + 1.0, final=False)[p2]
    old.let_go([p2])
    old_ledger.revoke(p2)
    old_ds.share(1, 3, {"a": (0, 1)})  # no demand any more: the floor (1; its key's 20)
    reader, reader_ds, reader_ledger = member(limit=10, writer="m0")
    reader_ledger.assign(P1)
    now = 1.0
    while now < 1.0 + reader.fresh + 1.0:
        now += 0.5
        note = old.notes({P0: 0}, now=now, wall=WALL + now, final=False)[P0]
        group = {P0: (0, note), P1: (0, None), p2: (0, left)}
        reader.observe(group, now=now, wall=WALL + now - 12.6, total_partitions=3)
    reader_ds["a"].limiter.set_limit(10)  # its share aside: the ceiling alone
    assert sum(start(reader_ds, reader_ledger, P1, i, now) for i in range(10)) == 9
