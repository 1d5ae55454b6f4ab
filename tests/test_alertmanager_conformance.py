"""Alertmanager's own routing and matcher tests, as data, through `rules import` and the walk
`rules test` reports (tests/alertmanager_conformance/README.md says where each fact is from)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamer.alertmanager import ImportProblems, import_alertmanager
from streamer.config import ConfigError, load_config
from streamer.rules_report import outcome
from streamer.time_intervals import DayRange, IntervalSpec, parse_spec
from tests.rules_helpers import SCHEMA, alert

DATA = Path(__file__).parent / "alertmanager_conformance"
ROUTING = yaml.safe_load((DATA / "routing.yaml").read_text())
MATCHERS = yaml.safe_load((DATA / "matchers.yaml").read_text())


def receivers_of(route: dict[str, Any]) -> set[str]:
    found = {route["receiver"]} if "receiver" in route else set()
    for child in route.get("routes") or []:
        found |= receivers_of(child)
    return found


def imported(
    tmp_path: Path, route: dict[str, Any], mode: str = "fallback"
) -> tuple[Path, list[str]]:
    """The tree imported on a base whose destinations are named after the receivers, its
    matchers read in Alertmanager's `mode`."""
    names = sorted(receivers_of(route))
    base = {
        "matcher_mode": mode,
        "reader_schema": str(SCHEMA),
        "topics": [{"name": "events", "format": "json"}],
        "destinations": {
            n: {"alert_source_config_id": f"ID-{n}", "token": {"env": "TOKEN"}} for n in names
        },
    }
    result = import_alertmanager(
        {"route": route, "receivers": [{"name": n} for n in names]},
        base,
        receivers={n: n for n in names},
        base_dir=tmp_path,
        output_dir=tmp_path,
    )
    path = tmp_path / "streamer.yaml"
    path.write_text(result.to_yaml("alertmanager.yml"))
    return path, result.gaps


def event_with(labels: dict[str, str]) -> dict[str, Any]:
    event = alert()
    event["alert"]["labels"] = dict(labels)
    return event


def notified(config_path: Path, labels: dict[str, str]) -> list[str]:
    result = outcome(load_config(config_path, check_secrets=False).rules, event_with(labels))
    assert not result["dead_letters"], result["dead_letters"]
    return [d["destination"] for d in result["deliveries"]]


ROUTING_CASES = [
    pytest.param(tree, case, id=f"{tree['source'].split()[-1]}-{i}")
    for tree in ROUTING["trees"]
    for i, case in enumerate(tree["cases"])
]


@pytest.mark.parametrize(("tree", "case"), ROUTING_CASES)
def test_route_tree(tmp_path: Path, tree: dict[str, Any], case: dict[str, Any]) -> None:
    path, gaps = imported(tmp_path, tree["route"])
    assert notified(path, case["labels"]) == case["receivers"]
    for gap in tree.get("gaps", []):
        assert any(f"{gap}:" in g for g in gaps), gaps


def test_route_walk(tmp_path: Path) -> None:
    (walk,) = ROUTING["walks"]
    (tree,) = [t for t in ROUTING["trees"] if t["source"] == walk["tree"]]
    path, _ = imported(tmp_path, tree["route"])
    rules = load_config(path, check_secrets=False).rules
    assert rules.default is not None
    order = [rules.default.destination] + [
        r.destination for r in rules.walk() if r is not rules.default
    ]
    assert order == walk["receivers"]


# Which of Alertmanager's matcher parsers each group's source tests: the UTF-8 parser's own
# tests hold in utf8-strict mode; the classic parser's in classic mode; the rest in fallback,
# Alertmanager's default.
MODES = {"parse": "utf8-strict", "compliance": "utf8-strict", "utf8_names": "utf8-strict"}
MODES |= {"classic": "classic"}


