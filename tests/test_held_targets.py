"""Held targets in the firing topic (streamer/held_targets.py): this member's writes win
over what the follower reads until read back; a newer delivery settles a held key (always
when one is known, and while the topic is not read since the partition was taken); a
release's end tombstones only the record it released; and the release decision."""

from __future__ import annotations

from typing import Any

import pytest

from streamer.delivery_events import HeldSent, HoldTarget
from streamer.held_targets import HeldTarget, HeldTargets, held_key, releasable
from streamer.ledger import OrderingKey
from streamer.telemetry import Telemetry

P0 = ("events", 0)
K = OrderingKey("a", "k")


def target(offset: int = 3, partition: int = 0, **labels: str) -> HeldTarget:
    labels = labels or {"alertname": "DiskSlow", "severity": "warning"}
    body = {"title": "t", "status": "firing", "deduplication_key": "k"}
    return HeldTarget("a", "k", "r", body, labels, None, "events", partition, offset)


class Topic:
    """The producer's side: what was written, acknowledged when the test says."""

    def __init__(self) -> None:
        self.written: list[tuple[str, bytes | None]] = []
        self.acks: list[Any] = []

    def produce(self, key: str, value: bytes | None, acked: Any) -> bool:
        self.written.append((key, value))
        self.acks.append(acked)
        return True


def board(
    topic: Any = None,
    caught_up: bool = True,
    inhibited: bool = False,
    readable: bool = True,
) -> HeldTargets:
    return HeldTargets(
        topic if callable(topic) else topic.produce if topic is not None else None,
        lambda since: caught_up,
        lambda: readable,
        lambda rules, labels: inhibited,
        wall_clock=lambda: 1000.0,
    )


def test_a_record_reads_back_as_it_was_written() -> None:
    held = target()
    assert HeldTarget.decode(held.encode()) == held
    with pytest.raises(ValueError):
        HeldTarget.decode(held.encode().replace(b'"alertname"', b'"alertname": 1, "x"'))


def test_released_only_when_owned_read_since_taken_and_quiet_no_more() -> None:
    held = [target(partition=0), target(partition=1)]
    since = {P0: 10.0}
    assert releasable(held, since, lambda s: True, lambda h: False) == [held[0]]
    assert releasable(held, since, lambda s: s < 10.0, lambda h: False) == []  # not read yet
    assert releasable(held, since, lambda s: True, lambda h: True) == []  # still inhibited


def test_this_members_writes_win_until_the_follower_reads_them_back() -> None:
    topic = Topic()
    held = board(topic)
    held.hold(target())
    name = held_key(K)
    held.settle(K, P0)  # a newer delivery of the key: tombstoned at once, locally
    assert held.targets() == []
    held.read(name, target().encode(), 7)  # the follower reads the held record late
    assert held.targets() == []  # ...an older word: the tombstone stands
    topic.acks[0](7)
    topic.acks[1](8)
    held.read(name, None, 8)  # the tombstone read back: the topic says it now
    assert held.targets() == []
    held.read(name, target(offset=9).encode(), 9)  # another member's later word
    assert held.targets() == [target(offset=9)]


def test_a_failed_tombstone_keeps_its_word_and_is_written_again_at_the_next_look() -> None:
    """Red team F2: a tombstone whose delivery report fails, or that the producer's queue
    refuses, never gives back the topic's older word (a held firing released after its
    resolve): kept, written again at each look until acknowledged, counted."""
    topic = Topic()
    held = board(topic)
    held.due([P0], 0.0)
    held.read(held_key(K), target().encode(), 4)
    held.settle(K, P0)
    topic.acks[0](None)  # its delivery report: not written
    assert held.targets() == [] and held.due([P0], 10.0) == []
    assert topic.written[1:] == [(held_key(K), None)]  # written again at the look
    topic.acks[1](9)
    held.read(held_key(K), None, 9)
    assert held.targets() == [] and held.counts == {"write_failed": 1}
    refused = board(lambda key, value, acked: False)  # type: ignore[arg-type]
    refused.due([P0], 0.0)
    refused.read(held_key(K), target().encode(), 4)
    refused.settle(K, P0)  # the queue full: not queued
    assert refused.targets() == [] and refused.due([P0], 10.0) == []


def test_a_failed_hold_is_kept_and_released_when_its_source_resolves() -> None:
    topic = Topic()
    held = board(topic)
    held.due([P0], 0.0)
    held.hold(target())
    topic.acks[0](None)
    assert held.due([P0], 10.0) == [target()]  # (not lost: still held, and written again)
    assert [k for k, _ in topic.written] == [held_key(K), held_key(K)]


