"""Coalescing and priority: what is sent per key, what is superseded, the watermark."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from streamer.coalescing import (
    NORMAL,
    URGENT,
    WaitingQueue,
    coalesce,
    rank_of,
    superseded_in,
)
from streamer.ledger import DeliveryLedger, Job, OrderingKey

P0, P1 = ("events", 0), ("events", 1)


def job(offset: int, key: str = "k", partition=P0, epoch: int = 1) -> Job:
    return Job(partition, offset, OrderingKey("a", key), None, epoch)


def test_a_waiting_event_is_superseded_by_the_newer_one_right_behind_it() -> None:
    a, b, c = job(1), job(2), job(3)
    assert superseded_in([a, b, c], active_waiting=True) == [a, b]
    assert superseded_in([a, b, c], active_waiting=False) == [b]  # a is in flight: kept


def test_nothing_coalesces_across_partitions_assignments_or_within_one_message() -> None:
    assert superseded_in([job(1), job(2, partition=P1)], active_waiting=True) == []
    assert superseded_in([job(1), job(2, epoch=2)], active_waiting=True) == []
    assert superseded_in([job(5), job(5)], active_waiting=True) == []  # two routes, one key


def test_firing_critical_outranks_the_rest_under_critical_first() -> None:
    def payload(status: str, severity: str) -> dict:
        return {"status": status, "metadata": {"severity": severity}}

    assert rank_of(payload("firing", "CRITICAL"), "critical-first") == URGENT
    assert rank_of(payload("resolved", "critical"), "critical-first") == NORMAL
    assert rank_of(payload("firing", "warning"), "critical-first") == NORMAL
    assert rank_of(payload("firing", "critical"), "oldest-first") == NORMAL
    assert rank_of({"status": "firing"}, "critical-first") == NORMAL
    assert rank_of(None, "critical-first") == NORMAL


def test_the_queue_serves_urgent_keys_first_then_the_longest_waiting() -> None:
    queue = WaitingQueue()
    old, newer, urgent = job(1, "old"), job(2, "newer"), job(3, "urgent")
    queue.add(newer, rank=NORMAL, since=20.0)
    queue.add(old, rank=NORMAL, since=10.0)
    queue.add(urgent, rank=URGENT, since=30.0)
    order = []
    while queue:
        first = queue[0]
        queue.remove(first)
        order.append(first)
    assert order == [urgent, old, newer]


def test_a_superseding_event_keeps_its_keys_place_and_a_returning_one_gets_it_back() -> None:
    queue = WaitingQueue()
    a1, b1 = job(1, "a"), job(2, "b")
    queue.add(a1, rank=NORMAL, since=10.0)
    queue.add(b1, rank=NORMAL, since=20.0)
    a2 = job(3, "a")
    queue.replace(a1, a2, rank=NORMAL)
    assert queue.first() is a2 and a1 not in queue and a2 in queue
    place = queue.remove(a2)  # sent; a 429 brings it back
    queue.add(a2, rank=NORMAL, since=99.0, place=place)
    assert queue.first() is a2
    with pytest.raises(ValueError):
        queue.add(job(4, "a"), rank=NORMAL)  # one job per key


def test_passed_over_entries_come_back_in_their_place_and_drop_takes_a_partition_out() -> None:
    queue = WaitingQueue()
    jobs = [job(i, f"k{i}", P0 if i % 2 else P1) for i in range(6)]
    for i, j in enumerate(jobs):
        queue.add(j, rank=NORMAL, since=float(i))
    entry = queue.remove(queue[0])
    queue.restore(entry)
    assert queue.first() is jobs[0]
    assert queue.per_partition() == {P0: 3, P1: 3}
    dropped = queue.drop({P0})
    assert set(map(id, dropped)) == {id(j) for j in jobs if j.partition == P0}
    assert len(queue) == 3 and all(queue[0].partition == P1 for _ in range(1))
    assert queue.per_partition() == {P1: 3}  # (what the notes' demand reads)


@dataclass
class Sent:
    key: OrderingKey
    partition: tuple[str, int]
    offset: int


def who(j: Job) -> tuple:
    return (j.key, j.partition, j.offset)


KEYS = [OrderingKey("a", "k1"), OrderingKey("a", "k2"), OrderingKey("b", "k1")]
COALESCES = {"a": True, "b": False}  # b: `coalesce: none`


class CoalescingMachine(RuleBasedStateMachine):
    """Events of a few keys on two partitions, arriving in any interleaving with slots
    (starts), answers (accepted, or back to waiting: a 429, a hold) and backoffs; what
    the dispatcher does, on the real ledger, `coalesce` and `WaitingQueue`."""

    @initialize()
    def start(self) -> None:
        self.ledger = DeliveryLedger()
        for p in (P0, P1):
            self.ledger.assign(p)
        self.queues = {"a": WaitingQueue(), "b": WaitingQueue()}
        self.next_offset = {P0: 0, P1: 0}
        self.in_flight: list[Job] = []
        self.backoff: list[Job] = []
        self.sent: list[Sent] = []
        self.dead: list[Sent] = []  # dead-lettered (rejected by incident.io)
        self.superseded: set[tuple] = set()  # (key, partition, offset) of superseded jobs
        self.added: dict[tuple[OrderingKey, tuple[str, int]], list[int]] = {}
        self.pending: dict[tuple[str, int], dict[int, int]] = {P0: {}, P1: {}}  # offset -> jobs
        self.now = 0.0

    # -- what the dispatcher does ---------------------------------------------------------

    def _terminal(self, j: Job) -> None:
        left = self.pending[j.partition]
        left[j.offset] -= 1
        if left[j.offset] == 0:
            del left[j.offset]

    def _supersede(self, jobs: list[Job]) -> None:
        for j in jobs:
            assert who(j) not in self.superseded
            self.superseded.add(who(j))  # terminal only once its stand-in is accepted

    def _enqueue(self, j: Job, place=None) -> None:
        assert j.key is not None
        if COALESCES[j.key.destination]:
            done = coalesce(self.ledger, j.key, waiting=(j,))
            self._supersede(done.superseded)
            j = done.active or j
        self.queues[j.key.destination].add(j, rank=NORMAL, since=self.now, place=place)

    @rule(
        partition=st.sampled_from([P0, P1]),
        keys=st.lists(st.sampled_from(KEYS), min_size=1, max_size=2, unique=True),
    )
    def add(self, partition, keys) -> None:
        self.now += 1
        offset = self.next_offset[partition]
        self.next_offset[partition] += 1
        self.pending[partition][offset] = len(keys)
        for key in keys:
            self.added.setdefault((key, partition), []).append(offset)
        for j in self.ledger.add(partition, offset, [(k, None) for k in keys]):
            self._enqueue(j)
        for key in keys:  # the hook after ledger.add
            queue = self.queues[key.destination]
            if COALESCES[key.destination]:
                done = coalesce(self.ledger, key, waiting=queue)
                self._supersede(done.superseded)
                if done.active is not None:
                    queue.replace(done.superseded[0], done.active, rank=NORMAL)

    @precondition(lambda self: any(self.queues.values()))
    @rule(destination=st.sampled_from(["a", "b"]))
    def slot_frees(self, destination) -> None:
        queue = self.queues[destination]
        if not queue:
            return
        j = queue[0]
        queue.remove(j)
        assert who(j) not in self.superseded, "a superseded event was sent"
        self.in_flight.append(j)
        self.sent.append(Sent(j.key, j.partition, j.offset))

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data(), outcome=st.sampled_from(["accepted", "rejected", "429", "backoff"]))
    def answer(self, data, outcome) -> None:
        j = data.draw(st.sampled_from(self.in_flight))
        self.in_flight.remove(j)
        if outcome in ("accepted", "rejected"):  # rejected: its dead letter is written
            stood = outcome == "accepted"
            for ended in [j, *j.stands_for] if stood else [j]:
                self._terminal(ended)
            revived = None if stood or not j.stands_for else j.stands_for[-1]
            if revived is not None:
                self.superseded.discard(who(revived))  # sent in its stand-in's place
            if not stood:
                self.dead.append(Sent(j.key, j.partition, j.offset))
            for nxt in self.ledger.finish(j, stood=stood):
                self._enqueue(nxt)
        elif outcome == "429":
            self._enqueue(j)
        else:
            self.backoff.append(j)

    @precondition(lambda self: self.backoff)
    @rule(data=st.data())
    def backoff_ends(self, data) -> None:
        j = data.draw(st.sampled_from(self.backoff))
        self.backoff.remove(j)
        self._enqueue(j)

    # -- what must hold -------------------------------------------------------------------

    @invariant()
    def sent_per_key_is_in_offset_order(self) -> None:
        last: dict[tuple[OrderingKey, tuple[str, int]], int] = {}
        for s in self.sent:  # an event a dead-lettered one stood for is sent after it
            if s in self.dead:
                continue
            k = (s.key, s.partition)
            assert s.offset >= last.get(k, -1)  # a retry resends the same offset
            last[k] = s.offset

    @invariant()
    def the_watermark_never_passes_a_waiting_event(self) -> None:
        for p in (P0, P1):
            committed = self.ledger.commit_offset(p)
            if self.pending[p]:
                assert committed == min(self.pending[p])
            else:
                assert committed in (None, self.next_offset[p])

    @invariant()
    def at_most_one_event_per_key_waits_in_a_queue(self) -> None:
        for queue in self.queues.values():
            keys = [w.job.key for w in queue.waiting()]
            assert len(keys) == len(set(keys))

    @invariant()
    def the_count_per_partition_is_what_waits(self) -> None:
        for queue in self.queues.values():
            assert queue.per_partition() == Counter(w.job.partition for w in queue.waiting())

    @invariant()
    def a_key_with_nothing_left_ended_with_its_newest_event_and_never_skips_on_none(
        self,
    ) -> None:
        busy = {(j.key, j.partition) for j in self.in_flight + self.backoff}
        for q in self.queues.values():
            busy |= {(w.job.key, w.job.partition) for w in q.waiting()}
        for (key, partition), offsets in self.added.items():
            if (key, partition) in busy or self.ledger.queue_of(key):
                continue
            sent = [s.offset for s in self.sent if (s.key, s.partition) == (key, partition)]
            dead = {s.offset for s in self.dead if (s.key, s.partition) == (key, partition)}
            assert sent and (sent[-1] == offsets[-1] or offsets[-1] in dead), (
                "the newest event was neither the last sent nor dead-lettered"
            )
            if not COALESCES[key.destination]:
                assert sorted(set(sent)) == offsets, "coalesce: none must send every event"


CoalescingMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=40, deadline=None
)
test_coalescing_state_machine = CoalescingMachine.TestCase


# -- on the real broker, behind the double's limit ------------------------------------------


@pytest.mark.integration
def test_a_storm_behind_the_limit_sends_each_keys_latest_state_and_commits_everything(
    infrastructure, tmp_path, monkeypatch
) -> None:
    from streamer.testing import AlertSource, FakeIncidentIo
    from tests.pipeline import TOKENS, Pipeline, check_event

    # 10 things flapping 6 times each; incident.io takes 4 events per 2 s window.
    events = [
        check_event(f"host-{h}", "CRITICAL" if i % 2 == 0 else "OK", n=i)
        for i in range(6)
        for h in range(10)
    ]
    with FakeIncidentIo(
        [
            AlertSource("SRC_A", TOKENS["TEST_TOKEN_A"], events_per_minute=4),
            AlertSource("SRC_B", TOKENS["TEST_TOKEN_B"]),
        ],
        window_seconds=2,
    ) as fake:
        pipeline = Pipeline(
            infrastructure, fake, tmp_path, monkeypatch=monkeypatch, coalesce="latest"
        )
        pipeline.produce(events)
        final = {f"host-{h}//disk": "resolved" for h in range(10)}  # flip 6 is OK
        pipeline.start()
        try:
            pipeline.wait_for(
                lambda: {k: v[-1] for k, v in pipeline.delivered_statuses().items()} == final,
                "every thing's latest state at incident.io",
            )
            pipeline.wait_committed()  # superseded offsets commit like dropped ones
        finally:
            pipeline.stop()
        stats = pipeline.engine.stats
        sent = [e.payload["metadata"]["event_id"] for e in fake.events]
    produced = [e["event_id"] for e in events]
    # per thing: a subsequence of its events in order, ending with the newest
    for h in range(10):
        mine = [e["event_id"] for e in events if e["check"]["host"] == f"host-{h}"]
        got = [i for i in sent if i in mine]
        assert got == sorted(set(got), key=mine.index) and got[-1] == mine[-1]
    assert len(sent) < len(events) / 2  # far fewer requests than events
    assert stats.superseded == len(produced) - len(sent) and stats.dead_lettered == 0
    scrape = pipeline.engine.telemetry.scrape().decode()
    assert 'streamer_events_superseded_total{destination="a"' in scrape
