"""Commits: only what the broker confirmed counts; a refused commit is sent again."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.commits import CLAIM_RETRY, CommitSchedule

P0, P1 = ("events", 0), ("events", 1)


def schedule(interval: float = 1.0, every: int = 1000) -> CommitSchedule:
    return CommitSchedule(interval=interval, every=every, now=0.0)


def test_nothing_is_sent_before_it_is_due() -> None:
    commits = schedule(interval=1.0, every=3)
    assert commits.offsets_to_send({P0: 5}, now=0.5) == {}
    commits.terminal(3)
    assert commits.offsets_to_send({P0: 5}, now=0.6) == {P0: 5}  # enough terminal messages
    assert commits.offsets_to_send({P0: 6}, now=0.7) == {}  # not due again yet
    assert commits.offsets_to_send({P0: 6}, now=1.7) == {P0: 6}  # the interval passed


def test_an_offset_on_its_way_is_not_sent_twice_and_a_confirmed_one_never_again() -> None:
    commits = schedule()
    sent = commits.offsets_to_send({P0: 5, P1: 2}, now=1.0)
    commits.sending(sent)
    assert commits.offsets_to_send({P0: 5, P1: 2}, now=2.0) == {}  # on their way
    commits.answered(P0, 5, ok=True, owned=True)
    commits.answered(P1, 2, ok=True, owned=True)
    assert commits.confirmed == {P0: 5, P1: 2}
    assert commits.offsets_to_send({P0: 5, P1: 2}, now=3.0, force=True) == {}


def test_a_commit_the_broker_refuses_is_sent_again_though_nothing_new_is_terminal() -> None:
    commits = schedule()
    commits.sending(commits.offsets_to_send({P0: 5}, now=1.0))
    commits.answered(P0, 5, ok=False, owned=True)  # e.g. the generation changed
    assert P0 not in commits.confirmed
    assert commits.offsets_to_send({P0: 5}, now=2.0) == {P0: 5}


def test_a_commit_that_could_not_be_sent_is_sent_again() -> None:
    commits = schedule()
    offsets = commits.offsets_to_send({P0: 5}, now=1.0)
    commits.sending(offsets)
    commits.not_sent(offsets)  # commit() raised: no coordinator
    assert commits.offsets_to_send({P0: 5}, now=2.0) == {P0: 5}


def test_a_forced_commit_sends_what_is_on_its_way_and_only_the_partitions_asked() -> None:
    commits = schedule()
    commits.sending(commits.offsets_to_send({P0: 5, P1: 3}, now=1.0))
    assert commits.offsets_to_send({P0: 5, P1: 3}, now=1.1, force=True, only={P0}) == {P0: 5}


def test_an_answer_for_a_partition_no_longer_owned_is_not_remembered() -> None:
    commits = schedule()
    commits.sending(commits.offsets_to_send({P0: 5}, now=1.0))
    commits.forget({P0})
    commits.answered(P0, 5, ok=True, owned=False)
    assert commits.confirmed == {}


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["advance", "send", "ok", "refuse", "raise"]), st.integers(0, 3)),
        max_size=60,
    )
)
def test_the_broker_ends_up_with_the_watermark_whatever_it_refused(steps) -> None:
    """After any sequence of refusals and failures, a forced commit plus a yes brings the
    broker to the ledger's watermark; nothing confirmed ever passes the watermark."""
    commits = schedule(interval=0.0)
    watermark, broker, in_flight, now = 0, None, None, 0.0
    for action, amount in steps:
        now += 1.0
        if action == "advance":
            watermark += amount
        elif action == "send":
            offsets = commits.offsets_to_send({P0: watermark}, now)
            if offsets:
                commits.sending(offsets)
                in_flight = offsets[P0]
        elif action in ("ok", "refuse") and in_flight is not None:
            commits.answered(P0, in_flight, ok=action == "ok", owned=True)
            if action == "ok":
                broker = in_flight
            in_flight = None
        elif action == "raise" and in_flight is not None:
            commits.not_sent({P0: in_flight})
            in_flight = None
        assert broker is None or broker <= watermark
    final = commits.offsets_to_send({P0: watermark}, now + 1, force=True)
    if broker != watermark:
        assert final == {P0: watermark}


def test_a_new_note_is_committed_though_the_offset_stands_still() -> None:
    """The budget spent for a partition changes while its offset waits (requests in
    flight): the next owner must learn it, so the note alone makes a commit due."""
    commits = schedule()
    notes = {P0: "spent 1"}
    sent = commits.offsets_to_send({P0: 5}, now=1.0, notes=lambda due: notes)
    assert sent == {P0: 5} and commits.notes == {P0: "spent 1"}
    commits.sending(sent)
    commits.answered(P0, 5, ok=True, owned=True)
    assert commits.offsets_to_send({P0: 5}, now=2.0, notes=lambda due: notes) == {}
    notes = {P0: "spent 2"}
    assert commits.offsets_to_send({P0: 5}, now=3.0, notes=lambda due: notes) == {P0: 5}
    assert commits.notes == {P0: "spent 2"}


def test_a_claim_goes_out_at_once_and_again_until_confirmed_but_confirms_no_start() -> None:
    commits = schedule(interval=10.0)
    sent = commits.offsets_to_send({P0: 5, P1: 2}, now=0.1, claims={P0})
    assert sent == {P0: 5} and not commits.complete  # only the claim, long before the interval
    commits.sending(sent)
    assert commits.offsets_to_send({P0: 5, P1: 2}, now=0.2, claims={P0}) == {}  # on its way
    commits.answered(P0, 5, ok=False, owned=True)
    assert commits.offsets_to_send({P0: 5}, now=0.3, claims={P0}) == {}  # not in a busy loop
    assert commits.offsets_to_send({P0: 5}, now=0.1 + CLAIM_RETRY, claims={P0}) == {P0: 5}
    assert commits.offsets_to_send({P0: 5, P1: 2}, now=10.0) == {P0: 5, P1: 2}
    assert commits.complete  # every partition's note: the starts before it are covered


def test_a_dead_letter_is_committed_at_the_next_chance() -> None:
    commits = schedule(interval=10.0)
    assert commits.offsets_to_send({P0: 5}, now=1.0) == {}
    commits.soon()
    assert commits.offsets_to_send({P0: 5}, now=1.1) == {P0: 5}
    assert commits.offsets_to_send({P0: 6}, now=1.2) == {}  # once


def test_a_commit_of_some_partitions_is_not_complete() -> None:
    commits = schedule()
    commits.offsets_to_send({P0: 5, P1: 3}, now=1.0, force=True, only={P0})
    assert not commits.complete