def test_a_newer_delivery_settles_its_key_only_when_it_may_be_held() -> None:
    topic = Topic()
    held = board(topic, caught_up=True)
    held.due([P0], 0.0)
    held.settle(K, P0)  # nothing held, the topic read since the partition was taken
    assert topic.written == []
    waiting = board(topic, caught_up=False)
    waiting.due([P0], 0.0)
    waiting.settle(K, P0, target=lambda: False)  # not a target of any rule: never held
    assert topic.written == []
    waiting.settle(K, P0)  # a target, and the previous owner's records not read yet
    assert topic.written == [(held_key(K), None)]


def test_a_releases_end_tombstones_only_the_record_it_released() -> None:
    topic = Topic()
    held = board(topic)
    held.hold(target(offset=3))
    held.perform(HeldSent(K, P0, 2))  # an older release: a newer state is held since
    assert held.targets() == [target(offset=3)]
    held.perform(HeldSent(K, P0, 3))
    assert held.targets() == [] and topic.written[-1] == (held_key(K), None)


def test_due_releases_what_is_quiet_no_more_and_only_then() -> None:
    held = board()
    held.hold(target())
    assert held.due([P0], 0.0) == [target()]
    assert held.due([P0], 0.5) == []  # looked at a moment ago; nothing changed
    assert held.due([P0], 5.0) == [target()]  # (the machine ignores a release under way)
    held.changed()
    assert held.due([P0], 5.2) == [target()]  # a source resolved: looked at soon
    assert held.due([], 20.0) == []  # not ours
    assert board(inhibited=True).due([P0], 0.0) == []
    unreadable = board(readable=False)
    unreadable.hold(target())
    assert unreadable.due([P0], 0.0) == []  # fail open: nothing is released blind


def test_a_silence_keeps_a_held_target_held() -> None:
    class Silences:
        def matching(self, labels: Any, at: Any) -> list[Any]:
            return ["s"]

    held = board()
    held.show(Telemetry(), Silences(), tuple)
    silenced = HeldTarget("a", "k", "r", {}, {}, {"alert": {"labels": {}}}, "events", 0, 1)
    held.hold(silenced)
    assert held.due([P0], 0.0) == []


def test_a_write_read_back_before_its_acknowledgement_is_not_kept() -> None:
    topic = Topic()
    held = board(topic, caught_up=False)
    name = held_key(K)
    held.settle(K, P0)  # a tombstone (the topic not read yet since P0 was taken)
    held.read(name, None, 10)  # read back before its acknowledgement came
    topic.acks[0](10)
    assert held._mine == {}  # nothing kept for it: memory is bounded by what is held
    held.read(name, target(offset=3).encode(), 11)  # and the topic's later word counts
    assert held.targets() == [target(offset=3)]


def test_an_older_event_inhibited_at_its_turn_never_replaces_a_newer_one_held() -> None:
    held = board()
    held.hold(target(offset=8))  # held at routing
    held.hold(target(offset=5))  # an older job of the key, inhibited at its turn later
    assert held.targets() == [target(offset=8)]
    held.hold(target(offset=9))
    assert held.targets() == [target(offset=9)]


def test_a_target_waiting_for_the_followers_look_is_asked_about_again_soon() -> None:
    read = [False]
    held = HeldTargets(None, lambda since: read[0], lambda: True, lambda rules, labels: False)
    held.hold(target())
    assert held.due([P0], 0.0) == []  # the previous owner's records not read yet
    read[0] = True
    assert held.due([P0], 0.2) == [target()]  # not after the slow look's 5 s


def test_a_target_past_its_until_is_dropped_not_released() -> None:
    """Red team F5: a held target whose end passed is tombstoned without sending, counted;
    one without an `until` (an older record) ends at its event time + resolve_timeout."""
    topic = Topic()
    held = board(topic)  # wall clock 1000, resolve_timeout 300
    held.due([P0], 0.0)
    ended = HeldTarget(**{**target().__dict__, "until": 999.0})
    held.read(held_key(K), ended.encode(), 4)
    assert held.due([P0], 10.0) == []
    assert topic.written == [(held_key(K), None)] and held.counts == {"ended": 1}
    old = board(Topic())
    old.due([P0], 0.0)
    old.read(held_key(K), HeldTarget(**{**target().__dict__, "event_time": 600.0}).encode(), 4)
    assert old.due([P0], 10.0) == []  # 600 + 300 < 1000: ended
    fresh = board(Topic())
    fresh.due([P0], 0.0)
    fresh.read(held_key(K), HeldTarget(**{**target().__dict__, "event_time": 800.0}).encode(), 4)
    fresh.read(held_key(OrderingKey("a", "u")), target().encode().replace(b'"k"', b'"u"'), 5)
    assert len(fresh.due([P0], 10.0)) == 2  # not ended yet, or no time known: released


