"""Loading the operator's file: every problem at once, with file:line and route; secrets safe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from streamer.config import ConfigError, load_config
from tests.rules_helpers import HEADER, config_from

EXAMPLES = Path(__file__).parent.parent / "examples"
GOLDEN = Path(__file__).parent / "golden" / "example-rules-test.json"
EXAMPLE_TOKENS = {
    "INCIDENT_IO_TOKEN_SRE": "tok-sre-123",
    "INCIDENT_IO_TOKEN_PAYMENTS": "tok-pay-456",
}


def problems(tmp_path: Path, body: str, **kwargs) -> list[str]:
    with pytest.raises(ConfigError) as error:
        config_from(tmp_path, body, **kwargs)
    return error.value.problems


def header_lines() -> int:
    return HEADER.count("\n")


@pytest.mark.parametrize(
    ("body", "line", "expected"),
    [
        (
            "routes: [{name: r, destination: nowhere}]",
            1,
            "route r (destination): unknown destination 'nowhere'",
        ),
        (
            "routes: [{name: r, destination: a, match: ['alert.lables.x = y']}]",
            1,
            "route r (match.0): unknown field path alert.lables.x: alert has no field 'lables'",
        ),
        (
            "routes: [{name: r, destination: a, match: ['labels.x =~ \"(\"']}]",
            1,
            "invalid regular expression",
        ),
        (
            "routes: [{name: r, destination: a, match: ['severity.level = x']}]",
            1,
            "severity is a plain value; it has no field 'level'",
        ),
        (
            "routes: [{name: r, destination: a}, {name: r, destination: b}]",
            1,
            "duplicate route name 'r'",
        ),
        (
            "routes:\n  - name: r\n    destination: a\n    templates:\n      title: '{{ nope }}'",
            5,
            "route r (templates.title): unknown variable(s) nope",
        ),
        (
            "routes:\n  - name: r\n    destination: a\n    templates:\n      title: '{% if %}'",
            5,
            "template syntax error",
        ),
        (
            "routes:\n  - name: r\n    destination: a\n    when: 'labels =='",
            4,
            "expression syntax error",
        ),
        ("routes:\n  - name: r\n    destinaton: a", 3, "route r (destinaton): unknown setting"),
        (
            "routes:\n  - name: r\n    match: ['severity = X']",
            2,
            "a top-level route needs `destination:`",
        ),
        (
            "routes:\n  - name: r\n    destination: a\n    routes:\n      - name: c\n        continue: perhaps",
            6,
            "route r > c (continue): Input should be a valid boolean",
        ),
        ("default: {templates: {}}", 1, "default"),
        ("kafka: {group_id: 1}", 1, "kafka.group_id: Input should be a valid string"),
        ("colour: blue", 1, "colour: unknown setting"),
        (
            "delivery: {revoke_drain_seconds: 5}",
            1,
            "revoke_drain_seconds (5.0) must be at least request_timeout_seconds (10.0)",
        ),
    ],
)
def test_each_problem_names_its_line_and_route(
    tmp_path, body: str, line: int, expected: str
) -> None:
    found = problems(tmp_path, body)
    path = tmp_path / "streamer.yaml"
    assert any(expected in p for p in found), found
    assert any(p.startswith(f"{path}:{header_lines() + line}:") for p in found if expected in p), (
        found
    )


def test_every_problem_is_reported_at_once(tmp_path) -> None:
    found = problems(
        tmp_path,
        """
        routes:
          - {name: r, destination: nowhere, match: ['nope = 1', 'x']}
          - {name: r, destination: a, templates: {title: '{{ nope }}'}}
          - {name: s, destination: a, colour: red}
    """,
    )
    assert len(found) == 6, found
    assert found == sorted(found, key=lambda p: int(p.split(":")[1]))  # in file order


def test_topics_and_registry_must_agree(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(HEADER.replace("format: json", "format: confluent") + "routes: []\n")
    with pytest.raises(ConfigError, match="the confluent format needs schema_registry"):
        load_config(path, check_secrets=False)


def test_an_unreadable_or_broken_file_says_so(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("routes: [\n  {name: x\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: not valid YAML"):
        load_config(tmp_path / "bad.yaml")


# -- secrets -------------------------------------------------------------------------


def test_unset_token_variables_are_problems(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("TOKEN_A", raising=False)
    monkeypatch.setenv("TOKEN_B", "b-token")
    found = problems(tmp_path, "routes: []", check_secrets=True)
    assert found == [
        f"{tmp_path / 'streamer.yaml'}:4: destinations.a.token: "
        "the environment variable TOKEN_A is not set"
    ]


def test_tokens_come_from_env_or_file_and_never_print(tmp_path, monkeypatch) -> None:
    (tmp_path / "token-b").write_text("file-secret-b\n")
    monkeypatch.setenv("TOKEN_A", "env-secret-a")
    path = tmp_path / "streamer.yaml"
    path.write_text(HEADER.replace("{env: TOKEN_B}", "{file: token-b}") + "routes: []\n")
    config = load_config(path)
    assert config.tokens["a"].get_secret_value() == "env-secret-a"
    assert config.tokens["b"].get_secret_value() == "file-secret-b"
    for text in (str(config), repr(config), str(config.tokens)):
        assert "env-secret-a" not in text and "file-secret-b" not in text


def test_a_token_is_written_nowhere_in_the_file(tmp_path) -> None:
    path = tmp_path / "inline.yaml"
    path.write_text(
        HEADER.replace("token: {env: TOKEN_A}", "token: plain-text-token") + "routes: []\n"
    )
    with pytest.raises(ConfigError) as error:
        load_config(path, check_secrets=False)
    assert "destinations.a.token" in str(error.value)
    assert "plain-text-token" not in str(error.value)


# -- the example ---------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamer", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **EXAMPLE_TOKENS},
        timeout=60,
        cwd=Path(__file__).parent.parent,
    )


def test_the_example_config_checks_clean() -> None:
    result = run_cli("rules", "check", "--config", "examples/streamer.yaml")
    assert result.returncode == 0, result.stderr
    assert "OK (4 destinations, 6 routes, 2 topics)" in result.stdout


def test_rules_check_exits_1_with_the_problems(tmp_path) -> None:
    (tmp_path / "bad.yaml").write_text("topics: []\n")
    result = run_cli("rules", "check", "--config", str(tmp_path / "bad.yaml"))
    assert result.returncode == 1
    assert "bad.yaml:1: topics: topics: must list at least one topic" in result.stderr


def test_the_example_events_route_as_the_golden_file_says() -> None:
    events = sorted(
        str(p.relative_to(EXAMPLES.parent)) for p in (EXAMPLES / "events").glob("*.json")
    )
    result = run_cli(
        "rules",
        "test",
        "--config",
        "examples/streamer.yaml",
        *[arg for e in events for arg in ("--event", e)],
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == json.loads(GOLDEN.read_text())


def test_rules_test_explains(tmp_path) -> None:
    result = run_cli(
        "rules",
        "test",
        "--config",
        "examples/streamer.yaml",
        "--event",
        "examples/events/no-match.json",
        "--explain",
    )
    [report] = json.loads(result.stdout)
    assert report["dropped"] is True and report["deliveries"] == []
    assert report["explain"][-1] == {
        "route": "default",
        "result": "applies: no route matched",
        "delivers_to": "drop",
    }
