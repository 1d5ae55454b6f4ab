"""The ordering and offset core: no loss, per-key order, no overlap, fencing."""

from __future__ import annotations

import itertools

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


# -- coalescing: waiting jobs superseded by the next one of their key ----------------------


def test_a_superseded_job_ends_with_its_stand_in_or_is_sent_in_its_place() -> None:
    book = ledger()
    [first] = book.add(P0, 0, [(K1, "sending")])
    book.add(P0, 1, [(K1, "superseded")])
    book.add(P0, 2, [(K1, "newest")])
    _, middle, newest = book.queue_of(K1)
    assert book.supersede(middle, newest) == []
    assert book.queue_of(K1) == (first, newest) and newest.stands_for == [middle]
    assert book.finish(first) == [newest] and book.commit_offset(P0) == 1  # middle waits
    assert book.finish(newest, stood=False) == [middle]  # a dead letter: middle is sent
    assert book.commit_offset(P0) == 1 and book.finish(middle) == []
    assert book.commit_offset(P0) == 3
    with pytest.raises(ValueError, match="supersede"):
        book.supersede(first, newest)  # not right behind it


def test_an_accepted_stand_in_ends_every_job_it_stood_for() -> None:
    book = ledger()
    jobs = [book.add(P0, o, [(K1, o)]) for o in range(4)]
    head, *rest = book.queue_of(K1)
    assert jobs[0] == [head]
    book.supersede(rest[0], rest[1])
    book.supersede(rest[1], rest[2])
    assert rest[2].stands_for == [rest[0], rest[1]]
    book.finish(head)
    assert book.finish(rest[2]) == [] and book.commit_offset(P0) == 4


class LedgerWithSupersession(LedgerMachine):
    """The same random runs, with waiting jobs superseded at any time, and stand-ins that
    are accepted or dead-lettered."""

    def _pairs(self) -> list[tuple[Job, Job]]:
        pairs = []
        for key in (K1, K2, OrderingKey("b", "k1")):
            queue = self.book.queue_of(key)[1:]  # the active job is in flight here
            for older, newer in itertools.pairwise(queue):
                if (older.partition, older.epoch) == (newer.partition, newer.epoch):
                    pairs.append((older, newer))
        return pairs

    @precondition(lambda self: self._pairs())
    @rule(data=st.data())
    def supersede(self, data) -> None:
        older, newer = data.draw(st.sampled_from(self._pairs()))
        if not hasattr(self, "superseded"):
            self.superseded: list[Job] = []
        self.superseded.append(older)
        self.book.supersede(older, newer)

    @precondition(lambda self: self.active)
    @rule(data=st.data(), stood=st.booleans())
    def finish(self, data, stood) -> None:
        job = data.draw(st.sampled_from(self.active))
        self.active.remove(job)
        owned = self.book.owns(job)
        ended = [job, *job.stands_for] if stood else [job]
        revived = job.stands_for[-1] if job.stands_for and not stood and owned else None
        if owned:
            for done in ended:
                left = self.unfinished[done.partition]
                left[done.offset] -= 1
                if left[done.offset] == 0:
                    del left[done.offset]
        next_jobs = self.book.finish(job, stood=stood)
        if revived is not None:
            assert next_jobs == [revived]  # sent in its stand-in's place
            self.superseded.remove(revived)
            self.active.append(revived)
        else:
            self._activate(next_jobs)

    @invariant()
    def superseded_jobs_become_active_only_in_a_failed_stand_ins_place(self) -> None:
        activated = {id(j) for jobs in self.activated_order.values() for j in jobs}
        active = {id(j) for j in self.active}
        for job in getattr(self, "superseded", []):
            assert id(job) not in activated and id(job) not in active


LedgerWithSupersession.TestCase.settings = settings(
    max_examples=200, stateful_step_count=40, deadline=None
)
test_ledger_with_supersession = LedgerWithSupersession.TestCase


# -- held targets' releases: jobs with no message of their own (invariant 5) ----------------


def test_a_held_release_moves_no_watermark() -> None:
    book = ledger()
    [waiting] = book.add(P0, 10, [(K2, "unfinished")])
    held, active = book.add_held(P0, 4, K1, "held")
    assert active and held.held and book.unfinished(P0) == 1
    assert book.finish(held) == []
    assert book.commit_offset(P0) == 10  # neither moved past 10 nor back to 4
    book.finish(waiting)
    assert book.commit_offset(P0) == 11


def test_a_held_release_waits_behind_its_key_and_what_comes_after_waits_behind_it() -> None:
    book = ledger()
    [first] = book.add(P0, 0, [(K1, "older")])
    held, active = book.add_held(P0, 0, K1, "held")
    assert not active
    assert book.add(P0, 1, [(K1, "newer")]) == []
    assert book.finish(first) == [held]
    [newer] = book.finish(held)
    assert newer.work == "newer" and book.commit_offset(P0) == 1