def matcher_cases() -> list[Any]:
    cases = []
    for group, entries in MATCHERS.items():
        for entry in entries:
            if entry.get("refused"):
                cases.append(
                    pytest.param(entry, None, "refused", id=f"{group}: {entry['name']}: refused")
                )
            for outcome_name in ("hit", "miss"):
                for i, labels in enumerate(entry.get(outcome_name, [])):
                    cases.append(
                        pytest.param(
                            entry,
                            labels,
                            outcome_name,
                            id=f"{group}: {entry['name']}: {outcome_name} {i}",
                        )
                    )
    return cases


MATCHER_CASES = matcher_cases()


@pytest.mark.parametrize(("entry", "labels", "expected"), MATCHER_CASES)
def test_matcher(
    tmp_path: Path, entry: dict[str, Any], labels: dict[str, str] | None, expected: str
) -> None:
    route: dict[str, Any] = {"receiver": "hit"}
    for key in ("matchers", "match", "match_re"):
        if key in entry:
            route[key] = entry[key]
    group = next(g for g, entries in MATCHERS.items() if entry in entries)
    mode = MODES.get(group, "fallback")
    if expected == "refused":  # by the import (its own reading), or else by the loader
        with pytest.raises((ImportProblems, ConfigError)):
            path, _ = imported(tmp_path, {"receiver": "miss", "routes": [route]}, mode)
            load_config(path, check_secrets=False)
        return
    path, _ = imported(tmp_path, {"receiver": "miss", "routes": [route]}, mode)
    assert labels is not None
    assert notified(path, labels) == [expected]
    # fallback mode: a text the parsers read differently, or only the classic one reads, is
    # said (file:line, both readings), never read silently
    warnings = load_config(path, check_secrets=False).warnings
    assert bool(warnings) == bool(entry.get("warning")), warnings


def test_the_suite_is_all_there() -> None:
    # Counted here so a lost file or a YAML slip cannot shrink the suite unnoticed.
    assert len(ROUTING_CASES) == 28
    assert len(MATCHER_CASES) >= 250
    assert sum(1 for e in MATCHERS["fallback"] if e.get("warning")) == 6


