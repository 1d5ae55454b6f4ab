"""Held targets' releases through the machine's one door (streamer/held_releases.py): a
release is a job of its key that never overtakes a newer state, moves no watermark, is
fenced, is made once at a time, and asks for its record's tombstone once accepted or
dead-lettered; a delivery inhibited at its turn with nothing newer behind it is held."""

from __future__ import annotations

from typing import Any

from streamer.delivery_events import HeldSent, HoldTarget, LetGo, NotesRead, ReleaseHeld, Revoking
from streamer.held_targets import HeldTarget
from streamer.ledger import OrderingKey
from tests.test_delivery_machine import P0, P1, Harness, ScriptedIncidentIo, answer


class Recording(Harness):
    """The harness, keeping the held targets' effects the shell would perform."""

    def __init__(self, *answers: Any, **settings: Any) -> None:
        self.effects: list[HoldTarget | HeldSent] = []
        super().__init__(ScriptedIncidentIo(*answers), **settings)
        handle = self.machine.handle

        def recording(event, now, wall):  # type: ignore[no-untyped-def]
            effects = handle(event, now, wall)
            self.effects += [e for e in effects if isinstance(e, HoldTarget | HeldSent)]
            return effects

        self.machine.handle = recording  # type: ignore[method-assign]


def rounds(h: Harness, n: int = 3) -> None:
    """Minutes pass: everything that may start does, and is answered."""
    for _ in range(n):
        h.round()
        h.clock.advance(60)


def held(key: str = "k", offset: int = 0, partition: int = 0, n: Any = "held") -> HeldTarget:
    body = {"n": n, "deduplication_key": key}
    return HeldTarget("a", key, "r", body, {"alertname": key}, None, "events", partition, offset)


def test_a_release_is_sent_moves_no_watermark_and_asks_for_its_tombstone() -> None:
    h = Recording()
    h.event(key="one")  # offset 0: read past the held target's source
    h.event(key="two")
    h.feed(ReleaseHeld([held(offset=0)]))
    rounds(h)
    assert [p["n"] for p in h.http.posted] == [0, 1, "held"]
    assert h.effects == [HeldSent(OrderingKey("a", "k"), P0, 0)]
    assert h.ledger.commit_offset(P0) == 2 and h.machine.unfinished() == 0


def test_a_release_waits_behind_its_key_and_what_is_fetched_after_waits_behind_it() -> None:
    h = Recording(destination={"events_per_minute": 1})
    h.event(key="k")  # offset 0, waiting for the limit
    h.round()
    h.event(key="k", status="firing")  # offset 1: queued behind offset 0
    h.feed(ReleaseHeld([held(key="k", offset=0)]))  # ...then the release
    h.event(key="k", status="resolved")  # offset 2: behind the release
    for _ in range(4):
        h.clock.advance(60)
        h.round()
    assert [p["n"] for p in h.http.posted] == [0, 1, "held", 2]


def test_a_release_is_made_only_past_what_this_member_read_of_its_partition() -> None:
    h = Recording()
    h.feed(ReleaseHeld([held(offset=0)]))  # nothing read yet: its message may come again
    h.feed(ReleaseHeld([held(offset=0, partition=7)]))  # not ours
    h.round()
    assert h.http.posted == []
    h.feed(NotesRead({P0: (5, None)}))  # the previous owner committed 5
    h.feed(ReleaseHeld([held(offset=3)]))
    h.feed(ReleaseHeld([held(offset=5, key="later")]))  # at 5: not read yet
    rounds(h)
    assert [p["n"] for p in h.http.posted] == ["held"]


def test_one_release_of_a_key_at_a_time() -> None:
    h = Recording()
    h.event(key="other")
    h.feed(ReleaseHeld([held()]))
    h.start()
    h.feed(ReleaseHeld([held()]))  # asked again while it is in flight: ignored
    h.answer_all()
    rounds(h)
    assert [p["n"] for p in h.http.posted].count("held") == 1
    h.feed(ReleaseHeld([held()]))  # ended: the shell tombstoned it, or it would be again
    rounds(h)
    assert [p["n"] for p in h.http.posted].count("held") == 2


