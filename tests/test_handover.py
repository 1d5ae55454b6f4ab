"""Hand-over: nothing of a partition being let go starts after its cut-off."""

from __future__ import annotations

import math

from streamer.handover import START_MARGIN, HandOver

P0, P1 = ("events", 0), ("events", 1)


def test_a_revoked_partitions_requests_stop_starting_one_request_timeout_before_the_drain_ends():
    handover = HandOver(request_timeout=10.0)
    handover.begin({P0}, drain_deadline=100.0)
    assert handover.last_start(P0) == 90.0 - START_MARGIN
    assert handover.may_start(P0, 89.5)
    assert not handover.may_start(P0, 90.0 - START_MARGIN)  # could outlive the hand-over
    assert handover.may_start(P1, 1e9)  # not being let go
    handover.end({P0})
    assert handover.last_start(P0) == math.inf


def test_a_drain_waits_while_anything_is_in_flight() -> None:
    handover = HandOver(request_timeout=10.0)
    handover.begin({P0}, drain_deadline=100.0)
    assert handover.worth_waiting(in_flight=True, starts=[])


def test_a_drain_ends_early_when_nothing_waiting_could_start_before_its_cut_off() -> None:
    handover = HandOver(request_timeout=10.0)
    handover.begin({P0}, drain_deadline=100.0)
    # a rate limit lets the head start only at 95: past the cut-off, so waiting is useless
    assert not handover.worth_waiting(in_flight=False, starts=[(P0, 95.0)])
    assert handover.worth_waiting(in_flight=False, starts=[(P0, 95.0), (P0, 50.0)])
    # work of a partition that is staying may always start: the drain serves it meanwhile
    assert handover.worth_waiting(in_flight=False, starts=[(P1, 1e9)])
    assert not handover.worth_waiting(in_flight=False, starts=[])


def test_a_partition_just_taken_starts_nothing_until_our_note_is_on_the_broker() -> None:
    """The claim: until a commit carrying our note is confirmed, a kill would leave the
    broker naming the previous writer (or nobody), and our starts would be invisible."""
    handover = HandOver(request_timeout=10.0)
    handover.take({P0})
    assert not handover.may_start(P0, 0.0)
    assert handover.may_start(P1, 0.0)  # never taken (tests, or long ours): not gated
    assert handover.unclaimed() == {P0}
    handover.claimed(P0)
    assert handover.may_start(P0, 0.0)
    handover.take({P1})
    handover.end({P1})  # let go before it was claimed: nothing left to wait for
    assert handover.unclaimed() == set()


def test_a_drain_does_not_wait_for_work_of_a_partition_not_yet_claimed() -> None:
    """A drain serves no commit answers, so an unclaimed partition's work cannot start."""
    handover = HandOver(request_timeout=10.0)
    handover.take({P0})
    handover.begin({P0}, drain_deadline=100.0)
    assert not handover.worth_waiting(in_flight=False, starts=[(P0, 1.0)])


def test_a_claimed_partition_starts_once_the_others_could_read_the_claim() -> None:
    """A claim is a note naming this member on the broker; the others read notes every
    view interval: nothing of the partition starts before they could have."""
    handover = HandOver(request_timeout=10.0, settle=1.25)
    handover.take([P0])
    handover.claimed(P0, now=100.0)
    assert not handover.may_start(P0, 101.0)
    assert handover.settled_at(101.0) == 101.25
    assert handover.may_start(P0, 101.25) and handover.settled_at(101.25) is None
