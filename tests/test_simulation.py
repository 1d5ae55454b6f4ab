"""The whole group, simulated (tests/simulation/): its parts, its determinism, a sweep of
seeds, and the seeds that found known bugs.

The sweep runs `STREAMER_SIM_SEEDS` seeds (default 400) of the `quick` profile, each a
short scenario with faults, and asserts every guarantee the simulator checks
(`tests/simulation/invariants.py`). A failing seed's message carries its scenario, its
violations and the command that replays it step by step.

Regression seeds: each was found by the simulator on the code before a fix (the fix's
commit reverted in a scratch copy of the tree: `git diff <fix>^ <fix> -- <files> | patch
-R`; for issue 22 item 5, the shell without its dead-letter index) and passes after it.
Seeds of bugs still open are strict xfails (an `OPEN` dict of (profile, theme, seed,
invariant) and a test asserting that invariant): the day they pass, the test says so, and
the seed moves up to the fixed ones. With no open bug there is no OPEN test (an empty
parameter list would be a skip).
"""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from streamer.failure_policy import FailurePolicy, HoldDestination, RateLimited
from tests.simulation import INVARIANTS, Checks, Scenario, simulate
from tests.simulation.alert_api import ApiFault, Arrival, SimIncidentIo
from tests.simulation.broker import OFFSET_INVALID, Broker, LetterRecord
from tests.simulation.coordinator import Coordinator
from tests.simulation.invariants import REPORTED, Truth
from tests.simulation.scheduler import EPOCH, MemberClock, Scheduler
from tests.simulation.workload import AlertKey, SimMessage

SEEDS = int(os.environ.get("STREAMER_SIM_SEEDS", "400"))
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def quiet_machines():
    """The machines log every 429, hold and failed commit: thousands per sweep."""
    logger = logging.getLogger("streamer")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


def failure(outcome) -> str:
    scenario = outcome.scenario
    theme = f" --theme {scenario.theme}" if scenario.theme_asked else ""
    replay = (
        f"python -m tests.simulation --seed {outcome.seed} --profile {scenario.profile}{theme} "
        "--trace"
    )
    tail = "\n".join(outcome.trace[-30:])
    return f"{outcome.report()}\nreplay: {replay}\nlast steps:\n{tail}"


# -- the sweep --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(SEEDS))
def test_every_guarantee_holds_through_the_faults_of_seed(seed: int) -> None:
    outcome = simulate(seed, profile="quick")
    assert outcome.ok, failure(outcome)


def test_a_seed_replays_exactly() -> None:
    first, second = simulate(7, profile="quick"), simulate(7, profile="quick")
    assert first.digest == second.digest
    assert first.steps == second.steps
    assert simulate(8, profile="quick").digest != first.digest


def test_a_seed_replays_exactly_in_another_process_with_another_hash_seed() -> None:
    """Nothing depends on set or dict order of strings (PYTHONHASHSEED)."""
    code = (
        "import logging; logging.disable(logging.CRITICAL);"
        "from tests.simulation import simulate;"
        "print(simulate(11, profile='quick').digest)"
    )
    digests = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        digests.add(done.stdout.strip())
    assert digests == {simulate(11, profile="quick").digest}


def test_the_command_line_runs_seeds_and_names_the_invariants() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "tests.simulation", "--seeds", "3", "--profile", "quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 seeds (quick)" in done.stdout
    assert "seeds/s" in done.stdout
    for invariant in INVARIANTS:
        assert invariant in done.stdout


# -- regression seeds: found before the fix, pass after it ---------------------------------

