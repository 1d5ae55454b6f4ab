"""The dispatcher: what starts, when, and what each answer does, without a broker.

incident.io is a scripted client here (answers in order); time is a manual clock; the
worker threads are real, and `collect(wait=...)` waits for their answers on the queue.
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
from streamer.destinations import Destinations
from streamer.dispatch import Delivery, Dispatcher
from streamer.handover import HandOver
from streamer.incident_io import Answer
from streamer.instrumentation import MessageSpans, Stats, stats_of
from streamer.ledger import DeliveryLedger, Job, OrderingKey
from streamer.telemetry import Telemetry
from tests.conftest import ManualClock

P0, P1 = ("events", 0), ("events", 1)


class ScriptedIncidentIo:
    """Answers each POST with the next scripted answer (or raises it)."""

    def __init__(self, *answers: Answer | Exception) -> None:
        self.answers = deque(answers)
        self.posted: list[Mapping[str, Any]] = []

    def post_alert_event(
        self, base_url: str, source: str, token: SecretStr, payload: Mapping[str, Any]
    ) -> Answer:
        self.posted.append(payload)
        answer = self.answers.popleft() if self.answers else Answer(202, {}, b"{}")
        if isinstance(answer, Exception):
            raise answer
        return answer

    def close(self) -> None:
        pass


def answer(status: int, body: Any = None, **headers: str) -> Answer:
    return Answer(status, headers, json.dumps(body or {}).encode())


class Harness:
    def __init__(
        self, http: ScriptedIncidentIo, destination: Mapping[str, Any] = {}, **settings: Any
    ) -> None:
        self.clock = ManualClock(1000.0)
        self.settings = DeliverySettings(rate_limit_margin_seconds=0.0, **settings)
        self.ledger = DeliveryLedger()
        self.destinations = Destinations(self.settings)
        spec = Destination(alert_source_config_id="SRC", token=TokenSource(env="T"), **destination)
        self.destinations.configure({"a": spec}, {"a": SecretStr("t")})
        self.handover = HandOver(self.settings.request_timeout_seconds)
        self.finished: list[Job] = []
        self.released: list[Job] = []
        self.dead: list[Job] = []
        self.http = http
        self.telemetry = telemetry = Telemetry()
        self.out = Dispatcher(
            self.settings,
            ledger=self.ledger,
            destinations=self.destinations,
            handover=self.handover,
            http=http,
            telemetry=telemetry,
            spans=MessageSpans(telemetry, "g", self.clock),
            clock=self.clock,
            wall_clock=self.clock,
            activate=lambda job: self.out.enqueue(job),
            finish=self._finish,
            release=self._release,
            dead_letter=self.dead.append,
        )
        for p in (P0, P1):
            self.ledger.assign(p)
        self.offsets = {P0: 0, P1: 0}

    @property
    def stats(self) -> Stats:
        return stats_of(self.telemetry)

    def event(self, partition=P0, key: str = "k", **payload: Any) -> Job:
        offset = self.offsets[partition]
        self.offsets[partition] += 1
        source = SourceMessage(partition[0], partition[1], offset, None, b"v", ())
        delivery = Delivery(source, "r", "a", {"n": offset, **payload})
        jobs = self.ledger.add(partition, offset, [(OrderingKey("a", key), delivery)])
        for job in jobs:
            self.out.enqueue(job)
        self.out.coalesce([(OrderingKey("a", key), delivery)])
        return job if jobs else None

    def _finish(self, job: Job) -> None:  # as the engine does: the key's next job waits
        self.finished.append(job)
        next_jobs, _ = self.out.ended(job)
        for next_job in next_jobs:
            self.out.enqueue(next_job)

    def finish_dead_letters(self) -> None:
        """The dead letters so far are written (as the engine does once acknowledged)."""
        written, self.dead = self.dead, []
        for job in written:
            self._finish(job)

    def _release(self, job: Job) -> None:
        self.released.append(job)
        for next_job in self.ledger.finish(job):
            self.out.enqueue(next_job)

    def round(self) -> None:
        """Start what may start, and wait for the answers of what started."""
        self.out.fire_timers()
        self.out.dispatch()
        while self.out.busy:
            self.out.collect(wait=10.0)


def test_accepted_deliveries_are_finished_in_order() -> None:
    h = Harness(ScriptedIncidentIo())
    first, second = h.event(key="a"), h.event(key="b")
    h.round()
    assert h.finished == [first, second] and [p["n"] for p in h.http.posted] == [0, 1]


def test_a_revoked_partitions_request_never_starts_after_its_cut_off() -> None:
    h = Harness(ScriptedIncidentIo(), request_timeout_seconds=10.0)
    h.handover.begin({P0}, drain_deadline=h.clock() + 10.0)  # cut-off: now
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
    h.out.dispatch()
    h.ledger.revoke(P0)  # while the request is in flight
    while h.out.busy:
        h.out.collect(wait=10.0)
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
    h.handover.begin({P0}, drain_deadline=h.clock() + 25.0)  # last start: +15 s
    h.event(P0)
    h.round()
    starts = list(h.destinations.earliest_starts(h.clock()))
    assert not h.handover.worth_waiting(in_flight=bool(h.out.busy), starts=starts)


def test_a_5xx_is_retried_after_a_backoff() -> None:
    h = Harness(ScriptedIncidentIo(answer(503)), backoff_cap_seconds=5.0)
    job = h.event()
    h.round()
    assert job.attempts == 1 and h.finished == [] and h.out.has_timers
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
    h.out.dispatch()  # in flight
    h.event(key="x")
    h.event(key="x")  # supersedes offset 1, which waits behind the one in flight
    while h.out.busy:
        h.out.collect(wait=10.0)
    h.round()
    assert sent(h) == [0, 2] and h.finished[0] is first and h.stats.superseded == 1


def test_a_429_sends_the_newest_state_when_the_limit_reopens() -> None:
    h = Harness(ScriptedIncidentIo(answer(429, **{"Retry-After": "30"})))
    h.event(key="x")
    h.out.dispatch()
    h.event(key="x")  # arrives while the first is in flight
    while h.out.busy:
        h.out.collect(wait=10.0)  # 429: the first waits again, and the newer one replaces it
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
        h.out.dispatch()
    held = [r.getMessage() for r in caplog.records if "held the commit" in r.getMessage()]
    [line] = [m for m in held if m.startswith("events[0]")]  # once, not on every look
    assert "'db-1//disk'" in line and "rate limit" in line and len(held) == 2
    report = h.out.pending.report.as_json(h.clock())
    [waiting] = [k for k in report["destinations"]["a"]["oldest"] if k["offset"] == 1]
    assert waiting["deduplication_key"] == "db-1//disk" and waiting["reason"] == "limit"
    assert waiting["state"] == "queued" and waiting["waiting_seconds"] >= 33
    assert report["destinations"]["a"]["waiting_keys"] == 2
    assert "payload" not in json.dumps(report) and '"n"' not in json.dumps(report)
    scrape = h.telemetry.scrape().decode()
    assert 'streamer_destination_oldest_waiting_age{destination="a",' in scrape
    assert "streamer_partition_oldest_waiting_age{" in scrape


def test_a_retrying_key_is_pending_with_reason_backoff() -> None:
    h = Harness(ScriptedIncidentIo(answer(503)), backoff_cap_seconds=5.0)
    h.event(key="x")
    h.round()
    h.clock.advance(1.0)
    h.out.pending.refresh(
        h.clock(), h.destinations, h.handover, h.ledger, (j for _, _, j in h.out._timers)
    )
    [key] = h.out.pending.report.oldest["a"]
    assert (key.state, key.reason) == ("retrying", "backoff")