def test_a_hold_at_routing_keeps_the_events_end_and_at_its_turn_the_resolve_timeout() -> None:
    topic = Topic()
    held = board(topic)
    held.perform(HoldTarget(K, _delivery()))
    assert HeldTarget.decode(topic.written[0][1] or b"").until == 1300.0


def _delivery() -> Any:
    from streamer.dead_letters import SourceMessage
    from streamer.dispatch import Delivery

    body = {"title": "t", "status": "firing", "deduplication_key": "k"}
    return Delivery(SourceMessage("events", 0, 3, None, None, ()), "r", "a", body)


@pytest.mark.parametrize(
    "change",
    [
        (b'"deduplication_key": "k"', b'"deduplication_key": "other"'),  # its content's key
        (b'"status": "firing"', b'"status": "resolved"'),
        (b'"title": "t"', b'"title": 5'),
        (b'"offset": 3', b'"offset": Infinity'),
        (b'"offset": 3', b'"offset": 1e999'),
    ],
)
def test_a_hostile_record_is_skipped(change: tuple[bytes, bytes]) -> None:
    """Red team F12: content naming another key than its record key, a body that is not a
    firing alert event, numbers that are not offsets: skipped, never sent."""
    held = board(Topic())
    held.due([P0], 0.0)
    value = target().encode()
    assert change[0] in value
    held.read(held_key(K), value.replace(*change), 4)
    assert held.targets() == [] and held.due([P0], 10.0) == []


def test_a_silenced_resend_of_a_held_key_replaces_it_and_a_sent_one_settles_it() -> None:
    """Red team F11: K held (inhibited); K's next firing is silenced at routing: it is K's
    latest state, held in place of the older one (released once neither silenced nor
    inhibited), not settled. A silenced firing of a key not held holds nothing."""
    from datetime import UTC, datetime

    from streamer.alert_event import AlertEventPayload
    from streamer.dead_letters import SourceMessage
    from streamer.routing import RoutedAlert

    ends = datetime.fromtimestamp(5000.0, UTC)
    event = {"alert": {"status": "FIRING", "labels": {"alertname": "DiskSlow"}, "ends_at": ends}}
    d = RoutedAlert("r", "a", AlertEventPayload(title="t", status="firing", deduplication_key="k"))
    other = RoutedAlert(
        "r", "a", AlertEventPayload(title="t", status="firing", deduplication_key="o")
    )
    held = board()
    held.routed(SourceMessage("events", 0, 3, None, b"", ()), event, [d], [d], ())
    held.routed(SourceMessage("events", 0, 4, None, b"", ()), event, [d, other], [], (), [d, other])
    [now] = held.targets()
    assert (now.key, now.offset, now.until) == (K, 4, 5000.0)
    held.routed(SourceMessage("events", 0, 5, None, b"", ()), event, [d], [], ())  # sent
    assert held.targets() == []


def test_a_partition_lost_and_taken_back_within_one_poll_is_read_again_from_then() -> None:
    """Red team F13: `due` sees the same owned list, but the take resets its `since`."""
    sinces: list[float] = []
    held = HeldTargets(None, lambda s: sinces.append(s) or True, lambda: True, lambda r, x: False)
    held.due([P0], 0.0)
    held.taken([P0])  # lost and taken again (on_lost, then on_assign)
    held.hold(target())
    held.due([P0], 100.0)
    assert held._since[P0] == 100.0 and sinces[-1] == 100.0


def test_a_release_waits_while_its_route_is_muted() -> None:
    """Red team F6: a target held at 10:00 whose source resolves at 02:00, inside its
    route's mute interval, stays held (as a notification would); released once it ends."""
    muted = [("r", "mute_time_intervals", ("nights",))]
    held = board(Topic())
    held.muted_routes = lambda at: muted
    held.due([P0], 0.0)
    held.hold(target())
    assert held.due([P0], 10.0) == [] and held.targets() == [target()]
    muted.clear()
    assert held.due([P0], 20.0) == [target()]


class Consumer:
    """librdkafka's watermarks: the cached high of this member's last fetch of P0, from an
    earlier assignment (1), and the broker's (2: the previous owner wrote since)."""

    def __init__(self) -> None:
        self.asked: list[bool] = []
        self.down = False

    def get_watermark_offsets(self, tp: Any, timeout: float, cached: bool) -> tuple[int, int]:
        self.asked.append(cached)
        assert timeout <= 2
        if self.down:
            raise RuntimeError("timed out")
        return (0, 1) if cached else (0, 2)