# (profile, theme, seed): what the simulator found on the code before the fix
FIXED = {
    # cfd74e9 (`git diff cfd74e9^ cfd74e9 -- streamer/group_budget.py | patch -R` applies
    # to the machine's tree), issue 22 item 2: another member's future starts were clamped to now + 5 s at
    # every read, so the note of a dead member whose clock ran an hour ahead (its partition
    # idle, its note never written again) kept taking its starts from the group's limit:
    # settled backlog windows at 0.17-0.39 of the limit (throughput), 0.56-0.61 after
    "stale-future-starts": [("quick", "skew-ahead-dies", s) for s in (3, 12, 13, 14, 23)],
    # cfd74e9, issue 22 item 3: a previous owner whose clock ran behind made its starts look
    # older than they were: 7 arrivals in a window against a limit of 6 after its SIGTERM
    "clock-behind-overshoot": [
        ("quick", "skew-behind-handover", s) for s in (0, 18, 41, 58, 67, 72)
    ],
    # 58181d0, issue 22 item 4: a superseded event ended when it was superseded; its
    # stand-in rejected (422), it was never sent: commit-behind-terminal, then no-loss (every
    # one of 20 seeds of the theme). The revert does not apply to the machine's dispatch.py:
    # the scratch copy's `DeliveryLedger.supersede` calls `self._terminal(older)` instead of
    # handing `older` to `newer.stands_for` (the semantics before the fix)
    "superseded-then-rejected": [("quick", "coalesce-reject", s) for s in (0, 1, 2, 3)],
    # found here, fixed by notes that tell the next owner which jobs of a message that fans
    # out ended (PartitionNote.partly): such a message was re-sent whole by the next owner
    # (the offset map is per message), after a newer state of one of its keys was accepted:
    # incident.io ended on the older state (order-fan-out)
    "fan-out-resent-after-newer": [("quick", "mixed", s) for s in (11, 45, 100)],
    # found here, fixed by a settle after each claim (handover.py: nothing of a claimed
    # partition starts before the others could read the claim): one member's burst took
    # (nearly) the whole limit of a source, then two members that had had no demand, and
    # had written no note yet, each started their floor within the same window, each unseen
    # by the other: 10 arrivals in 10 s against 9, with no fault at all
    "demand-shift-overshoot": [("quick", "demand-shift", s) for s in (1, 3, 6)],
    # found here, fixed by reading a writer whose partition's note is written again earlier
    # by its clock as a clock that stepped back (group_budget.observe: what was known of it
    # is forgotten; take_over: a note reads as written no earlier than just now): a running
    # member's wall clock stepped back (NTP corrects it, a VM resumes: by 47, 44 and 36
    # minutes) and the group started one past the limit in a window
    "wall-clock-step-overshoot": [("short", "mixed", s) for s in (100, 188, 301)],
    # found by the long run of 1,000 short seeds (open until this fix): reads of the
    # group's notes failed for seconds on end, the kept notes read as gone members' (their
    # shares dropped), and shares announced by demand that added up past the limit were
    # kept in proportion at every start: 16 arrivals in a window of 15 at A. Fixed: a note
    # that could not be read keeps its writer's share (group_budget.observe); shares that
    # fill the limit count whole once this member has started in the window
    # (rate_limit.set_ceiling: one start a window of room, not one at every start)
    "note-read-failure-overshoot": [("short", None, 703)],
    # found by the same run: a member paused 600 s by a 429 was killed, and its note, taken
    # over 20 s later, read as written at the take-over: the pause ran 20 s past the one
    # incident.io asked for, and again at the next hand-over; B started nothing for two
    # windows after it. Fixed: a note whose write time was seen in a view is read from
    # when it was first seen (group_budget.take_over; as written now only if written
    # earlier than a note of its writer seen before: a clock that stepped back)
    "clock-step-stall": [("short", None, 935)],
    # `make simulate SEEDS=2000` on 2026-12-07 (1,999 held): a member whose clock ran
    # 3,386 s ahead was killed at 60 s; at 66.7 s its peer had 7 arrivals at A in a 20 s
    # window whose limit is 6. The peer was assigned the dead member's partitions, and a
    # view of the group landed before their notes were taken over: read as its own
    # already, they left the view, and their starts counted nowhere until the take-over.
    # Fixed: a partition's note counts as its writer's until it is taken over
    # (group_budget.observe)
    "skew-ahead-kill-overshoot": [("short", None, 1175)],
    # found by `--seeds 3000 --start 2000 --profile short` (2,999 held), a fault of the
    # simulated coordinator, not of the machine: a static member killed while revoking a
    # partition was back within its session and was handed that partition too, while its
    # new owner had it: both dead-lettered one message (dead-letter-once). Fixed in
    # coordinator.join: a static member back takes what its predecessor kept, not what it
    # was giving up
    "static-rejoin-two-owners": [("short", None, 3839)],
    # found by `--seeds 3000 --start 5000 --profile short` (2,999 held), a fault of the
    # simulator's liveness bound, not of the machine: a hostile 429 paused A for 600 s
    # with 48 events waiting; once the pause was over A ran at 0.9-1.0 of its limit (10 a
    # window), but the bound owed only half of itself after a pause (102 s for 96 s of
    # windows): 3 events left at the deadline. Fixed in run.py: the backlog's windows are
    # owed whole after the pause
    "pause-then-backlog-bound": [("short", None, 6954)],
    # found by `--seeds 2000 --start 8000 --profile short` on e9c9faf (an idle commit reuses
    # the notes built when what they tell last changed, with a new write time): after a
    # member's wall clock stepped 38-40 minutes ahead, its reused notes told its starts by
    # the old clock, 40 minutes old by the new write time: 9 arrivals in a window of 8 at
    # an API key, 11 in 10 at B. Fixed: notes are built again when the wall clock moved
    # against the monotonic one (commit_conversation._notes)
    "reused-note-after-clock-step": [("short", None, 9375), ("short", None, 9656)],
    # found by the same run (open before it): a member back after a kill -9 while every
    # read of the group's notes failed never read the other partition's note; taken for
    # no demand, its share grew to 21 of 22 and it started on top of what its peer had
    # started: 23 arrivals in a window of 22 at an API key. Fixed: a partition whose note
    # was never read counts as having demand (group_budget.observe)
    "never-read-note-no-demand": [("short", None, 8480)],
    # found by `--seeds 3000 --start 10000 --profile short` (2,999 held; open before it): a
    # member took a partition over from a live writer (its tail counted then), and 15 s
    # later, once that writer was killed, its other partition: the tail was counted once
    # per writer, so the writer's last unconfirmed starts were counted by no one: 17
    # arrivals in a window of 16. Fixed: a note written later than the one whose tail was
    # counted counts its tail again (group_budget.take_over)
    "tail-counted-once-per-writer": [("short", None, 12999)],
    # found by `--seeds 400 --start 800 --profile long` (399 held; open before it): reads
    # of the group's notes failed for seconds while one member's demand ended; the three
    # others each took a raise from 10 to 13 of 40 that no one could read, each counting
    # the others at their old 10: 41 arrivals in a window at B. Fixed: a raise is taken
    # only at a view that read every note (group_budget.observe)
    "raise-taken-unseen": [("long", None, 1103)],
    # found by `--seeds 2000 --start 14000 --profile short` (1,999 held; open before it,
    # and on cb0c5df): a periodic commit answered after a revoke's final one left a note
    # announcing its writer's whole share (10) on a partition it let go, which the next
    # owner never committed again; the writer, live elsewhere at share 1, was counted as
    # 10 for good by a member back after a terminate: ~2 of A's 10 a window, and at 191 s
    # four messages not terminal. Fixed: a note not written again for `fresh` keeps no
    # share for its writer (its starts still count; group_budget.observe)
    "stale-note-share-kept": [("short", None, 14492)],
}


