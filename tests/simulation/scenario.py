"""A scenario drawn from a seed: the group, the topic, the destinations and the faults.

`Scenario.draw(seed, profile)` picks everything from `random.Random(seed)`: the group
(members, static or not, their wall-clock skews), the topic (partitions, alert keys, a
backlog produced over time), the destinations (limits, `coalesce`, a shared API key or
not), and the faults with their times (kill -9 with or without a restart, SIGTERM with
a drain and a restart, a member joining, a lost session, commit failures, dead-letter
produce failures, unreadable notes, 5xx bursts, 401 holds, slow and hostile answers).
A `theme` weights the draw toward one of the bugs the simulator must find (issue 22:
`skew-ahead-dies`, `skew-behind-handover`, `coalesce-reject`, `kill-poison`), toward
one found here (`demand-shift`: one member's burst takes the whole limit, then the
others' backlog starts within the same window), or `mixed`. `run.simulate` plays it.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from dataclasses import dataclass, field

from tests.simulation.alert_api import ApiFault
from tests.simulation.workload import WorkloadShape

log = logging.getLogger(__name__)

THEMES = (
    "mixed",
    "skew-ahead-dies",
    "skew-behind-handover",
    "coalesce-reject",
    "kill-poison",
    "demand-shift",
)
DESTINATIONS = ("a", "b")


@dataclass(frozen=True)
class Profile:
    """How big a scenario is: the rate window, the limits, the backlog."""

    window: float
    limits: tuple[int, ...]
    messages: tuple[int, int]
    production_seconds: tuple[float, float]


PROFILES = {
    # make test: a few hundred seeds in about a minute
    "quick": Profile(10.0, (3, 4, 6), (30, 80), (8.0, 25.0)),
    # make simulate: longer backlogs
    "short": Profile(20.0, (3, 5, 8), (40, 110), (10.0, 40.0)),
    # incident.io's real window, minutes of production
    "long": Profile(60.0, (10, 20, 30), (150, 400), (60.0, 180.0)),
}


@dataclass(frozen=True)
class Fault:
    at: float
    kind: str  # kill | term | join | lose | step (member faults); the others are periods
    member: str = ""
    restart_after: float | None = None  # kill/term/lose: back after this long (None: never)
    skew_after: float | None = None  # the restarted process's wall skew (None: the same);
    # step: the running process's wall clock jumps to this skew (NTP, a VM resumed)


@dataclass
class Scenario:
    seed: int
    profile: str
    theme: str
    theme_asked: bool
    members: int
    static: bool
    skews: dict[str, float]
    partitions: int
    window: float
    limits: dict[str, int]
    per_key: int
    shared_token: bool
    coalesce: str
    session_timeout: float
    shape: WorkloadShape
    faults: list[Fault] = field(default_factory=list)
    api_faults: list[ApiFault] = field(default_factory=list)
    commit_failures: list[tuple[float, float, float]] = field(default_factory=list)
    dead_letter_failures: list[tuple[float, float, float]] = field(default_factory=list)
    note_read_failures: list[tuple[float, float, float]] = field(default_factory=list)

    @classmethod
    def draw(cls, seed: int, profile: str = "short", theme: str | None = None) -> Scenario:
        rng = random.Random(f"{seed}:scenario")
        # demand-shift (an open bug found here) only when asked for: see tests/test_simulation.py
        # A theme asked for skips this draw: `--seed N --theme T` is another scenario than
        # seed N drawn as T (replay with exactly the flags the failing run had).
        asked = theme is not None
        theme = theme or rng.choices(THEMES, weights=(4, 1, 1, 1, 1, 0))[0]
        size = PROFILES[profile]
        members = rng.randint(2, 4)
        partitions = rng.randint(members, members + 4)
        window = size.window
        # per member: every member keeps a floor of each limit (group_budget shares), so a
        # limit of a few starts per window among five members is all floors
        limits = {d: rng.choice(size.limits) * members for d in DESTINATIONS}
        shared_token = rng.random() < 0.3
        per_key = 1200
        if shared_token and rng.random() < 0.5:  # the API key binds before the sources do
            per_key = max(4, int(0.7 * sum(limits.values())))
        messages = rng.randint(*size.messages)
        production_seconds = rng.uniform(*size.production_seconds)
        shape = WorkloadShape(
            partitions=partitions,
            destinations=DESTINATIONS,
            keys=rng.randint(4, 24),
            messages=messages,
            production_seconds=production_seconds,
            poison=0.15 if theme == "kill-poison" else rng.choice([0.0, 0.03]),
            dropped=rng.choice([0.0, 0.15, 0.4]),
            invalid=0.3 if theme == "coalesce-reject" else rng.choice([0.0, 0.05]),
            fan_out=rng.choice([0.0, 0.05]),
        )
        names = [f"m{i}" for i in range(members)]
        skews = {n: _skew(rng, window) for n in names}
        scenario = cls(
            seed=seed,
            profile=profile,
            theme=theme,
            theme_asked=asked,
            members=members,
            static=rng.random() < 0.5,
            skews=skews,
            partitions=partitions,
            window=window,
            limits=limits,
            per_key=per_key,
            shared_token=shared_token,
            coalesce="latest" if theme == "coalesce-reject" else rng.choice(["latest", "none"]),
            session_timeout=rng.choice([6.0, 10.0, 20.0]),
            shape=shape,
        )
        scenario._draw_faults(rng, names)
        if theme == "mixed":  # its own stream: the other draws stay as they were
            steps = random.Random(f"{seed}:clock-steps")
            if steps.random() < 0.2:
                at = steps.uniform(2, scenario.shape.production_seconds + 10)
                to = _skew(steps, window, wild=True)
                scenario.faults.append(Fault(at, "step", steps.choice(names), None, to))
        return scenario

    def _draw_faults(self, rng: random.Random, names: list[str]) -> None:
        horizon = self.shape.production_seconds + 10
        theme = self.theme
        if theme == "skew-ahead-dies":  # see workload.stale_note_production
            victim = names[0]
            self.skews[victim] = rng.uniform(600, 3600)
            self.coalesce = "none"
            self.faults.append(Fault(self.stale_kill_at, "kill", victim, None))
            return
        if theme == "demand-shift":  # the same burst, then the others' backlog; no fault
            self.skews[names[0]] = 0.0
            self.coalesce = "none"
            return
        elif theme == "skew-behind-handover":
            victim = names[0]
            self.skews[victim] = -rng.uniform(0.3, 0.9) * self.window
            # handed over while its starts are still in the window: a drain (SIGTERM), or
            # a kill -9 of a static member back within its session
            kind = rng.choices(["kill", "term"], weights=(1, 3))[0]
            self.static = self.static or kind == "kill"
            at = rng.uniform(0.3, 0.9) * self.shape.production_seconds + 2
            self.faults.append(Fault(at, kind, victim, rng.choice([None, 1.0]), 0.0))
        elif theme == "kill-poison":
            for _ in range(rng.randint(1, 3)):
                self.faults.append(
                    Fault(rng.uniform(2, horizon), "kill", rng.choice(names), rng.uniform(0.5, 8))
                )
        extra = rng.randint(1, 4) if theme == "mixed" else rng.randint(0, 2)
        joined = 0
        for _ in range(extra):
            at = rng.uniform(2, horizon)
            kind = rng.choices(
                [
                    "kill",
                    "term",
                    "join",
                    "lose",
                    "commit",
                    "dead-letter",
                    "notes",
                    "5xx",
                    "401",
                    "slow",
                    "hostile",
                    "clock",
                ],
                weights=(3, 3, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1),
            )[0]
            length = rng.uniform(2, 15)
            if kind in ("kill", "term"):
                restart = rng.choice([None, rng.uniform(0.5, 3), rng.uniform(3, 25)])
                self.faults.append(Fault(at, kind, rng.choice(names), restart))
            elif kind == "lose":
                self.faults.append(Fault(at, kind, rng.choice(names), rng.uniform(0.5, 3)))
            elif kind == "join":
                name = f"m{self.members + joined}"
                joined += 1
                self.skews[name] = _skew(rng, self.window)
                self.faults.append(Fault(at, "join", name))
            elif kind == "clock":  # a restart on a host whose clock jumped
                self.faults.append(
                    Fault(at, "term", rng.choice(names), 1.0, _skew(rng, self.window, wild=True))
                )
            elif kind == "commit":
                self.commit_failures.append((at, at + length, rng.uniform(0.2, 1.0)))
            elif kind == "dead-letter":
                self.dead_letter_failures.append((at, at + length, rng.uniform(0.2, 1.0)))
            elif kind == "notes":
                self.note_read_failures.append((at, at + length, rng.uniform(0.2, 1.0)))
            else:
                source = rng.choice([None, "A", "B"])
                probability = 1.0 if kind in ("401", "slow") else rng.uniform(0.3, 1.0)
                self.api_faults.append(ApiFault(kind, at, at + length, source, probability))
        # someone is running at the end: the first member always comes back
        self.faults = [
            dataclasses.replace(f, restart_after=f.restart_after or 2.0)
            if f.member == names[0] and f.kind in ("kill", "term") and theme != "skew-ahead-dies"
            else f
            for f in self.faults
        ]
        if theme == "skew-ahead-dies" and self.members < 2:
            self.members = 2

    @property
    def stale_kill_at(self) -> float:
        return 3 * self.window  # shares settled; the burst's starts in its last window

    @property
    def calm(self) -> float:
        """When the last fault is over (and the production)."""
        ends = [self.shape.production_seconds]
        if self.theme in ("skew-ahead-dies", "demand-shift"):
            ends.append(self.stale_kill_at + 1 + self.shape.production_seconds)
        ends += [f.at + (f.restart_after or 0) for f in self.faults]
        ends += [f.end for f in self.api_faults]
        ends += [end for _, end, _ in self.commit_failures + self.dead_letter_failures]
        ends += [end for _, end, _ in self.note_read_failures]
        return max(ends) + 0.5

    def describe(self) -> str:
        faults = "; ".join(
            f"{f.kind} {f.member} at {f.at:.1f}"
            + (f" to {f.skew_after:+.0f}s" if f.kind == "step" and f.skew_after is not None else "")
            + (f" back after {f.restart_after:.1f}" if f.restart_after else "")
            for f in sorted(self.faults, key=lambda f: f.at)
        )
        api = "; ".join(
            f"{f.kind} {f.source or '*'} {f.start:.1f}-{f.end:.1f}" for f in self.api_faults
        )
        return (
            f"seed {self.seed} ({self.profile}, {self.theme}): {self.members} members "
            f"({'static' if self.static else 'dynamic'}, skews "
            + ", ".join(f"{n} {s:+.0f}s" for n, s in sorted(self.skews.items()))
            + f"), {self.partitions} partitions, {self.shape.messages} messages over "
            f"{self.shape.production_seconds:.0f} s, limits {self.limits}/{self.window:g} s"
            f"{' shared key ' + str(self.per_key) if self.shared_token else ''}, coalesce "
            f"{self.coalesce}, session {self.session_timeout:g} s; faults: {faults or 'none'}"
            f"; api: {api or 'none'}; commit failures {len(self.commit_failures)}, "
            f"letter failures {len(self.dead_letter_failures)}, note failures "
            f"{len(self.note_read_failures)}"
        )


def _skew(rng: random.Random, window: float, wild: bool = False) -> float:
    roll = rng.random()
    if roll < (0.3 if wild else 0.7):
        return rng.uniform(-0.5, 0.5)
    if roll < (0.65 if wild else 0.88):
        return rng.choice([-1, 1]) * rng.uniform(1, 0.9 * window)
    return rng.choice([-1, 1]) * rng.uniform(600, 3600)
