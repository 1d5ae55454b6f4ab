"""`rules test` and `rules diff`: what the rules do with events, and what a change changes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from streamer.rules_report import changes, outcome, summary
from tests.rules_helpers import HEADER, alert, config_from

ROOT = Path(__file__).parent.parent
RULES = """
routes:
  - name: payments
    match: ['labels.team = payments']
    destination: a
    templates: {title: "{{ alert.labels.alertname }}"}
"""


def test_one_walk_gives_the_outcome_and_its_explanation(tmp_path: Path) -> None:
    rules = config_from(tmp_path, RULES).rules
    plain, explained = outcome(rules, alert()), outcome(rules, alert(), explain=True)
    assert explained.pop("explain")
    assert plain == explained
    assert plain["matched_routes"] == ["payments"]


def test_changes_name_route_destination_and_payload(tmp_path: Path) -> None:
    old = config_from(tmp_path, RULES).rules
    moved = config_from(tmp_path, RULES.replace("destination: a", "destination: b")).rules
    retitled = config_from(tmp_path, RULES.replace("alert.labels.alertname", "'x'")).rules
    event = alert()
    assert changes("e", outcome(old, event), outcome(old, event)) is None
    moved_change = changes("e", outcome(old, event), outcome(moved, event))
    assert moved_change is not None
    assert moved_change["changed"] == ["destination"]
    assert moved_change["destinations"] == {"old": ["a"], "new": ["b"]}
    payload_change = changes("e", outcome(old, event), outcome(retitled, event))
    assert payload_change is not None
    assert payload_change["payloads"][0]["fields"] == {
        "title": {"old": "HighErrorRate", "new": "x"}
    }
    assert "1 changed (1 payload)" in summary(2, [payload_change])


def write(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(HEADER + body)
    return str(path)


def test_rules_diff_prints_json_and_a_summary_and_exits_3_on_changes(tmp_path: Path) -> None:
    old = write(tmp_path, "old.yaml", RULES)
    new = write(
        tmp_path, "new.yaml", RULES.replace("labels.team = payments", "labels.team = search")
    )
    firing = json.loads((ROOT / "examples" / "events" / "alert-firing.json").read_text())
    lines = tmp_path / "events.jsonl"
    lines.write_text(
        json.dumps(firing) + "\n\n" + json.dumps({**firing, "labels": {"team": "x"}}) + "\n"
    )
    args = [sys.executable, "-m", "streamer", "rules", "diff", "--old", old, "--new", new]
    done = subprocess.run(
        [*args, "--events", str(lines)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 3, done.stderr
    report = json.loads(done.stdout)
    assert report["events"] == 2
    assert [c["event"] for c in report["changed"]] == [f"{lines}:1"]
    assert report["changed"][0]["routes"] == {"old": ["payments"], "new": []}
    assert "2 events: 1 changed (1 route, 1 destination), 1 unchanged" in done.stderr
    same = subprocess.run(
        [*args[:-1], old, "--events", str(lines)], capture_output=True, text=True, timeout=120
    )
    assert same.returncode == 0, same.stderr


def test_rules_diff_compares_what_a_destination_is_not_its_name(tmp_path: Path) -> None:
    # The review's case: the same name, another URL and token file: not "0 changed".
    old = write(tmp_path, "old.yaml", RULES)
    swapped = HEADER.replace(
        "a: {alert_source_config_id: A, token: {env: TOKEN_A}}",
        "a: {alert_source_config_id: A, token: {file: kafka-password}, url: https://evil.example}",
    )
    assert swapped != HEADER
    new = tmp_path / "new.yaml"
    new.write_text(swapped + RULES)
    event = tmp_path / "event.json"
    event.write_text((ROOT / "examples" / "events" / "alert-firing.json").read_text())
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "streamer",
            "rules",
            "diff",
            "--old",
            old,
            "--new",
            str(new),
            "--event",
            str(event),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 3, done.stderr
    (change,) = json.loads(done.stdout)["changed"]
    assert change["changed"] == ["destination"]
    assert change["destinations"] == {
        "old": ["a (https://api.incident.io, alert source A, token env TOKEN_A, 120/min)"],
        "new": [
            f"a (https://evil.example, alert source A, token file {tmp_path / 'kafka-password'}, "
            "120/min)"
        ],
    }
    assert "1 changed (1 destination)" in done.stderr