@pytest.mark.parametrize(
    "profile,theme,seed",
    [case for cases in FIXED.values() for case in cases],
    ids=[f"{bug}-{seed}" for bug, cases in FIXED.items() for _, _, seed in cases],
)
def test_a_seed_that_found_a_fixed_bug_passes(profile: str, theme: str | None, seed: int) -> None:
    outcome = simulate(seed, profile=profile, theme=theme)
    assert outcome.ok, failure(outcome)


def test_dead_letters_are_written_once_across_a_kill_with_the_index_and_twice_without() -> None:
    """Issue 22 item 5: a poison message's letter is written, its member killed before the
    commit, and the next owner writes it again. The engine's DeadLetterWriter asks the
    dead-letter index first (the shell here does as it does); without it (the shell before
    the fix) the same seeds write a second letter."""
    once = Checks(frozenset({"dead-letter-once"}))
    for seed in (20, 38):
        outcome = simulate(seed, profile="quick", theme="kill-poison", checks=once)
        assert outcome.ok, failure(outcome)
        before = simulate(
            seed, profile="quick", theme="kill-poison", checks=once, dead_letter_index=False
        )
        assert [v.invariant for v in before.violations] == ["dead-letter-once"]


@pytest.mark.parametrize("seed", [54, 115, 161])
def test_a_message_both_of_whose_destinations_refuse_it_gets_two_letters(seed: int) -> None:
    """Found here, in issue 22 item 5's fix: the dead-letter index keyed letters by source
    offset only, so when both destinations of a message refused it (422), the second
    letter was taken as written: that event was in no letter, and its offset committed
    past it (commit-behind-terminal). Fixed: a letter's identity is its source offset,
    route and destination (`dead_letter_index.SourceOffset`)."""
    outcome = simulate(seed, profile="quick", invalid_fan_out=True)
    assert outcome.ok, failure(outcome)