def test_a_release_is_given_the_brokers_high_watermark_once_per_take() -> None:
    """Red team 2, x1: the consumer's cached high survives an assignment (a member that
    owned P0 before gets the high of its old fetch, before the previous owner's resolve):
    a take asks the broker once, asks again only after a failure and a wait, and forgets
    it when the partition is taken again."""
    now = [0.0]
    held, consumer = board(), Consumer()
    held.highs = type(held.highs)(lambda: now[0])
    held.hold(target(offset=0))
    consumer.down = True
    assert held.released(held.targets(), consumer).high == {}  # not known: it waits
    assert held.released(held.targets(), consumer).high == {} and consumer.asked == [False]
    now[0], consumer.down = 5.0, False
    assert held.released(held.targets(), consumer).high == {P0: 2}
    assert held.released(held.targets(), consumer).high == {P0: 2}
    assert consumer.asked == [False, False]  # once per take, never the cache
    held.taken([P0])
    assert held.released(held.targets(), consumer).high == {P0: 2}
    assert consumer.asked == [False, False, False]
    held.hold(target(offset=1, partition=1))  # down: one wait per look, not per partition
    held.taken([P0])
    consumer.down = True
    assert held.released(held.targets(), consumer).high == {}
    assert consumer.asked == [False] * 4


def test_a_failing_write_is_dropped_when_its_partition_is_let_go() -> None:
    """Red team 2, x2: a member cut off from the brokers loses P0 with its hold unwritten;
    back, it must never write its old word over the next owner's (a firing released after
    its resolve, or a newer hold deleted)."""
    for settled in (False, True):
        topic = Topic()
        a = board(topic)
        a.due([P0], 0.0)
        a.hold(target(offset=5))
        if settled:  # its K@6 resolve settles the record read back: its tombstone fails
            topic.acks[-1](0)
            a.read(held_key(K), target(offset=5).encode(), 0)
            a.settle(K, P0, 6)
        topic.acks[-1](None)
        a.due([], 10.0)  # P0 went to another member
        a.read(held_key(K), target(offset=9).encode(), 43)  # its newer hold
        written = len(topic.written)
        a.due([P0], 20.0)
        assert [k for k, _ in topic.written[written:] if k == held_key(K)] == []
        assert a.targets() == [target(offset=9)]


def test_a_failing_write_is_retired_by_a_newer_record_of_its_partition_only() -> None:
    topic = Topic()
    a = board(topic)
    a.due([P0], 0.0)
    a.hold(target(offset=5))
    topic.acks[-1](None)
    a.read(held_key(K), target(offset=4).encode(), 40)  # older, read late: ours stands
    assert a.targets() == [target(offset=5)]
    a.read(held_key(K), target(offset=2, partition=1).encode(), 41)  # no order across
    assert a.targets() == [target(offset=5)]
    a.read(held_key(K), target(offset=7).encode(), 42)  # newer: another's word stands
    written = len(topic.written)
    a.due([P0], 10.0)
    assert topic.written[written:] == [] and a.targets() == [target(offset=7)]


def test_a_release_waiting_for_its_partitions_fetch_is_asked_about_once_a_second() -> None:
    """Red team 2, x4: while the machine holds a release back for a backlog, looks (each
    asks the board about every held target) come once a second, not ten times."""
    asked = [0]

    def inhibited(rules: Any, labels: Any) -> bool:
        asked[0] += 1
        return False

    held = HeldTargets(None, lambda s: True, lambda: True, inhibited, wall_clock=lambda: 1000.0)
    held.hold(target(offset=0))
    waiting, now = False, 0.0
    for _ in range(600):  # a minute of poll steps, 0.1 s apart
        assert held.due([P0], now, waiting) in ([], [target(offset=0)])
        waiting, now = True, now + 0.1
    assert 55 <= asked[0] <= 61


@pytest.mark.parametrize("said", [{}, {"deduplication_key": ""}])
def test_a_hold_of_an_empty_deduplication_key_reads_back_for_every_member(said: Any) -> None:
    """Red team 2, x3: a route's template renders the key empty (routing keys it ""); the
    record was skipped by every reader, so the hold was lost at a hand-over."""
    body = {"title": "t", "status": "firing", **said}
    t = HeldTarget("a", "", "r", body, {"alertname": "x"}, None, "events", 0, 3)
    topic = Topic()
    board(topic).hold(t)
    other = board()
    for key, value in topic.written:
        other.read(key, value, 0)
    assert other.targets() == [t]


def test_a_renamed_routes_release_waits_while_a_route_to_its_destination_is_muted() -> None:
    """Red team 2, x5: held under route "r"; a reload renamed it (or removed it). Its path
    no longer names a route: it waits while a route to its destination is muted."""
    held = board()
    held.hold(target(offset=3))  # route "r", destination "a"
    held.routes = lambda: {"r-renamed": "a", "other": "b"}
    held.muted_routes = lambda at: [("r-renamed", "mute_time_intervals", ("nights",))]
    assert held.due([P0], 0.0) == []
    held.muted_routes = lambda at: [("other", "mute_time_intervals", ("nights",))]
    assert held.due([P0], 10.0) == [target(offset=3)]  # another destination's: released
