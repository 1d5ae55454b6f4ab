"""`streamer rules import`: an Alertmanager configuration as streamer rules (streamer/alertmanager.py)."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from streamer.alertmanager import ImportProblems, import_alertmanager, read_yaml_file
from streamer.config import load_config
from streamer.rules_report import outcome
from tests.rules_helpers import alert

ROOT = Path(__file__).parent.parent
EXAMPLE = ROOT / "examples" / "alertmanager.yml"
BASE = ROOT / "examples" / "streamer.yaml"
MAPPED = ["slack-platform=sre-overview", "team-database=database", "slack-payments=payments-low"]
TUESDAY_NOON = datetime(2026, 12, 8, 12, 0, tzinfo=UTC)  # inside the example's office hours


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamer", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def import_example(tmp_path: Path, *receivers: str) -> subprocess.CompletedProcess[str]:
    mapped = [arg for r in receivers for arg in ("--receiver", r)]
    output = tmp_path / "imported.yaml"
    return run(
        "rules", "import", str(EXAMPLE), "--config", str(BASE), *mapped, "--output", str(output)
    )


def with_labels(**labels: str) -> dict:
    event = alert()
    event["alert"]["labels"] = labels
    return event


def test_the_example_imports_routes_as_alertmanager_would(tmp_path: Path) -> None:
    result = import_example(tmp_path, *MAPPED)
    assert result.returncode == 0, result.stderr
    path = tmp_path / "imported.yaml"
    assert run("rules", "check", "--no-secrets", "--config", str(path)).returncode == 0
    rules = load_config(path, check_secrets=False).rules

    def destinations(**labels: str) -> list[str]:
        result = outcome(rules, with_labels(**labels), at=TUESDAY_NOON)
        return [d["destination"] for d in result["deliveries"]]

    assert destinations(alertname="Watchdog", severity="critical", env="prod") == []  # blackhole
    assert destinations(severity="critical", env="prod", team="payments") == [
        "sre-overview",  # continue: true ...
        "incident-io-payments",  # ... then the team's route, its child inheriting the receiver
    ]
    assert destinations(severity="warning", team="payments") == ["payments-low"]
    assert destinations(**{"service.namespace": "storage", "k8s.cluster.name": "eu-west-1"}) == [
        "database"
    ]
    assert destinations(team="database", alertname="PostgresDown") == ["database"]
    assert destinations(team="search") == ["sre-overview"]  # the root's receiver


def test_what_has_no_equivalent_is_listed_not_dropped(tmp_path: Path) -> None:
    result = import_example(tmp_path, *MAPPED)
    header = (tmp_path / "imported.yaml").read_text().split("\nkafka:")[0]
    for what in (
        "group_by",
        "group_wait",
        "templates:",
        "global: (slack_api_url_file)",  # resolve_timeout is imported (inhibition:)
    ):
        assert what in result.stderr, what
        assert what in header, what
    assert "time_intervals" not in header  # imported, not a gap
    assert "inhibit_rules" not in header  # imported too


def test_the_example_s_inhibit_rule_is_imported(tmp_path: Path) -> None:
    assert import_example(tmp_path, *MAPPED).returncode == 0
    config = load_config(tmp_path / "imported.yaml", check_secrets=False)
    (rule,) = config.rules.inhibit_rules
    assert config.file.inhibition.resolve_timeout_seconds == 300  # global.resolve_timeout: 5m
    assert rule.equal == ("alertname", "cluster", "service")
    assert rule.matches_source({"severity": "critical"})
    assert rule.matches_target({"severity": "warning"})


def test_the_example_s_time_intervals_are_imported_and_mute_as_in_alertmanager(
    tmp_path: Path,
) -> None:
    assert import_example(tmp_path, *MAPPED).returncode == 0
    config = load_config(tmp_path / "imported.yaml", check_secrets=False)
    assert [i.name for i in config.file.time_intervals] == ["dba-hours", "out-of-hours"]

    def result(at: datetime, **labels: str) -> dict:
        return outcome(config.rules, with_labels(**labels), at=at)

    evening = datetime(2026, 12, 8, 19, 30, tzinfo=UTC)  # 19:30 in London, 20:30 in Berlin
    christmas = datetime(2026, 12, 25, 12, 0, tzinfo=UTC)  # a Friday
    warning = {"severity": "warning", "team": "payments"}
    assert [d["destination"] for d in result(TUESDAY_NOON, **warning)["deliveries"]] == [
        "payments-low"
    ]
    for at in (evening, christmas):
        quiet = result(at, **warning)
        assert quiet["deliveries"] == [] and not quiet["dropped"]
        assert quiet["muted"] == [
            {
                "route": "am-3 > am-3.2",
                "destination": "payments-low",
                "by": "mute_time_intervals",
                "intervals": ["out-of-hours"],
                "at": at.isoformat(),
            }
        ]
    # database pages: the DBA team in its hours (Berlin), the SRE overview outside them
    storage = {"service.namespace": "storage", "k8s.cluster.name": "eu-west-1"}
    assert [d["destination"] for d in result(evening, **storage)["deliveries"]] == ["sre-overview"]
    [muted] = result(evening, **storage)["muted"]
    assert (muted["destination"], muted["by"]) == ("database", "active_time_intervals")


def test_an_incident_io_webhook_becomes_a_destination_without_copying_an_inline_token(
    tmp_path: Path,
) -> None:
    alertmanager = {
        "route": {"receiver": "pager"},
        "receivers": [
            {
                "name": "pager",
                "webhook_configs": [
                    {
                        "url": "https://api.incident.io/v2/alert_events/http/01NEWSOURCE",
                        "http_config": {"authorization": {"credentials": "s3cret-token"}},
                    }
                ],
            }
        ],
    }
    imported = import_alertmanager(
        alertmanager, yaml.safe_load(BASE.read_text()), base_dir=BASE.parent, output_dir=BASE.parent
    )
    assert imported.config["destinations"]["pager"] == {
        "alert_source_config_id": "01NEWSOURCE",
        "token": {"env": "INCIDENT_IO_TOKEN_PAGER"},
    }
    assert imported.config["default"] == {"destination": "pager"}
    assert "s3cret-token" not in imported.to_yaml("am.yml")
    assert any("INCIDENT_IO_TOKEN_PAGER" in note for note in imported.notes)


def test_a_receiver_streamer_cannot_send_to_must_be_mapped(tmp_path: Path) -> None:
    result = import_example(tmp_path, "slack-platform=sre-overview")
    assert result.returncode == 1
    assert "receiver slack-payments (slack_configs) has no equivalent" in result.stderr
    assert "--receiver slack-payments=DESTINATION" in result.stderr
    assert not (tmp_path / "imported.yaml").exists()


def test_a_mapping_to_an_unknown_destination_is_refused() -> None:
    with pytest.raises(ImportProblems, match="no destination 'nowhere'"):
        import_alertmanager(
            {"route": {"receiver": "r"}, "receivers": [{"name": "r"}]},
            {"destinations": {"a": {}}},
            receivers={"r": "nowhere"},
        )


def test_relative_paths_are_rebased_to_where_the_output_is_written(tmp_path: Path) -> None:
    imported = import_alertmanager(
        {"route": {"receiver": "blackhole"}, "receivers": [{"name": "blackhole"}]},
        yaml.safe_load(BASE.read_text()),
        base_dir=BASE.parent,
        output_dir=tmp_path,
    )
    written = tmp_path / "streamer.yaml"
    written.write_text(imported.to_yaml("am.yml"))
    config = load_config(written, check_secrets=False)
    assert config.file.default == "drop"
    token = imported.config["destinations"]["database"]["token"]["file"]
    assert (tmp_path / token).resolve() == (
        ROOT / "examples" / "secrets" / "database-token"
    ).resolve()


def alertmanager_bomb(levels: int) -> str:
    """1.9 KB at 20 levels; expanded, 2^21 routes (the import ran > 90 s and 3.1 GB)."""
    lines = ["defs:", "  - &l0 [{receiver: r, matchers: ['a=\"b\"']}]"]
    lines += [
        f"  - &l{i} [{{receiver: r, matchers: ['a=\"b{i}\"'], routes: *l{i - 1}}}, "
        f"{{receiver: r, routes: *l{i - 1}}}]"
        for i in range(1, levels + 1)
    ]
    lines += ["route:", "  receiver: r", f"  routes: *l{levels}", "receivers:", "  - name: r"]
    return "\n".join(lines) + "\n"


REFUSED = (
    "aliases repeat more than 50,000 values in this file (*l10 here repeats 19,444): anchors "
    "and aliases are for small shared blocks (templates, matchers), not for copying routing trees"
)


def test_an_alias_bomb_is_refused_before_its_routes_are_walked(tmp_path: Path) -> None:
    bomb = tmp_path / "alertmanager.yml"
    bomb.write_text(alertmanager_bomb(20))
    result = run("rules", "import", str(bomb), "--config", str(BASE))
    assert result.returncode == 1
    assert "aliases repeat more than 50,000 values" in result.stderr
    assert "not for copying routing trees" in result.stderr
    with pytest.raises(ImportProblems) as error:
        read_yaml_file(bomb)
    assert error.value.problems == [f"{bomb}:13: {REFUSED}"]


def test_parsed_input_with_an_alias_bomb_is_refused() -> None:
    with pytest.raises(ImportProblems) as error:
        import_alertmanager(yaml.safe_load(alertmanager_bomb(20)), {"destinations": {}})
    assert error.value.problems == [
        "the Alertmanager configuration: aliases repeat more than 50,000 values: anchors and "
        "aliases are for small shared blocks (templates, matchers), not for copying routing trees"
    ]


def test_a_base_with_an_alias_bomb_is_refused_too() -> None:
    shared: list[object] = ["x"]
    for _ in range(20):
        shared = [shared, shared]
    with pytest.raises(ImportProblems, match="the base: aliases repeat more than 50,000"):
        import_alertmanager(
            {"route": {"receiver": "r"}, "receivers": [{"name": "r"}]},
            {"destinations": {}, "topics": shared},
        )


def test_routes_sharing_matchers_by_alias_still_import(tmp_path: Path) -> None:
    am = tmp_path / "alertmanager.yml"
    am.write_text(
        "route:\n"
        "  receiver: r\n"
        "  routes:\n"
        "    - {receiver: r, matchers: &db ['team=\"database\"', 'severity=\"page\"']}\n"
        "    - {receiver: r, matchers: *db, continue: true}\n"
        "receivers:\n"
        "  - name: r\n"
    )
    imported = import_alertmanager(read_yaml_file(am), yaml.safe_load(BASE.read_text()))
    first, second = imported.config["routes"]
    assert first["matchers"] == second["matchers"] == ['team="database"', 'severity="page"']
    assert second["continue"] is True
