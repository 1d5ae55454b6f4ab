"""A deterministic simulator of the whole consumer group (issue 23, items 2-4).

Several members run the real `DeliveryMachine` in one process, in simulated time, against
a simulated broker and coordinator (`broker.py`, `coordinator.py`: partitions, commits
with their notes, cooperative-sticky assignment, session timeouts, static members), a
simulated incident.io (`alert_api.py`: the real contract's answers, sliding-window
limits counted at arrival, 429s, 5xx, 401 holds, slow and hostile answers), per-member
clocks with skew (`scheduler.py`), and injected faults (`scenario.py`, played by
`run.py`). Each member's shell (`member.py`) only performs effects and feeds their
results back. `invariants.py` checks every guarantee after every step. Everything is
drawn from the seed: a failing seed replays exactly (`python -m tests.simulation --seed N
--trace`).
"""

from tests.simulation.invariants import INVARIANTS, Checks, Violation
from tests.simulation.run import Outcome, simulate
from tests.simulation.scenario import Scenario

__all__ = ["INVARIANTS", "Checks", "Outcome", "Scenario", "Violation", "simulate"]