def test_a_revoke_drops_a_waiting_release_and_the_next_owner_releases_it() -> None:
    h = Recording(destination={"events_per_minute": 1})
    h.event(key="k")
    h.round()
    h.event(key="k")
    h.feed(ReleaseHeld([held(offset=0)]))  # queued behind offset 1
    h.feed(LetGo([P0]))
    h.clock.advance(300)
    h.round()
    assert "held" not in [p["n"] for p in h.http.posted] and h.effects == []
    h.feed(ReleaseHeld([held(offset=0)]))  # not ours any more
    h.round()
    assert "held" not in [p["n"] for p in h.http.posted]


def test_a_rejected_release_is_dead_lettered_then_its_tombstone_asked() -> None:
    h = Recording(answer(202), answer(400, {"message": "bad"}))
    h.event(key="other")
    h.feed(ReleaseHeld([held()]))
    rounds(h)
    assert h.effects == [] and h.dead
    h.finish_dead_letters()
    assert h.effects == [HeldSent(OrderingKey("a", "k"), P0, 0)]


def test_a_release_kept_quiet_at_its_turn_stays_held() -> None:
    h = Recording()
    h.machine.quiet_with(lambda d, wall: "inhibited" if d.payload["n"] == "held" else None)
    h.event(key="other")
    h.feed(ReleaseHeld([held()]))
    rounds(h)
    assert [p["n"] for p in h.http.posted] == [0] and h.effects == []


def test_a_delivery_inhibited_at_its_turn_is_held_unless_a_newer_one_waits() -> None:
    h = Recording(destination={"events_per_minute": 1})
    h.event(key="busy")  # takes the only slot of the minute
    h.round()
    h.event(key="alone", status="firing")
    h.event(key="followed", status="firing")
    h.event(key="followed", status="resolved")
    h.machine.quiet_with(
        lambda d, wall: "inhibited" if d.payload.get("status") == "firing" else None
    )
    for _ in range(3):
        h.clock.advance(60)
        h.round()
    assert [type(e) for e in h.effects] == [HoldTarget]
    [hold] = h.effects
    assert hold.key == OrderingKey("a", "alone") and hold.delivery.message.offset == 1
    assert [p.get("status") for p in h.http.posted] == [None, "resolved"]


def test_a_refire_inhibited_at_its_turn_is_held_though_the_resolve_it_stood_for_is_revived() -> (
    None
):
    """Red team F1: K fired (sent), resolved (waits), fired again (supersedes the resolve);
    a source fires: the re-fire ends `inhibited`, the older resolve is revived and sent, and
    the re-fire is still held (the revived resolve is older: it does not say K's state)."""
    h = Recording(destination={"events_per_minute": 1, "coalesce": "latest"})
    h.event(key="k", status="firing")  # offset 0: sent
    h.round()
    h.event(key="k", status="resolved")  # offset 1: waits for the next minute
    h.event(key="k", status="firing")  # offset 2: supersedes the waiting resolve
    h.machine.quiet_with(
        lambda d, wall: "inhibited" if d.payload.get("status") == "firing" else None
    )
    for _ in range(3):
        h.clock.advance(60)
        h.round()
    posted = [(p["n"], p.get("status")) for p in h.http.posted]
    holds = [e for e in h.effects if isinstance(e, HoldTarget)]
    assert posted == [(0, "firing"), (1, "resolved")]
    assert [e.delivery.message.offset for e in holds] == [2]


def test_the_next_owner_releases_only_once_it_fetched_to_the_watermark_of_its_take() -> None:
    """Red team F3: the previous owner held K@0, then routed and sent K@1 (its resolve) and
    was killed before its tombstone and its commit (committed: 1). The next owner reads the
    held record and the source has resolved; released before K@1 is fetched again, K@0
    would reopen the incident. Its partition's high watermark (2) holds it back until the
    fetch reaches it; K@1 is routed first and settles it."""
    h = Recording()
    h.feed(NotesRead({P0: (1, None)}))
    h.feed(ReleaseHeld([held(offset=0)], {}))  # the watermark not known yet: waits
    assert h.machine.held_waiting
    h.feed(ReleaseHeld([held(offset=0)], {P0: 2}))
    assert h.machine.held_waiting
    rounds(h)
    assert h.http.posted == []
    h.offsets[P0] = 1
    h.event(key="k", status="resolved")  # fetched: it settles the record (the shell's side)
    rounds(h)
    assert [(p["n"], p.get("status")) for p in h.http.posted] == [(1, "resolved")]
    h.feed(ReleaseHeld([held(key="other", offset=0)], {P0: 2}))  # fetched to 2: released
    rounds(h)
    assert not h.machine.held_waiting and [p["n"] for p in h.http.posted][-1] == "held"


