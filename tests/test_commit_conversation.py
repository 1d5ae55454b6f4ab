"""The commit conversation, through the delivery machine's door: how often a member that
waits commits its notes, and that a drain's final note is the last word on its starts.

Driven by the `Harness` of test_delivery_machine.py (commits confirmed at once, notes
read as none, a manual clock).
"""

from __future__ import annotations

import itertools

from streamer.delivery_events import Commit, Event, Revoked, Revoking, Tick
from tests.test_delivery_machine import P0, P1, Harness, ScriptedIncidentIo


def commit_times(h: Harness, seconds: float, step: float = 0.1) -> list[float]:
    """Ticks every `step` for `seconds`; when each asynchronous commit went out."""
    times: list[float] = []
    handle = h.machine.handle

    def recording(event: Event, now: float, wall: float):  # type: ignore[no-untyped-def]
        effects = handle(event, now, wall)
        times.extend(now for e in effects if isinstance(e, Commit) and not e.sync)
        return effects

    h.machine.handle = recording  # type: ignore[method-assign]
    end = h.clock() + seconds
    while h.clock() < end:
        h.clock.advance(step)
        h.feed(Tick())
    h.machine.handle = handle  # type: ignore[method-assign]
    return times


def test_a_member_whose_notes_would_tell_the_same_commits_them_less_often() -> None:
    h = Harness(ScriptedIncidentIo(), commit_interval_seconds=1.0)
    h.event(key="a")
    h.round()  # delivered: a commit soon, then nothing changes
    times = commit_times(h, 12.0)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    budget = h.machine._budget
    idle = budget.tail_seconds - budget.view_interval  # 2 s with a 1 s commit interval
    # the first commits still follow the commit interval (recent demand, a start's note)
    assert gaps and all(gap <= idle + 0.11 for gap in gaps)
    assert sum(1 for gap in gaps if gap > 1.5) >= 3  # then every idle interval
    # others still see this member's write time move well before they judge it gone
    assert idle + budget.view_interval < budget.fresh


def test_a_change_in_what_the_notes_tell_is_committed_at_the_commit_interval() -> None:
    h = Harness(ScriptedIncidentIo(), {"events_per_minute": 1}, commit_interval_seconds=1.0)
    h.event(key="a")
    h.round()
    commit_times(h, 12.0)  # idle by now: every 2 s
    h.event(P1, key="b")  # waits for the limit: a new delivery waiting is news
    times = commit_times(h, 1.05)
    assert times  # within one commit interval, not the idle one


def test_nothing_of_a_partition_starts_once_its_drain_is_over() -> None:
    h = Harness(ScriptedIncidentIo(), request_timeout_seconds=1.0)
    h.start()  # claimed
    h.event(P0, key="a")
    h.feed(Revoking([P0], deadline=h.clock() + 30.0))
    h.feed(Revoked([P0]))  # its final note is built: a start after it would be in none
    h.start()
    h.answer_all()
    assert h.http.posted == [] and h.finished == []
    staying = h.event(P1, key="b")
    h.round()
    assert h.finished == [staying]
