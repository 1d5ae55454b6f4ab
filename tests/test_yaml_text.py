"""YAML scalars keep their text where labels are read, as Go's yaml.v2 keeps it
(streamer/config/yaml_text.py): through `rules test` and through `rules import`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from streamer.alertmanager import ImportProblems, read_yaml_file
from streamer.config import load_config
from streamer.config.yaml_text import go_bool, line_of, load_go_yaml
from streamer.rules_report import outcome
from tests.rules_helpers import HEADER, alert, config_from

ROOT = Path(__file__).parent.parent

# (as written unquoted, the text Alertmanager reads). PyYAML's YAML 1.1 resolver made them
# True, 8, 31, 1.5, inf, a date, or refused them (None, dates) before.
FORMS = [
    ("yes", "yes"),
    ("on", "on"),
    ("No", "No"),
    ("off", "off"),
    ("y", "y"),
    ("true", "true"),
    ("010", "010"),
    ("0x1F", "0x1F"),
    ("0o17", "0o17"),
    ("1_000", "1_000"),
    ("1.50", "1.50"),
    ("1e3", "1e3"),
    ("-1", "-1"),
    (".inf", ".inf"),
    ("-.Inf", "-.Inf"),
    (".nan", ".nan"),
    ("12:30:00", "12:30:00"),
    ("2024-01-02", "2024-01-02"),
    ("2024-01-02T03:04:05Z", "2024-01-02T03:04:05Z"),
    ("~", ""),
    ("null", ""),
]


def with_labels(**labels: str) -> dict:
    event = alert()
    event["alert"]["labels"] = labels
    return event


@pytest.mark.parametrize(("written", "text"), FORMS)
def test_match_and_match_re_values_and_names_keep_their_text(
    tmp_path: Path, written: str, text: str
) -> None:
    config = config_from(
        tmp_path,
        f"routes:\n  - {{name: r, destination: a, match: {{v: {written}}}, "
        f"match_re: {{w: {written}}}}}\n",
    )
    (route,) = config.rules.routes
    values = [(m.path[-1], m.value) for m in route.matchers]
    assert values == [("v", text), ("w", text)]


@pytest.mark.parametrize(("written", "text"), [f for f in FORMS if f[1]])
def test_a_label_name_keeps_its_text(tmp_path: Path, written: str, text: str) -> None:
    config = config_from(
        tmp_path, f"routes:\n  - {{name: r, destination: a, match: {{{written}: v}}}}\n"
    )
    (route,) = config.rules.routes
    assert [m.path for m in route.matchers] == [("alert", "labels", text)]


def test_settings_outside_label_maps_keep_their_types(tmp_path: Path) -> None:
    config = config_from(
        tmp_path,
        "delivery: {workers: 010, max_retry_seconds: 1.50}\n"
        "routes:\n  - {name: r, destination: a, continue: yes, match: {v: yes}}\n",
    )
    assert config.file.delivery.workers == 8  # YAML 1.1 here, as before: only labels changed
    assert config.file.routes[0].continue_ is True


def test_rules_test_routes_each_form_by_its_text(tmp_path: Path) -> None:
    routes = "".join(
        f"  - {{name: r{i}, destination: a, continue: true, match: {{v: {written}}}}}\n"
        for i, (written, _) in enumerate(FORMS)
    )
    path = tmp_path / "streamer.yaml"
    path.write_text(HEADER + "routes:\n" + routes)
    events = []
    for i, (_, text) in enumerate(FORMS):
        event = with_labels(v=text)
        event["event_time"] = 1795000000000
        event["alert"]["starts_at"] = 1794999400000
        file = tmp_path / f"event-{i}.json"
        file.write_text(json.dumps(event))
        events.append(str(file))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "streamer",
            "rules",
            "test",
            "--config",
            str(path),
            "--event",
            *events,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    matched = [r["matched_routes"] for r in json.loads(done.stdout)]
    # "~" and "null" both read as "", so the event with v="" matches both of their routes
    empty = [f"r{i}" for i, (_, text) in enumerate(FORMS) if text == ""]
    assert matched == [[f"r{i}"] if text else empty for i, (_, text) in enumerate(FORMS)]


def alertmanager_file(tmp_path: Path) -> Path:
    routes = "".join(
        f"    - {{receiver: r{i}, match: {{v: {written}}}, match_re: {{w: {written}}}}}\n"
        for i, (written, _) in enumerate(FORMS)
    )
    receivers = "".join(f"  - name: r{i}\n" for i in range(len(FORMS)))
    path = tmp_path / "alertmanager.yml"
    path.write_text(
        "route:\n  receiver: r0\n  group_wait: 010\n  routes:\n"
        + routes
        + "    - {receiver: 010, matchers: [code=0x1F]}\n"
        + "receivers:\n"
        + receivers
        + "  - name: 010\n"
    )
    return path


def test_the_import_reads_and_writes_each_form_as_its_text(tmp_path: Path) -> None:
    am = alertmanager_file(tmp_path)
    base = tmp_path / "base.yaml"
    base.write_text(HEADER)
    output = tmp_path / "imported.yaml"
    receivers = [a for i in range(len(FORMS)) for a in ("--receiver", f"r{i}=a")]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "streamer",
            "rules",
            "import",
            str(am),
            "--config",
            str(base),
            *receivers,
            "--receiver",
            "010=b",
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert "group_wait: 010" in done.stderr  # the gap quotes the text, not 8
    written = yaml.safe_load(output.read_text())  # YAML 1.1: unquoted forms would change
    routes = written["routes"]
    for route, (_, text) in zip(routes, FORMS, strict=False):
        assert route["match"] == {"v": text} and route["match_re"] == {"w": text}
    assert routes[-1] == {
        "name": f"am-{len(FORMS) + 1}",
        "matchers": ["code=0x1F"],
        "destination": "b",
    }
    rules = load_config(output, check_secrets=False).rules
    for _, text in FORMS:
        delivered = outcome(rules, with_labels(v=text, w=text))["deliveries"]
        assert [d["destination"] for d in delivered] == ["a"], text
    delivered = outcome(rules, with_labels(code="0x1F", v="zzz", w="zzz"))["deliveries"]
    assert [d["destination"] for d in delivered] == ["b"]


def test_an_alertmanager_file_is_read_as_text_with_lines(tmp_path: Path) -> None:
    path = tmp_path / "am.yml"
    path.write_text("route:\n  receiver: r\n  continue: on\nreceivers:\n  - name: 010\n")
    data = read_yaml_file(path)
    assert data["receivers"][0]["name"] == "010"
    assert go_bool(data["route"]["continue"]) is True
    assert line_of(data, "receivers") == 4 and line_of(data["receivers"], 0) == 5
    assert line_of(data["route"], "continue") == 3


def test_a_key_given_twice_is_refused_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "am.yml"
    path.write_text("route:\n  receiver: r\n  receiver: s\n")
    with pytest.raises(ImportProblems) as error:
        read_yaml_file(path)
    assert error.value.problems == [f"{path}:3: 'receiver' appears twice in this mapping"]


def test_merge_keys_still_merge_and_own_keys_win() -> None:
    data = load_go_yaml("a: &x {k: 1, n: 2}\nb: {<<: *x, k: 3}\n")
    assert data["b"] == {"k": "3", "n": "2"}


def test_go_booleans() -> None:
    assert [go_bool(v) for v in ("y", "ON", "False", "off", "maybe", None)] == [
        True,
        True,
        False,
        False,
        None,
        None,
    ]