def test_a_held_release_of_a_revoked_partition_is_dropped_and_a_running_one_fenced() -> None:
    book = ledger()
    [running] = book.add(P0, 0, [(K1, "running")])
    book.add_held(P0, 0, K1, "queued release")
    running_release, _ = book.add_held(P0, 0, K2, "running release")
    book.revoke(P0)
    assert book.queue_of(K1) == (running,)  # the queued release is gone: the next owner's
    assert not book.owns(running_release) and book.finish(running_release) == []
    assert book.commit_offset(P0) is None


def test_a_held_release_is_never_superseded_but_stands_for_older_waiting_jobs() -> None:
    from streamer.coalescing import coalesce

    book = ledger()
    book.add(P0, 0, [(K1, "in flight")])
    book.add(P0, 1, [(K1, "waiting")])
    held, _ = book.add_held(P0, 2, K1, "release")
    book.add(P0, 3, [(K1, "newer")])
    in_flight, waiting, _, newer = book.queue_of(K1)
    coalesced = coalesce(book, K1, waiting=())
    assert coalesced.superseded == [waiting]  # by the release; the release by nothing
    assert book.queue_of(K1) == (in_flight, held, newer) and held.stands_for == [waiting]
    book.finish(in_flight)
    assert book.finish(held) == [newer] and book.commit_offset(P0) == 3


class LedgerWithReleases(LedgerMachine):
    """The same random runs, with held targets' releases of any key at any time: the
    watermarks are those of the messages alone (the base invariant), each key activates
    its jobs in the order they were added, and a release dropped by a revoke never runs."""

    KEYS = (K1, K2, OrderingKey("b", "k1"))

    @initialize()
    def start(self) -> None:
        super().start()
        self.order: dict[int, int] = {}  # id(job) -> when it was added
        self.dropped: set[int] = set()
        self.jobs: list[Job] = []  # every job added, kept alive (ids are never reused)

    def _added(self, job: Job) -> None:
        self.order[id(job)] = len(self.order)
        self.jobs.append(job)

    @precondition(lambda self: self.assigned)
    @rule(data=st.data(), key=st.sampled_from(KEYS))
    def release(self, data, key) -> None:
        partition = data.draw(st.sampled_from(sorted(self.assigned)))
        offset = data.draw(st.integers(0, self.next_offset[partition]))
        job, active = self.book.add_held(partition, offset, key, None)
        self._added(job)
        if active:
            self._activate([job])

    @precondition(lambda self: self.assigned)
    @rule(data=st.data(), keys=st.lists(st.sampled_from([*KEYS, None]), max_size=3))
    def add(self, data, keys) -> None:
        partition = data.draw(st.sampled_from(sorted(self.assigned)))
        offset = self.next_offset[partition]
        self.next_offset[partition] += data.draw(st.integers(1, 3))
        before = {k: len(self.book.queue_of(k)) for k in self.KEYS}
        jobs = self.book.add(partition, offset, [(k, None) for k in keys])
        for k in self.KEYS:
            for job in self.book.queue_of(k)[before[k] :]:
                self._added(job)
        if keys:
            self.unfinished[partition][offset] = len(keys)
        self._activate(jobs)

    @precondition(lambda self: self.active)
    @rule(data=st.data())
    def finish(self, data) -> None:
        job = data.draw(st.sampled_from(self.active))
        self.active.remove(job)
        if self.book.owns(job) and not job.held:
            left = self.unfinished[job.partition]
            left[job.offset] -= 1
            if left[job.offset] == 0:
                del left[job.offset]
        self._activate(self.book.finish(job))

    @precondition(lambda self: self.assigned)
    @rule(data=st.data(), lost=st.booleans())
    def revoke(self, data, lost) -> None:
        partition = data.draw(st.sampled_from(sorted(self.assigned)))
        running = {id(j) for j in self.active}
        for key in self.KEYS:
            for job in self.book.queue_of(key):
                if job.partition == partition and id(job) not in running:
                    self.dropped.add(id(job))
        (self.book.lose if lost else self.book.revoke)(partition)
        self.assigned.discard(partition)
        del self.unfinished[partition]

    def _activate(self, jobs: list[Job]) -> None:
        assert not any(id(job) in self.dropped for job in jobs), "a dropped job became active"
        super()._activate(jobs)

    @invariant()
    def keys_activate_in_the_order_their_jobs_were_added(self) -> None:
        for jobs in self.activated_order.values():
            places = [self.order[id(j)] for j in jobs if j.key is not None]
            assert places == sorted(places)

    @invariant()
    def keys_activate_in_offset_order_per_partition(self) -> None:
        """(Releases carry their source's offset: the order of addition is checked instead.)"""


LedgerWithReleases.TestCase.settings = settings(
    max_examples=300, stateful_step_count=40, deadline=None
)
test_ledger_with_releases = LedgerWithReleases.TestCase
