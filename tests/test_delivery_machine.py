"""The delivery machine, driven through its one door: what starts, when, and what each
answer does to it, without a broker or threads.

incident.io is a scripted client here (answers in order); time is a manual clock; the
`Harness` performs the machine's effects the simplest way (commits confirmed at once,
notes read as none) and feeds their results back, as a shell does.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Mapping
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from streamer.config import DeliverySettings, Destination, TokenSource
from streamer.dead_letters import DeadLetter, SourceMessage
from streamer.delivery_events import (
    Answered,
    Assigned,
    Commit,
    CommitAnswered,
    DeadLetterWritten,
    Event,
    Fetched,
    Incoming,
    LetGo,
    NotesRead,
    Post,
    ReadNotes,
    Revoking,
    Tick,
    WriteDeadLetter,
)
from streamer.delivery_machine import DeliveryMachine
from streamer.dispatch import Delivery
from streamer.incident_io import Answer
from streamer.instrumentation import Stats, stats_of
from streamer.ledger import Job, OrderingKey
from streamer.telemetry import Telemetry
from tests.conftest import ManualClock

P0, P1 = ("events", 0), ("events", 1)


class ScriptedIncidentIo:
    """Answers each POST with the next scripted answer (or raises it)."""

    def __init__(self, *answers: Answer | Exception) -> None:
        self.answers = deque(answers)
        self.posted: list[Mapping[str, Any]] = []

    def answer(self, post: Post) -> Answer | Exception:
        self.posted.append(post.payload)
        return self.answers.popleft() if self.answers else Answer(202, {}, b"{}")


def answer(status: int, body: Any = None, **headers: str) -> Answer:
    return Answer(status, headers, json.dumps(body or {}).encode())


class Harness:
    def __init__(
        self, http: ScriptedIncidentIo, destination: Mapping[str, Any] = {}, **settings: Any
    ) -> None:
        self.clock = ManualClock(1000.0)
        self.settings = DeliverySettings(rate_limit_margin_seconds=0.0, **settings)
        spec = Destination(alert_source_config_id="SRC", token=TokenSource(env="T"), **destination)
        self.telemetry = Telemetry()
        self.machine = DeliveryMachine(
            self.settings,
            {"a": spec},
            {"a": SecretStr("t")},
            now=self.clock(),
            telemetry=self.telemetry,
            rng=lambda: 0.999,  # every backoff at its ceiling
        )
        self.http = http
        self.finished: list[Job] = []  # accepted by incident.io while still ours
        self.released: list[Job] = []  # answered after their partition was let go
        self.dead: list[Job] = []  # dead letters produced, not yet acknowledged
        self.in_flight: list[Post] = []
        self.offsets = {P0: 0, P1: 0}
        self.machine._handover.settle = 0.0  # claims settle at once here (test_handover.py)
        self.feed(Assigned([P0, P1], total_partitions=2))
        # a member's share grows to the whole limit once the group could have heard of it
        self.clock.advance(self.machine._budget.raise_after)
        self.feed(NotesRead({P0: (-1001, None), P1: (-1001, None)}, group=True))

    # private parts, for assertions only
    @property
    def ledger(self):
        return self.machine._ledger

    @property
    def destinations(self):
        return self.machine._destinations

    @property
    def stats(self) -> Stats:
        return stats_of(self.telemetry)

    def feed(self, event: Event) -> None:
        """One event through the door; the effects performed, their results fed back."""
        events = deque([event])
        while events:
            for effect in self.machine.handle(events.popleft(), self.clock(), self.clock()):
                if isinstance(effect, Post):
                    self.in_flight.append(effect)
                elif isinstance(effect, WriteDeadLetter):
                    self.dead.append(effect.job)
                elif isinstance(effect, Commit):
                    results = {p: (o, None) for p, (o, _) in effect.offsets.items()}
                    events.append(CommitAnswered(results, sync=effect.sync))
                elif isinstance(effect, ReadNotes) and not effect.group:
                    notes = {p: (-1001, None) for p in effect.partitions}
                    events.append(NotesRead(notes))

    def event(self, partition=P0, key: str = "k", **payload: Any) -> Job | None:
        offset = self.offsets[partition]
        self.offsets[partition] += 1
        source = SourceMessage(partition[0], partition[1], offset, None, b"v", ())
        delivery = Delivery(source, "r", "a", {"n": offset, **payload})
        work = [(OrderingKey("a", key), delivery)]
        self.feed(Fetched([Incoming(partition, offset, 1, work)]))
        jobs = [j for j in self.ledger.queue_of(OrderingKey("a", key)) if j.offset == offset]
        return jobs[0] if jobs else None

    def start(self) -> None:
        """Time passes: what may start starts (and stays in flight); commits are made."""
        self.feed(Tick())
        self.feed(Tick())  # a partition's first commit claims it; then it may start

    def answer_all(self) -> None:
        """incident.io answers every request in flight, in order."""
        while self.in_flight:
            post = self.in_flight.pop(0)
            owned = post.job.partition in self.machine.partitions
            got = self.http.answer(post)
            if isinstance(got, Answer) and got.status == 202:
                (self.finished if owned else self.released).append(post.job)
            elif not owned:
                self.released.append(post.job)
            self.feed(Answered(post.job, got))

    def round(self) -> None:
        """Start what may start, and wait for the answers of what started."""
        self.start()
        self.answer_all()

    def finish_dead_letters(self) -> None:
        """The dead letters so far are written (the broker acknowledged them)."""
        written, self.dead = self.dead, []
        for job in written:
            self.feed(DeadLetterWritten(job))


def test_accepted_deliveries_are_finished_in_order() -> None:
    h = Harness(ScriptedIncidentIo())
    first, second = h.event(key="a"), h.event(key="b")
    h.round()
    assert h.finished == [first, second] and [p["n"] for p in h.http.posted] == [0, 1]


def test_a_revoked_partitions_request_never_starts_after_its_cut_off() -> None:
    h = Harness(ScriptedIncidentIo(), request_timeout_seconds=10.0)
    h.feed(Revoking([P0], deadline=h.clock() + 10.0))  # cut-off: now
    h.event(P0)
    h.round()
    assert h.http.posted == [] and h.destinations["a"].ready  # left to the next owner
    staying = h.event(P1, key="other")
    h.round()
    assert h.finished == [staying]  # the partition that stays is not held back by it
    h.clock.advance(3600)
    h.round()
    assert [p["n"] for p in h.http.posted] == [0]  # P1's only; P0's never started


def test_an_answer_after_a_revoke_only_releases_the_key() -> None:
    h = Harness(ScriptedIncidentIo())
    job = h.event(P0)
    h.start()
    h.feed(LetGo([P0]))  # while the request is in flight
    h.answer_all()
    assert h.released == [job] and h.finished == []


def test_a_429_pauses_the_destination_until_its_retry_after_without_counting_an_attempt():
    h = Harness(ScriptedIncidentIo(answer(429, **{"Retry-After": "30"})))
    job = h.event()
    h.round()
    assert h.finished == [] and job.attempts == 0
    assert h.destinations["a"].ready[0] is job  # first in line again
    h.clock.advance(29)
    h.round()
    assert len(h.http.posted) == 1  # still paused
    h.clock.advance(1)
    h.round()
    assert h.finished == [job]


def test_a_429_during_a_drain_whose_wait_outlasts_the_cut_off_ends_the_drain_early() -> None:
    h = Harness(ScriptedIncidentIo(answer(429, **{"Retry-After": "60"})))
    h.event(P0)
    h.feed(Revoking([P0], deadline=h.clock() + 25.0))  # last start: +15 s
    h.round()
    assert h.machine.drained([P0], producing=False)


def test_a_5xx_is_retried_after_a_backoff() -> None:
    h = Harness(ScriptedIncidentIo(answer(503)), backoff_cap_seconds=5.0)
    job = h.event()
    h.round()
    assert job.attempts == 1 and h.finished == [] and h.machine.has_timers
    h.clock.advance(5.0)
    h.round()
    assert h.finished == [job]


def test_a_401_holds_the_destination_and_only_a_probe_goes_out_until_it_answers() -> None:
    h = Harness(ScriptedIncidentIo(answer(401), answer(401)), hold_retry_seconds=30.0)
    first = h.event(key="a")
    h.round()
    second = h.event(key="b")
    assert h.destinations.held() == 1 and len(h.http.posted) == 1
    h.clock.advance(10)
    h.round()
    assert len(h.http.posted) == 1  # nothing before the probe is due
    h.clock.advance(20)
    h.round()  # the probe: 401 again
    assert len(h.http.posted) == 2 and h.destinations.held() == 1
    h.clock.advance(30)
    h.round()  # the probe is accepted, the hold released,
    h.round()  # and the rest flows
    assert h.destinations.held() == 0 and h.finished == [first, second]
    assert h.dead == []


def test_a_payload_incident_io_refuses_is_dead_lettered_with_its_answer() -> None:
    body = {"type": "validation_error", "request_id": "req-1", "errors": [{"code": "bad"}]}
    h = Harness(ScriptedIncidentIo(answer(422, body)))
    job = h.event()
    h.round()
    [dead] = h.dead
    assert dead is job and isinstance(job.work, DeadLetter)
    assert job.work.reason == "http-422" and job.work.request_id == "req-1"


@pytest.mark.parametrize(
    "hostile",
    [
        Answer(500, {}, b"[" * 200_000),  # nested past the recursion limit
        Answer(400, {"retry-after": "9" * 5000}, b"{}"),
        Answer(429, {}, b'{"rate_limit": {"retry_after": "' + b"9" * 5000 + b'"}}'),
        httpx.ReadTimeout("the peer trickled"),
        RuntimeError("a bug in the client"),
    ],
)
def test_no_answer_or_error_from_the_peer_escapes_the_loop(hostile) -> None:
    h = Harness(ScriptedIncidentIo(hostile))
    job = h.event()
    h.round()  # must not raise
    h.clock.advance(3600)
    h.round()
    assert h.finished == [job] or h.dead == [job]


# -- alert storms: coalescing, priority, what waits and why ---------------------------------


def sent(h: Harness) -> list[int]:
    return [p["n"] for p in h.http.posted]


def test_events_waiting_behind_the_limit_send_only_the_newest_and_commit_the_rest() -> None:
    h = Harness(ScriptedIncidentIo(), {"events_per_minute": 1})
    h.event(key="x")
    h.round()  # sent; the limit is spent for a minute
    for _ in range(3):
        h.event(key="x")  # offsets 1, 2, 3: each supersedes the one waiting before it
    h.round()
    assert sent(h) == [0] and h.stats.superseded == 0
    assert h.ledger.commit_offset(P0) == 1  # not before the newest one stands for them
    h.clock.advance(60)
    h.round()
    assert sent(h) == [0, 3]  # never an older state after a newer one
    assert h.stats.superseded == 2  # ended when offset 3 was accepted
    assert h.ledger.commit_offset(P0) == 4  # superseded offsets commit with their stand-in


def test_an_event_superseded_by_one_incident_io_rejects_is_sent_itself() -> None:
    """Issue 22 item 4: e1 (resolved, valid) waits behind the limit and is superseded by
    e2 (resolved, answered 422). e2 is dead-lettered; e1 must not end with it: it is sent
    (the alert closes), and only then is its offset committed."""
    h = Harness(ScriptedIncidentIo(answer(202), answer(422)), {"events_per_minute": 1})
    h.event(key="x", status="firing")
    h.round()  # offset 0 sent; the limit is spent for a minute
    h.event(key="x", status="resolved", valid=True)  # e1
    h.event(key="x", status="resolved", valid=False)  # e2 supersedes e1
    h.clock.advance(60)
    h.round()  # e2 sent, 422: a dead letter
    assert sent(h) == [0, 2] and [j.offset for j in h.dead] == [2]
    assert h.ledger.commit_offset(P0) == 1  # e1 is not terminal
    h.finish_dead_letters()
    h.clock.advance(60)
    h.round()
    assert sent(h) == [0, 2, 1]  # e1 in e2's place: the alert is resolved
    assert h.stats.superseded == 0 and h.ledger.commit_offset(P0) == 3


def test_coalesce_none_sends_every_state() -> None:
    h = Harness(ScriptedIncidentIo(), {"events_per_minute": 1, "coalesce": "none"})
    for _ in range(4):
        h.event(key="x")
    for _ in range(4):
        h.round()
        h.clock.advance(60)
    assert sent(h) == [0, 1, 2, 3] and h.stats.superseded == 0


def test_an_event_in_flight_is_never_recalled() -> None:
    h = Harness(ScriptedIncidentIo())
    first = h.event(key="x")
    h.start()  # in flight
    h.event(key="x")
    h.event(key="x")  # supersedes offset 1, which waits behind the one in flight
    h.answer_all()
    h.round()
    assert sent(h) == [0, 2] and h.finished[0] is first and h.stats.superseded == 1


def test_a_429_sends_the_newest_state_when_the_limit_reopens() -> None:
    h = Harness(ScriptedIncidentIo(answer(429, **{"Retry-After": "30"})))
    h.event(key="x")
    h.start()
    h.event(key="x")  # arrives while the first is in flight
    h.answer_all()  # 429: the first waits again, and the newer one replaces it
    h.clock.advance(30)
    h.round()
    assert sent(h) == [0, 1] and [j.offset for j in h.finished] == [1]
    assert h.stats.superseded == 1


def test_firing_critical_keys_go_first_then_the_longest_waiting() -> None:
    def storm(priority: str) -> list[str]:
        h = Harness(ScriptedIncidentIo(), {"events_per_minute": 1, "priority": priority})
        h.event(key="filler")
        h.round()  # spends the minute
        h.event(key="warning-1", status="firing", metadata={"severity": "warning"})
        h.clock.advance(1)
        h.event(key="warning-2", status="firing", metadata={"severity": "warning"})
        h.clock.advance(1)
        h.event(key="page", status="firing", metadata={"severity": "critical"})
        order = []
        for _ in range(3):
            h.clock.advance(60)
            h.round()
            order.append(h.finished[-1].key.deduplication_key)
        return order

    assert storm("critical-first") == ["page", "warning-1", "warning-2"]
    assert storm("oldest-first") == ["warning-1", "warning-2", "page"]


def test_a_key_keeps_its_place_when_a_newer_event_supersedes_its_waiting_one() -> None:
    h = Harness(ScriptedIncidentIo(), {"events_per_minute": 1})
    h.event(key="filler")
    h.round()
    h.event(key="x")
    h.clock.advance(1)
    h.event(key="y")
    h.clock.advance(1)
    h.event(key="x")  # newer state of x: x still waited longest
    h.clock.advance(60)
    h.round()
    assert h.finished[-1].key.deduplication_key == "x" and sent(h)[-1] == 3


def test_a_key_holding_the_watermark_is_logged_once_and_pending_says_why(caplog) -> None:
    h = Harness(ScriptedIncidentIo(), {"events_per_minute": 1}, watermark_hold_log_seconds=30.0)
    h.event(key="filler")
    h.round()
    h.event(key="db-1//disk")  # offset 1: waits for the limit, and holds P0's watermark
    h.event(P1, key="web-1//http")
    for _ in range(4):
        h.clock.advance(11)
        h.start()
    held = [r.getMessage() for r in caplog.records if "held the commit" in r.getMessage()]
    [line] = [m for m in held if m.startswith("events[0]")]  # once, not on every look
    assert "'db-1//disk'" in line and "rate limit" in line and len(held) == 2
    report = h.machine._out.pending.report.as_json(h.clock())
    [waiting] = [k for k in report["destinations"]["a"]["oldest"] if k["offset"] == 1]
    assert waiting["deduplication_key"] == "db-1//disk" and waiting["reason"] == "window"
    assert waiting["state"] == "queued" and waiting["waiting_seconds"] >= 33
    assert report["destinations"]["a"]["waiting_keys"] == 2
    assert "payload" not in json.dumps(report) and '"n"' not in json.dumps(report)
    scrape = h.telemetry.scrape().decode()
    assert 'streamer_destination_oldest_waiting_age{destination="a",' in scrape
    assert "streamer_partition_oldest_waiting_age{" in scrape


def test_a_retrying_key_is_pending_with_reason_backoff() -> None:
    h = Harness(ScriptedIncidentIo(answer(503)), backoff_base_seconds=5.0, backoff_cap_seconds=5.0)
    h.event(key="x")
    h.round()
    h.clock.advance(1.0)
    h.start()  # the pending report is rebuilt every second
    [key] = h.machine._out.pending.report.oldest["a"]
    assert (key.state, key.reason) == ("retrying", "backoff")


def test_an_event_every_route_of_which_is_muted_is_committed_but_not_counted_dropped() -> None:
    h = Harness(ScriptedIncidentIo())
    h.feed(Fetched([Incoming(P0, 0, 1, [], muted=True), Incoming(P0, 1, 1, [])]))
    h.start()
    assert h.ledger.commit_offset(P0) == 2  # both terminal: committed like dropped ones
    assert h.stats.dropped == 1  # the muted one is counted by route and interval instead


def test_two_works_of_one_key_in_a_message_are_two_jobs_after_a_hand_over() -> None:
    """Two routes to one destination with the same deduplication key: one accepted before
    the hand-over is one skipped by the next owner, never both (a lost delivery)."""
    from streamer.budget import job_digest, not_done

    key = OrderingKey("a", "fp1")
    works = [(key, "route-1"), (key, "route-2"), (OrderingKey("a", "other"), "route-3")]
    assert not_done(works, (job_digest("a", "fp1"),)) == works[1:]