@pytest.mark.parametrize("seed", [2758, 2965])
def test_a_group_view_that_cannot_be_read_keeps_the_group_within_its_limit(seed: int) -> None:
    """Found here (the long run): while reads of the group's notes failed for some
    partitions, a member started as if the others' starts there were gone: 7 arrivals in a
    window against 6 (seed 2758), 13 against 12 (seed 2965); neither seed went past the
    limit without the failed reads. Fixed: a partition whose note cannot be read counts
    as its last note said (`CommitConversation.group_read`)."""
    outcome = simulate(seed, profile="short", checks=Checks(frozenset({"rate"})))
    assert outcome.ok, failure(outcome)


# -- the broker and the coordinator ------------------------------------------------------


def message(seq: int, partition: int = 0) -> SimMessage:
    return SimMessage(seq, partition, "event", (AlertKey("a", f"k{seq}", partition),))


def test_the_broker_answers_offset_invalid_before_the_first_commit_then_the_note() -> None:
    broker = Broker(2)
    assert broker.produce(message(0)) == 0
    assert broker.produce(message(1)) == 1
    assert broker.read_note(0) == (OFFSET_INVALID, None)
    broker.commit(0, 1, "note", "m0.1", 1.0)
    assert broker.read_note(0) == (1, "note")
    assert broker.end(0) == 2 and broker.end(1) == 0


class Group:
    def __init__(self, partitions: int, session: float = 10.0) -> None:
        self.scheduler = Scheduler()
        self.revokes: list[tuple[str, list[int]]] = []
        self.assigns: list[tuple[str, list[int]]] = []
        self.coordinator = Coordinator(
            self.scheduler,
            partitions,
            random.Random(0),
            session_timeout=session,
            revoke=lambda m, ps: self.revokes.append((m, ps)),
            assign=lambda m, ps: self.assigns.append((m, ps)),
        )

    def run(self, until: float) -> None:
        while (t := self.scheduler.next_time()) is not None and t <= until:
            self.scheduler.step()
        self.scheduler.now = until

    def owned(self) -> dict[str, list[int]]:
        return {m: sorted(e.owned) for m, e in sorted(self.coordinator.entries.items())}

    def finish_revokes(self) -> None:
        while self.revokes:
            member, partitions = self.revokes.pop(0)
            self.coordinator.revoked(member, partitions)


def test_a_join_revokes_only_what_moves_and_assigns_it_after_the_revoke() -> None:
    group = Group(4)
    group.coordinator.join("a", None)
    group.run(1.0)
    assert group.owned() == {"a": [0, 1, 2, 3]}
    group.coordinator.join("b", None)
    group.run(2.0)
    assert group.revokes == [("a", [2, 3])]
    assert ("b", [2, 3]) not in group.assigns  # not before the revoke is over
    group.finish_revokes()
    assert group.owned() == {"a": [0, 1], "b": [2, 3]}
    assert group.assigns[-1] == ("b", [2, 3])


def test_a_killed_members_partitions_move_after_its_session_times_out() -> None:
    group = Group(2, session=10.0)
    for member in ("a", "b"):
        group.coordinator.join(member, None)
    group.run(1.0)
    group.finish_revokes()
    group.run(2.0)
    group.coordinator.died("a")
    group.run(10.5)
    assert group.owned()["a"] == [0]  # still its own: no heartbeat missed long enough
    group.run(13.0)
    assert group.owned() == {"b": [0, 1]}


def test_a_static_member_back_within_its_session_keeps_its_partitions() -> None:
    group = Group(2, session=10.0)
    group.coordinator.join("a.1", "a")
    group.coordinator.join("b.1", "b")
    group.run(1.0)
    group.finish_revokes()
    group.run(2.0)
    before = group.owned()["a.1"]
    group.coordinator.died("a.1")
    group.run(5.0)
    group.coordinator.join("a.2", "a")
    assert group.owned()["a.2"] == before
    assert group.assigns[-1] == ("a.2", before)
    group.run(30.0)
    assert group.owned()["a.2"] == before  # the old session's timeout moves nothing


