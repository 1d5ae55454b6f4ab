"""`python -m tests.simulation --seeds N`: run many seeds, report the first failing one.

Prints seeds per second, the invariants checked (how many times each), what was only
reported (switchable invariants), the busiest window per source, and for the first
failing seed its scenario, its violations and the command that replays it.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import Counter, defaultdict

from tests.simulation.invariants import INVARIANTS, Checks
from tests.simulation.run import simulate
from tests.simulation.scenario import PROFILES, THEMES

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.simulation", description=__doc__)
    parser.add_argument("--seeds", type=int, default=100, help="how many seeds to run")
    parser.add_argument("--start", type=int, default=0, help="the first seed")
    parser.add_argument("--seed", type=int, help="replay one seed (prints its report)")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="short")
    parser.add_argument("--theme", choices=THEMES, help="draw every seed with this theme")
    parser.add_argument("--trace", action="store_true", help="print the replayed seed's steps")
    parser.add_argument(
        "--report-only",
        action="append",
        default=[],
        choices=INVARIANTS,
        help="count this invariant's violations instead of failing (repeatable)",
    )
    parser.add_argument(
        "--assert",
        dest="asserted",
        action="append",
        default=[],
        choices=INVARIANTS,
        help="fail on this invariant too (order-zombie, order-fan-out are reported by default)",
    )
    parser.add_argument(
        "--max-tick",
        type=float,
        default=1.0,
        help="the longest a member goes without a Tick (the engine: ~0.1 s)",
    )
    parser.add_argument(
        "--no-dead-letter-index",
        action="store_true",
        help="the shell writes every letter asked for (before issue 22 item 5's index)",
    )
    parser.add_argument(
        "--invalid-fan-out",
        action="store_true",
        help="a message that fans out may be refused by both destinations (an open bug)",
    )
    parser.add_argument("--keep-going", action="store_true", help="run all seeds, list failures")
    parser.add_argument("-v", "--verbose", action="store_true", help="the machines' logs too")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.CRITICAL)
    asserted = (Checks().asserted | set(args.asserted)) - set(args.report_only)
    checks = Checks(frozenset(asserted))

    if args.seed is not None:
        outcome = simulate(
            args.seed,
            profile=args.profile,
            theme=args.theme,
            checks=checks,
            full_trace=args.trace,
            max_tick=args.max_tick,
            dead_letter_index=not args.no_dead_letter_index,
            invalid_fan_out=args.invalid_fan_out,
        )
        if args.trace:
            print("\n".join(outcome.trace))
        print(outcome.report())
        return 0 if outcome.ok else 1

    started = time.perf_counter()
    checked: Counter[str] = Counter()
    reported: Counter[str] = Counter()
    busiest: dict[str, list[float]] = defaultdict(list)
    backlog: dict[str, list[float]] = defaultdict(list)
    failures = []
    seeds = range(args.start, args.start + args.seeds)
    run = 0
    simulated = 0.0
    for seed in seeds:
        outcome = simulate(
            seed,
            profile=args.profile,
            theme=args.theme,
            checks=checks,
            max_tick=args.max_tick,
            dead_letter_index=not args.no_dead_letter_index,
            invalid_fan_out=args.invalid_fan_out,
        )
        run += 1
        simulated += outcome.simulated_seconds
        checked.update(outcome.checked)
        reported.update({k: 1 for k in outcome.reported})
        for source, value in outcome.busiest.items():
            busiest[source].append(value)
        for source, value in outcome.backlog_fraction.items():
            backlog[source].append(value)
        if not outcome.ok:
            failures.append(outcome)
            if not args.keep_going:
                break
    elapsed = time.perf_counter() - started
    print(
        f"{run} seeds ({args.profile}) in {elapsed:.1f} s: {run / elapsed:.1f} seeds/s, "
        f"{simulated / elapsed:.0f} simulated s per s"
    )
    print("invariants checked: " + ", ".join(f"{k} {checked[k]}" for k in INVARIANTS))
    asserted_list = sorted(checks.asserted)
    print("asserted: " + ", ".join(asserted_list))
    if reported:
        print(
            "seeds with reported-only violations: "
            + ", ".join(f"{k} {v}" for k, v in sorted(reported.items()))
        )
    for source, values in sorted(busiest.items()):
        values.sort()
        print(
            f"busiest window/limit at {source}: median {values[len(values) // 2]:.2f}, "
            f"max {values[-1]:.2f}"
        )
    for source, values in sorted(backlog.items()):
        values.sort()
        print(
            f"settled backlog windows at {source} ({len(values)} seeds): worst window/limit "
            f"min {values[0]:.2f}, median {values[len(values) // 2]:.2f}"
        )
    if not failures:
        print("no failing seed")
        return 0
    first = failures[0]
    print(f"{len(failures)} failing seed(s): {', '.join(str(f.seed) for f in failures)}")
    print(first.report())
    extra = "".join(f" --report-only {r}" for r in args.report_only)
    extra += "".join(f" --assert {a}" for a in args.asserted)
    if args.invalid_fan_out:
        extra += " --invalid-fan-out"
    if args.no_dead_letter_index:
        extra += " --no-dead-letter-index"
    if args.max_tick != 1.0:
        extra += f" --max-tick {args.max_tick:g}"
    print(
        f"replay: python -m tests.simulation --seed {first.seed} "
        f"--profile {args.profile}{' --theme ' + args.theme if args.theme else ''}{extra} "
        "--trace"
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