def test_the_cli_imports_and_tests_a_tree_as_alertmanager_routes_it(tmp_path: Path) -> None:
    tree = ROUTING["trees"][0]
    base_path, _ = imported(tmp_path, tree["route"])  # a base with the destinations
    names = sorted(receivers_of(tree["route"]))
    (tmp_path / "alertmanager.yml").write_text(
        yaml.safe_dump({"route": tree["route"], "receivers": [{"name": n} for n in names]})
    )
    receivers = [arg for n in names for arg in ("--receiver", f"{n}={n}")]
    output = tmp_path / "imported.yaml"
    run = [sys.executable, "-m", "streamer", "rules"]
    done = subprocess.run(
        [
            *run,
            "import",
            str(tmp_path / "alertmanager.yml"),
            "--config",
            str(base_path),
            *receivers,
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "group_by" in done.stderr  # what has no equivalent is said, not dropped
    events = []
    for i, case in enumerate(tree["cases"]):
        event = event_with(case["labels"])
        event["event_time"] = 1795000000000
        event["alert"]["starts_at"] = 1794999400000
        file = tmp_path / f"event-{i}.json"
        file.write_text(json.dumps(event))
        events += ["--event", str(file)]
    done = subprocess.run(
        [*run, "test", "--config", str(output), *events],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert [[d["destination"] for d in r["deliveries"]] for r in results] == [
        case["receivers"] for case in tree["cases"]
    ]


# -- time intervals (tests/alertmanager_conformance/time_intervals.yaml) ---------------------

INTERVALS = yaml.safe_load((DATA / "time_intervals.yaml").read_text())


def instant(text: str) -> datetime:
    """An instant as the Go tests write it (time.RFC822Z), or ISO 8601."""
    try:
        return datetime.strptime(text, "%d %b %y %H:%M %z")
    except ValueError:
        return datetime.fromisoformat(text)


def imported_intervals(tmp_path: Path, intervals: dict[str, Any], route: dict[str, Any]) -> Path:
    """`route` (its receivers named after the destinations) under a root receiver `miss`,
    with `intervals` (name -> specs) as Alertmanager's `time_intervals:`, imported."""
    tree = {"receiver": "miss", "routes": [route]}
    names = sorted(receivers_of(tree))
    base = {
        "reader_schema": str(SCHEMA),
        "topics": [{"name": "events", "format": "json"}],
        "destinations": {
            n: {"alert_source_config_id": f"ID-{n}", "token": {"env": "TOKEN"}} for n in names
        },
    }
    alertmanager = {
        "route": tree,
        "receivers": [{"name": n} for n in names],
        "time_intervals": [{"name": k, "time_intervals": v} for k, v in intervals.items()],
    }
    result = import_alertmanager(
        alertmanager,
        base,
        receivers={n: n for n in names},
        base_dir=tmp_path,
        output_dir=tmp_path,
    )
    assert not any("time_interval" in gap for gap in result.gaps), result.gaps
    path = tmp_path / "streamer.yaml"
    path.write_text(result.to_yaml("alertmanager.yml"))
    return path


# One route muted by the interval, one active only in it: an instant in the interval reaches
# `active`, one outside it `muted`; what is quiet says which interval made it so.
MUTED_AND_ACTIVE = {
    "routes": [
        {"receiver": "muted", "mute_time_intervals": ["t"], "continue": True},
        {"receiver": "active", "active_time_intervals": ["t"]},
    ]
}


def reached(path: Path, at: datetime) -> tuple[list[str], list[tuple[str, list[str]]]]:
    result = outcome(load_config(path, check_secrets=False).rules, event_with({}), at=at)
    assert not result["dead_letters"] and not result["dropped"]
    muted = [(m["destination"], m["intervals"]) for m in result["muted"]]
    return [d["destination"] for d in result["deliveries"]], muted


def interval_cases() -> list[Any]:
    cases = []
    for group in ("contains", "yaml"):
        for entry in INTERVALS[group]:
            for expected in ("contains", "excludes"):
                for at in entry.get(expected, []):
                    cases.append(
                        pytest.param(entry, at, expected == "contains", id=f"{entry['name']}: {at}")
                    )
    return cases


INTERVAL_CASES = interval_cases()


@pytest.mark.parametrize(("entry", "at", "inside"), INTERVAL_CASES)
def test_time_interval_contains(
    tmp_path: Path, entry: dict[str, Any], at: str, inside: bool
) -> None:
    if "struct" in entry:  # one Alertmanager's parser refuses: the evaluation alone
        ranges = {k: tuple(DayRange(b, e) for b, e in v) for k, v in entry["struct"].items()}
        assert IntervalSpec(**ranges).contains(instant(at)) is inside
        return
    specs = entry.get("specs", [entry.get("spec")])
    path = imported_intervals(tmp_path, {"t": specs}, MUTED_AND_ACTIVE)
    if inside:
        assert reached(path, instant(at)) == (["active"], [("muted", ["t"])])
    else:
        assert reached(path, instant(at)) == (["muted"], [("active", ["t"])])


REFUSED = [e for e in INTERVALS["yaml"] if "error" in e]


@pytest.mark.parametrize("entry", REFUSED, ids=[e["name"] for e in REFUSED])
def test_time_interval_refused(tmp_path: Path, entry: dict[str, Any]) -> None:
    (spec,) = entry["specs"]
    with pytest.raises(ValueError, match="^" + re.escape(entry["error"]) + "$"):
        parse_spec(spec)
    with pytest.raises(ImportProblems, match=re.escape(entry["error"])):
        imported_intervals(tmp_path, {"t": [spec]}, MUTED_AND_ACTIVE)


@pytest.mark.parametrize("case", INTERVALS["times"], ids=str)
def test_time_range(case: dict[str, Any]) -> None:
    times = {k: case[k] for k in ("start_time", "end_time") if k in case}
    if case.get("refused"):
        with pytest.raises(ValueError):
            parse_spec({"times": [times]})
    else:
        (parsed,) = parse_spec({"times": [times]}).times or ()
        assert [parsed.start, parsed.end] == case["minutes"]


@pytest.mark.parametrize("case", INTERVALS["mutes"]["cases"], ids=lambda c: c["name"])
def test_which_intervals_mute_a_route(tmp_path: Path, case: dict[str, Any]) -> None:
    route = {"receiver": "hit", "mute_time_intervals": ["evenings", "weekends"]}
    path = imported_intervals(tmp_path, INTERVALS["mutes"]["intervals"], route)
    delivered, muted = reached(path, instant(case["at"]))
    if case["muted_by"]:
        assert (delivered, muted) == ([], [("hit", case["muted_by"])])
    else:
        assert (delivered, muted) == (["hit"], [])


def test_the_time_interval_suite_is_all_there() -> None:
    assert len(INTERVAL_CASES) == 67
    assert len(REFUSED) == 15
    assert len(INTERVALS["times"]) == 8
    assert len(INTERVALS["mutes"]["cases"]) == 6


# -- inhibition (tests/alertmanager_conformance/inhibition.yaml) -----------------------------

INHIBITION = yaml.safe_load((DATA / "inhibition.yaml").read_text())
NOW = 1_900_000_000.0


def imported_inhibition(
    tmp_path: Path, rules: list[dict[str, Any]], mode: str = "fallback"
) -> Path:
    """Alertmanager's `inhibit_rules` (under a tree with one receiver), imported."""
    base = {
        "matcher_mode": mode,
        "reader_schema": str(SCHEMA),
        "topics": [{"name": "events", "format": "json"}],
        "destinations": {"hit": {"alert_source_config_id": "ID", "token": {"env": "TOKEN"}}},
    }
    alertmanager = {
        "route": {"receiver": "hit"},
        "receivers": [{"name": "hit"}],
        "inhibit_rules": rules,
    }
    result = import_alertmanager(
        alertmanager, base, receivers={"hit": "hit"}, base_dir=tmp_path, output_dir=tmp_path
    )
    assert not any("inhibit" in gap for gap in result.gaps), result.gaps
    path = tmp_path / "streamer.yaml"
    path.write_text(result.to_yaml("alertmanager.yml"))
    return path


@pytest.mark.parametrize(
    "case", INHIBITION["cases"], ids=[f"{c['from']}-{c['name']}" for c in INHIBITION["cases"]]
)
def test_inhibition_mutes_what_alertmanager_mutes(tmp_path: Path, case: dict[str, Any]) -> None:
    from streamer.inhibition import FiringSource, FiringSources, inhibition_of

    rules = load_config(imported_inhibition(tmp_path, case["rules"]), check_secrets=False)
    inhibit_rules = rules.rules.inhibit_rules
    board = FiringSources()
    board.use_rules(inhibit_rules)
    for a in case["alerts"]:
        labels = {str(k): str(v) for k, v in a["labels"].items()}
        if not any(rule.matches_source(labels) for rule in inhibit_rules):
            continue  # Alertmanager keeps only the alerts a rule's source side matches
        until = float("inf") if a["ends_in"] is None else NOW + a["ends_in"]
        board.fire(FiringSource(labels, at=NOW - 60, until=until))
    for target in case["targets"]:
        labels = {str(k): str(v) for k, v in target["labels"].items()}
        found = board.inhibition(inhibit_rules, labels, NOW)
        assert (found is not None) == target["muted"], labels
        plain = inhibition_of(inhibit_rules, list(board), labels, NOW)
        assert (plain is not None) == target["muted"], labels


@pytest.mark.parametrize("case", INHIBITION["names"], ids=lambda c: json.dumps(c["rule"]))
def test_inhibit_rule_names_refused_as_alertmanager_refuses(
    tmp_path: Path, case: dict[str, Any]
) -> None:
    for mode in case.get("loads", []):
        path = imported_inhibition(tmp_path, [case["rule"]], mode)
        assert load_config(path, check_secrets=False).rules.inhibit_rules
    for mode, message in case.get("refused", {}).items():
        with pytest.raises(ImportProblems) as refused:
            imported_inhibition(tmp_path, [case["rule"]], mode)
        assert message in str(refused.value)