def test_a_static_member_killed_while_revoking_is_back_without_what_it_gave_up() -> None:
    """The short seed 3839: a's partition moves to a new member b, a is killed before its
    revoke is over and is back (static) within its session. What it was giving up goes to
    b alone: handed to a's new incarnation too, both owned it and both dead-lettered the
    same message (a fault of the simulated coordinator, not of the machine)."""
    group = Group(2, session=10.0)
    group.coordinator.join("a.1", "a")
    group.run(1.0)
    assert group.owned() == {"a.1": [0, 1]}
    group.coordinator.join("b.1", "b")
    group.run(2.0)
    assert group.revokes == [("a.1", [1])]
    group.coordinator.died("a.1")  # before its revoke is over
    group.run(5.0)
    group.coordinator.join("a.2", "a")
    group.run(6.0)
    assert group.owned() == {"a.2": [0], "b.1": [1]}
    since = [ps for member, ps in group.assigns if member != "a.1"]
    assert sorted(p for ps in since for p in ps) == [0, 1]  # each handed out once


def test_partitions_nobody_could_take_go_to_a_static_member_back_in_its_place() -> None:
    """b's session ends while a is dead (its session not over yet): nobody live takes b's
    partition; a's restart takes a's place, and then b's partition too."""
    group = Group(2, session=10.0)
    group.coordinator.join("a.1", "a")
    group.coordinator.join("b.1", "b")
    group.run(1.0)
    group.finish_revokes()
    group.run(2.0)
    group.coordinator.leave("b.1")  # static: its partitions wait for its session to end
    group.run(8.0)
    group.coordinator.died("a.1")  # its session ends at 18
    group.run(13.0)  # b's is over: its partition waits, nobody live can take it
    assert group.owned() == {"a.1": [0]}
    group.coordinator.join("a.2", "a")
    group.run(14.0)
    assert group.owned() == {"a.2": [0, 1]}


def test_a_lost_member_is_out_at_once_and_only_owners_may_commit() -> None:
    group = Group(2)
    group.coordinator.join("a", None)
    group.coordinator.join("b", None)
    group.run(1.0)
    group.finish_revokes()
    group.run(2.0)
    assert group.coordinator.may_commit("a", 0) is None
    assert group.coordinator.may_commit("a", 1) == "ILLEGAL_GENERATION"
    assert group.coordinator.lose("a") == [0]
    assert group.coordinator.may_commit("a", 0) == "UNKNOWN_MEMBER_ID"
    group.run(3.0)
    assert group.owned() == {"b": [0, 1]}


# -- the simulated incident.io -------------------------------------------------------------


def api(limit: int = 2, window: float = 10.0) -> SimIncidentIo:
    return SimIncidentIo(
        {"A": ("token-a", limit)},
        window=window,
        requests_per_window_per_token=1200,
        rng=random.Random(0),
    )


PAYLOAD = {"title": "t", "status": "firing", "deduplication_key": "k"}


def test_the_limit_is_counted_at_arrival_with_a_real_429_body() -> None:
    incident_io = api(limit=2)
    answers = [incident_io.arrive(t, "A", "token-a", PAYLOAD, "m", 0, 0) for t in (0, 1, 2)]
    assert [a.status for a in answers] == [202, 202, 429]
    body = json.loads(answers[2].body)
    assert body["rate_limit"]["limit"] == 2 and body["type"] == "too_many_requests"
    decision = FailurePolicy().decide_response(
        429, answers[2].headers, answers[2].body, attempt=0, first_attempt_at=0, now=EPOCH + 2
    )
    assert isinstance(decision, RateLimited) and decision.retry_at == pytest.approx(EPOCH + 10)
    assert incident_io.arrive(10.5, "A", "token-a", PAYLOAD, "m", 0, 0).status == 202
    assert len(incident_io.arrivals) == 4


