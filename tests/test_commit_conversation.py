"""The commit conversation, through the delivery machine's door: how often a member that
waits commits its notes, and that a drain's final note is the last word on its starts.

Driven by the `Harness` of test_delivery_machine.py (commits confirmed at once, notes
read as none, a manual clock).
"""

from __future__ import annotations

import itertools

from streamer.budget import decode
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


def test_a_revoked_partitions_final_note_is_not_overwritten_before_it_is_let_go() -> None:
    # short seed 14492: a periodic commit answered after the revoke's final one left a
    # non-final note announcing a whole share on a partition no one committed again
    h = Harness(ScriptedIncidentIo(), commit_interval_seconds=1.0)
    h.start()
    h.event(P0, key="a")
    h.event(P1, key="b")
    h.round()
    h.feed(Revoking([P0], deadline=h.clock() + 30.0))
    h.feed(Revoked([P0]))  # its final note goes out in a synchronous commit
    commits: list[Commit] = []
    handle = h.machine.handle

    def recording(event: Event, now: float, wall: float):  # type: ignore[no-untyped-def]
        effects = handle(event, now, wall)
        commits.extend(e for e in effects if isinstance(e, Commit))
        return effects

    h.machine.handle = recording  # type: ignore[method-assign]
    for _ in range(30):  # LetGo comes late: periodic commits meanwhile
        h.clock.advance(0.1)
        h.feed(Tick())
    assert commits and all(P0 not in c.offsets for c in commits)
    assert any(P1 in c.offsets for c in commits)


def test_a_note_committed_again_after_the_wall_clock_stepped_tells_its_starts_by_the_new_clock() -> (
    None
):
    """The simulator's short seeds 9375 and 9656: an idle member's notes were committed
    again as built, with a new write time; after its wall clock stepped 40 minutes ahead
    (NTP, a VM resumed), its starts still told the old clock: read against the new write
    time they were 40 minutes old, out of every window, and the others started past the
    limit (9 arrivals in a window of 8 at an API key)."""
    h = Harness(ScriptedIncidentIo(), commit_interval_seconds=1.0)
    step = 0.0
    notes: list[tuple[float, str]] = []  # (when, P0's note)
    handle = h.machine.handle

    def stepped(event: Event, now: float, wall: float):  # type: ignore[no-untyped-def]
        effects = handle(event, now, wall + step)
        commits = [e for e in effects if isinstance(e, Commit) and P0 in e.offsets]
        notes.extend((now, e.offsets[P0][1]) for e in commits)
        return effects

    h.machine.handle = stepped  # type: ignore[method-assign]
    h.event(key="a")
    h.round()  # one start, at 1000 + raise_after
    started = h.clock()
    commit_times(h, 4.0)  # its notes built, then committed again as they are
    step = 2400.0
    notes.clear()
    commit_times(h, 3.0)
    assert notes
    for now, text in notes:
        note = decode(text, 0)
        [start] = note.spent["a"].starts
        assert abs((note.written - start) - (now - started)) < 0.5  # its age, told right


def test_a_member_alone_waiting_on_a_limit_wakes_for_its_commits_not_for_views() -> None:
    """Owning every partition, a view would read only the member's own notes: while
    deliveries wait on a rate limit, the loop sleeps from commit to commit (each wakeup
    costs CPU: bench/waiting.py), not from view to view."""
    h = Harness(ScriptedIncidentIo(), {"events_per_minute": 1}, commit_interval_seconds=1.0)
    h.event(key="a")
    h.event(key="b")
    h.round()  # a sent; b waits a minute for the limit
    commit_times(h, 6.0)  # idle by now
    wakeups, end = 0, h.clock() + 20.0
    while h.clock() < end:  # the engine's loop: asleep until the next thing that can happen
        h.clock.advance(max(0.002, h.machine.next_wakeup(h.clock()) - h.clock()))
        h.feed(Tick())
        wakeups += 1
    idle = h.machine._budget.tail_seconds - h.machine._budget.view_interval  # 2 s
    assert wakeups <= 20.0 / idle + 1  # a view each second would wake it 20 times
    assert len(h.http.posted) == 1  # b still waits