def test_a_release_whose_record_was_settled_before_its_turn_ends_without_a_request() -> None:
    """Red team F4: the source and the target resolve together; the source's resolve is
    read first and the target's held firing becomes a job; the target's own resolve,
    fetched behind it, settles the record. At its turn the release is no longer its key's
    held state: it ends, nothing is posted, no tombstone is asked (the settle wrote one)."""
    h = Recording(destination={"events_per_minute": 1})
    settled: set[OrderingKey] = set()
    h.machine.quiet_with(lambda d, wall: None, stale=lambda key, p, o: key in settled)
    h.event(key="busy")  # offset 0: takes the minute's slot
    h.round()
    h.feed(ReleaseHeld([held(offset=0)]))
    h.event(key="k", status="resolved")  # offset 1: behind the release
    settled.add(OrderingKey("a", "k"))  # routing settled the record
    for _ in range(3):
        h.clock.advance(60)
        h.round()
    assert [(p["n"], p.get("status")) for p in h.http.posted] == [(0, None), (1, "resolved")]
    assert h.effects == [] and h.machine.unfinished() == 0


def test_a_drain_waits_for_a_release_in_flight() -> None:
    """Red team F7: a drain whose partition has no unfinished message but a release in
    flight does not end until it is answered (the next owner could post a newer state of
    its key first, and would send it again)."""
    h = Recording()
    h.event(key="other")
    h.round()
    h.feed(ReleaseHeld([held(offset=0)]))
    h.start()
    assert [p.payload["n"] for p in h.in_flight] == ["held"]
    h.feed(Revoking([P0], deadline=h.clock() + 30.0))
    assert not h.machine.drained([P0], producing=False)
    assert h.machine.drained([P1], producing=False)
    h.answer_all()
    assert h.machine.drained([P0], producing=False)


def test_a_held_target_of_a_destination_removed_is_dropped_never_posted() -> None:
    """Red team F9: a reload removed its destination: the release is never POSTed (the
    running process keeps the old destination's state), its tombstone is asked."""
    from pydantic import SecretStr

    from streamer.config.model import Destination, TokenSource
    from streamer.delivery_events import ConfigChanged

    h = Recording()
    h.event(key="other")
    rounds(h)
    spec = Destination(alert_source_config_id="SRC-B", token=TokenSource(env="T"))
    h.feed(ConfigChanged({"b": spec}, {"b": SecretStr("tb")}, 2))  # "a" removed
    h.feed(ReleaseHeld([held(offset=0)]))
    rounds(h)
    assert "held" not in [p.get("n") for p in h.http.posted]
    assert h.effects == [HeldSent(OrderingKey("a", "k"), P0, 0)]


def test_a_keys_watermark_gate_is_of_its_take() -> None:
    """Red team 2, x1: the high recorded at a key's first ask is forgotten at a take (the
    notes read): the take's own high decides."""
    h = Recording()
    h.feed(NotesRead({P0: (1, None)}))
    h.feed(ReleaseHeld([held(offset=0)], {P0: 5}))
    assert h.machine.held_waiting
    h.feed(NotesRead({P0: (1, None)}))  # taken again: the broker now says 1
    h.feed(ReleaseHeld([held(offset=0)], {P0: 1}))
    rounds(h)
    assert not h.machine.held_waiting and [p["n"] for p in h.http.posted] == ["held"]


def test_a_release_of_an_empty_deduplication_key_is_found_at_its_turn() -> None:
    """Red team 2, x3: routing keys a delivery without a deduplication key as ""; at its
    turn a release of that key is found as such (it was looked up as "None"), so one
    settled since ends without a request."""
    h = Recording(destination={"events_per_minute": 1})
    settled: set[OrderingKey] = set()
    h.machine.quiet_with(lambda d, wall: None, stale=lambda key, p, o: key in settled)
    h.event(key="busy")  # offset 0: takes the minute's slot
    h.round()
    body = {"n": "held"}  # (no deduplication_key: none rendered)
    h.feed(ReleaseHeld([HeldTarget("a", "", "r", body, {}, None, "events", 0, 0)]))
    settled.add(OrderingKey("a", ""))  # a newer delivery of the key settled the record
    for _ in range(3):
        h.clock.advance(60)
        h.round()
    assert [p["n"] for p in h.http.posted] == [0] and h.effects == []