def test_a_401_hold_replaces_the_answer_and_holds_the_destination() -> None:
    incident_io = api()
    incident_io.faults.append(ApiFault("401", 0.0, 5.0, "A"))
    answer = incident_io.arrive(1.0, "A", "token-a", PAYLOAD, "m", 0, 0)
    assert answer.status == 401 and not incident_io.arrivals[-1].accepted
    decision = FailurePolicy().decide_response(
        401, answer.headers, answer.body, attempt=0, first_attempt_at=0, now=1.0
    )
    assert isinstance(decision, HoldDestination)
    assert incident_io.arrive(6.0, "A", "token-a", PAYLOAD, "m", 0, 0).status == 202


def test_a_wrong_payload_is_refused_as_incident_io_does() -> None:
    answer = api().arrive(0.0, "A", "token-a", {**PAYLOAD, "status": "bogus"}, "m", 0, 0)
    assert answer.status == 422


def test_member_clocks_keep_their_origin_and_skew() -> None:
    clock = MemberClock(origin=500.0, skew=-3600.0)
    assert clock.monotonic(10.0) == 510.0
    assert clock.wall(10.0) == EPOCH + 10.0 - 3600.0
    assert clock.true_time(510.0) == 10.0


# -- the checker catches what it must --------------------------------------------------------


def truth(limit: int = 2) -> tuple[Truth, Broker]:
    broker = Broker(1)
    return Truth(broker, {"A": (10.0, limit)}, Checks(frozenset(INVARIANTS))), broker


def arrival(at: float, offset: int, key: str = "k", accepted: bool = True) -> Arrival:
    return Arrival(at, "A", "m0.1", 0, offset, key, 202 if accepted else 429, accepted)


def test_the_checker_counts_every_arrival_in_any_window() -> None:
    checker, _ = truth(limit=2)
    for at in (0.0, 5.0, 9.9):
        checker.arrival(arrival(at, 0), "a", True, ["A"])
    assert [v.invariant for v in checker.violations] == ["rate"]
    checker, _ = truth(limit=2)
    for at in (0.0, 5.0, 10.0):
        checker.arrival(arrival(at, 0), "a", True, ["A"])
    assert not checker.violations


def test_a_commit_past_a_waiting_message_is_a_violation() -> None:
    checker, broker = truth()
    for seq in range(3):
        broker.produce(SimMessage(seq, 0, "event", (AlertKey("a", "k", 0),)))
    checker.arrival(arrival(1.0, 0), "a", True, ["A"])
    checker.committed(0, 1, "m0.1", 1.0)
    assert not checker.violations
    checker.committed(0, 3, "m0.1", 2.0)
    assert [v.invariant for v in checker.violations] == ["commit-behind-terminal"]


def test_a_superseded_message_is_terminal_only_once_a_newer_state_is_accepted() -> None:
    checker, broker = truth()
    for seq in range(2):
        broker.produce(SimMessage(seq, 0, "event", (AlertKey("a", "k", 0),)))
    assert not checker.terminal(0, 0)
    checker.dead_letter(LetterRecord(0, 1, "a", "http-422", "m0.1", 1.0))
    assert not checker.terminal(0, 0)  # its stand-in was rejected: it must be sent itself
    checker.arrival(arrival(2.0, 1), "a", True, ["A"])
    assert checker.terminal(0, 0)


def test_an_older_state_accepted_last_is_a_violation_and_a_second_letter_is_reported() -> None:
    checker, broker = truth(limit=10)
    for seq in range(2):
        broker.produce(SimMessage(seq, 0, "event", (AlertKey("a", "k", 0),)))
    checker.arrival(arrival(1.0, 1), "a", True, ["A"])
    checker.arrival(arrival(2.0, 0), "a", True, ["A"])
    checker.finish(3.0)
    assert [v.invariant for v in checker.violations] == ["order-final"]
    record = LetterRecord(0, 0, None, "decode:poison", "m0.1", 1.0)
    checker.dead_letter(record)
    checker.dead_letter(record)
    assert checker.violations[-1].invariant == "dead-letter-once"
    assert "order-fan-out" in REPORTED  # reported by default, asserted on request


def test_a_scenario_is_drawn_from_its_seed_alone() -> None:
    assert Scenario.draw(5, "quick").describe() == Scenario.draw(5, "quick").describe()
    assert Scenario.draw(5, "quick").describe() != Scenario.draw(6, "quick").describe()
