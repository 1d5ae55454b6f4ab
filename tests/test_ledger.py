"""The ordering and offset core: no loss, per-key order, no overlap, fencing."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from streamer.ledger import DeliveryLedger, Job, OrderingKey

P0, P1 = ("events", 0), ("events", 1)
K1, K2 = OrderingKey("a", "k1"), OrderingKey("a", "k2")


def ledger(*partitions) -> DeliveryLedger:
    book = DeliveryLedger()
    for p in partitions or (P0,):
        book.assign(p)
    return book


def test_the_commit_offset_waits_for_the_oldest_unfinished_message() -> None:
    book = ledger()
    [j0] = book.add(P0, 10, [(K1, "a")])
    [j1] = book.add(P0, 11, [(K2, "b")])
    assert book.commit_offset(P0) == 10
    book.finish(j1)
    assert book.commit_offset(P0) == 10  # 10 is not terminal: 11 must not be committed past it
    book.finish(j0)
    assert book.commit_offset(P0) == 12


def test_a_message_the_rules_dropped_is_terminal_at_once() -> None:
    book = ledger()
    assert book.add(P0, 5, []) == []
    assert book.commit_offset(P0) == 6 and book.unfinished() == 0


def test_a_fanned_out_message_is_terminal_when_all_its_deliveries_are() -> None:
    book = ledger()
    first, second = book.add(P0, 0, [(K1, "to a"), (OrderingKey("b", "k1"), "to b")])
    book.finish(first)
    assert book.commit_offset(P0) == 0
    book.finish(second)
    assert book.commit_offset(P0) == 1


def test_the_same_key_waits_and_other_keys_do_not() -> None:
    book = ledger()
    [first] = book.add(P0, 0, [(K1, 1)])
    assert book.add(P0, 1, [(K1, 2)]) == []  # behind the first
    [other] = book.add(P0, 2, [(K2, 3)])  # another key: active at once
    [second] = book.finish(first)
    assert (second.offset, other.offset) == (1, 2)


def test_jobs_without_a_key_never_wait() -> None:
    book = ledger()
    assert len(book.add(P0, 0, [(None, "dead letter")])) == 1
    assert len(book.add(P0, 1, [(None, "dead letter")])) == 1


def test_revoking_drops_queued_jobs_and_fences_running_ones() -> None:
    book = ledger(P0, P1)
    [running] = book.add(P0, 0, [(K1, "p0")])
    book.add(P0, 1, [(K1, "p0 queued")])
    book.add(P1, 0, [(K1, "p1 queued")])
    book.revoke(P0)
    assert not book.owns(running) and book.commit_offset(P0) is None
    [next_job] = book.finish(running)  # the late result moves nothing, but frees the key
    assert (next_job.partition, next_job.work) == (P1, "p1 queued")


def test_a_reassigned_partition_starts_a_new_epoch() -> None:
    book = ledger()
    [old] = book.add(P0, 0, [(K1, "old")])
    book.revoke(P0)
    book.assign(P0)
    assert book.add(P0, 0, [(K1, "new")]) == []  # the old one still holds the key
    [new] = book.finish(old)
    assert book.owns(new) and book.commit_offset(P0) == 0
    book.finish(new)
    assert book.commit_offset(P0) == 1


def test_adding_an_offset_twice_is_refused() -> None:
    book = ledger()
    book.add(P0, 3, [])
    with pytest.raises(ValueError, match="already added"):
        book.add(P0, 3, [])


class LedgerMachine(RuleBasedStateMachine):
    """Random adds, completions in any order, revokes and losses."""

    @initialize()
    def start(self) -> None:
        self.book = DeliveryLedger()
        self.assigned: set[tuple[str, int]] = set()
        self.next_offset: dict[tuple[str, int], int] = {}
        self.active: list[Job] = []  # the engine starts every active job at once
        self.unfinished: dict[tuple[str, int], dict[int, int]] = {}  # live epoch only
        self.activated_order: dict[OrderingKey, list[Job]] = {}

    def _activate(self, jobs: list[Job]) -> None:
        for job in jobs:
            assert all(job.key is None or job.key != a.key for a in self.active), (
                "two jobs of one key active"
            )
            self.active.append(job)
            if job.key is not None:
                self.activated_order.setdefault(job.key, []).append(job)

    @rule(partition=st.sampled_from([P0, P1]))
    def assign(self, partition) -> None:
        if partition in self.assigned:
            return
        self.book.assign(partition)
        self.assigned.add(partition)
        self.unfinished[partition] = {}
        self.next_offset.setdefault(partition, 0)

    @precondition(lambda self: self.assigned)
    @rule(
        data=st.data(),
        keys=st.lists(st.sampled_from([K1, K2, OrderingKey("b", "k1"), None]), max_size=3),
    )
    def add(self, data, keys) -> None:
        partition = data.draw(st.sampled_from(sorted(self.assigned)))
        offset = self.next_offset[partition]
        self.next_offset[partition] += data.draw(st.integers(1, 3))  # gaps: compacted topics
        jobs = self.book.add(partition, offset, [(k, None) for k in keys])
        if keys:
            self.unfinished[partition][offset] = len(keys)
        self._activate(jobs)

    @precondition(lambda self: self.active)
    @rule(data=st.data())
    def finish(self, data) -> None:
        job = data.draw(st.sampled_from(self.active))
        self.active.remove(job)
        if self.book.owns(job):
            left = self.unfinished[job.partition]
            left[job.offset] -= 1
            if left[job.offset] == 0:
                del left[job.offset]
        self._activate(self.book.finish(job))

    @precondition(lambda self: self.assigned)
    @rule(data=st.data(), lost=st.booleans())
    def revoke(self, data, lost) -> None:
        partition = data.draw(st.sampled_from(sorted(self.assigned)))
        (self.book.lose if lost else self.book.revoke)(partition)
        self.assigned.discard(partition)
        del self.unfinished[partition]

    @invariant()
    def committed_offsets_never_pass_an_unfinished_message(self) -> None:
        for partition in self.assigned:
            committed = self.book.commit_offset(partition)
            pending = self.unfinished[partition]
            if pending:
                assert committed == min(pending)
            elif committed is not None:
                assert committed <= self.next_offset[partition]

    @invariant()
    def keys_activate_in_offset_order_per_partition(self) -> None:
        for jobs in self.activated_order.values():
            for partition in {j.partition for j in jobs}:
                epochs = {}
                for j in jobs:
                    if j.partition == partition:
                        epochs.setdefault(j.epoch, []).append(j.offset)
                for offsets in epochs.values():
                    assert offsets == sorted(offsets)


LedgerMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
test_ledger_state_machine = LedgerMachine.TestCase


# -- coalescing: queued jobs withdrawn (superseded) ---------------------------------------


def test_a_withdrawn_job_is_terminal_and_never_becomes_active() -> None:
    book = ledger()
    [first] = book.add(P0, 0, [(K1, "sending")])
    book.add(P0, 1, [(K1, "superseded")])
    book.add(P0, 2, [(K1, "newest")])
    _, middle, newest = book.queue_of(K1)
    book.withdraw(middle)
    assert book.queue_of(K1) == (first, newest) and book.commit_offset(P0) == 0
    assert book.finish(first) == [newest] and book.commit_offset(P0) == 2
    with pytest.raises(ValueError, match="withdraw"):
        book.withdraw(newest)  # the active job finishes, it is never withdrawn


class LedgerWithWithdrawals(LedgerMachine):
    """The same random runs, with queued jobs withdrawn (superseded) at any time."""

    def _queued(self) -> list[Job]:
        keys = [K1, K2, OrderingKey("b", "k1")]
        return [j for k in keys for j in self.book.queue_of(k)[1:]]

    @precondition(lambda self: self._queued())
    @rule(data=st.data())
    def withdraw(self, data) -> None:
        job = data.draw(st.sampled_from(self._queued()))
        if not hasattr(self, "withdrawn"):
            self.withdrawn: list[Job] = []
        self.withdrawn.append(job)
        self.book.withdraw(job)
        if self.book.owns(job):
            left = self.unfinished[job.partition]
            left[job.offset] -= 1
            if left[job.offset] == 0:
                del left[job.offset]

    @invariant()
    def withdrawn_jobs_never_become_active(self) -> None:
        activated = {id(j) for jobs in self.activated_order.values() for j in jobs}
        assert not any(id(j) in activated for j in getattr(self, "withdrawn", []))


LedgerWithWithdrawals.TestCase.settings = settings(
    max_examples=200, stateful_step_count=40, deadline=None
)
test_ledger_with_withdrawals = LedgerWithWithdrawals.TestCase
