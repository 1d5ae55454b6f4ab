"""Inhibition's semantics (streamer/inhibition.py) and its rules file section
(streamer/config/inhibit_compiler.py); Alertmanager's own cases are in the conformance
suite (tests/alertmanager_conformance/inhibition.yaml)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.config import ConfigError
from streamer.inhibition import (
    FiringSource,
    FiringSources,
    InhibitRule,
    fingerprint,
    inhibition_of,
)
from streamer.label_matchers import label_matcher
from tests.rules_helpers import config_from

NOW = 1_800_000_000.0

ZONE_DOWN = InhibitRule(
    "zone-down",
    source=(label_matcher("alertname", "=", "ZoneDown"),),
    target=(label_matcher("severity", "=", "warning"),),
    equal=("zone",),
)


def firing(labels: dict[str, str], until: float = NOW + 300) -> FiringSource:
    return FiringSource(labels, at=NOW - 10, until=until)


def test_a_firing_source_mutes_targets_of_its_zone_only() -> None:
    board = FiringSources()
    board.use_rules([ZONE_DOWN])
    board.fire(firing({"alertname": "ZoneDown", "zone": "eu-1"}))
    muted = board.inhibition([ZONE_DOWN], {"severity": "warning", "zone": "eu-1"}, NOW)
    assert muted is not None and muted.rule == "zone-down"
    assert muted.source.labels["alertname"] == "ZoneDown"
    assert board.inhibition([ZONE_DOWN], {"severity": "warning", "zone": "eu-2"}, NOW) is None
    assert board.inhibition([ZONE_DOWN], {"severity": "critical", "zone": "eu-1"}, NOW) is None


def test_a_source_past_its_until_or_resolved_mutes_nothing() -> None:
    board = FiringSources()
    board.use_rules([ZONE_DOWN])
    source = firing({"alertname": "ZoneDown", "zone": "eu-1"}, until=NOW + 1)
    board.fire(source)
    target = {"severity": "warning", "zone": "eu-1"}
    assert board.inhibition([ZONE_DOWN], target, NOW) is not None
    assert board.inhibition([ZONE_DOWN], target, NOW + 1) is None  # expired
    assert board.expire(NOW + 1) == 1 and len(board) == 0
    board.fire(source)
    board.resolve(source.fingerprint)
    assert board.inhibition([ZONE_DOWN], target, NOW) is None


def test_an_alert_matching_both_sides_does_not_inhibit_itself() -> None:
    both = InhibitRule(
        "both",
        source=(label_matcher("severity", "=~", "critical|warning"),),
        target=(label_matcher("severity", "=~", "critical|warning"),),
        equal=("zone",),
    )
    labels = {"severity": "critical", "zone": "eu-1"}
    board = FiringSources()
    board.fire(firing(labels))
    assert board.inhibition([both], labels, NOW) is None
    assert inhibition_of([both], [firing(labels)], labels, NOW) is None


def test_missing_equal_labels_equal_missing_or_empty_ones() -> None:
    board = FiringSources()
    board.use_rules([ZONE_DOWN])
    board.fire(firing({"alertname": "ZoneDown"}))
    assert board.inhibition([ZONE_DOWN], {"severity": "warning"}, NOW) is not None
    assert board.inhibition([ZONE_DOWN], {"severity": "warning", "zone": ""}, NOW) is not None


def test_a_full_board_forgets_the_source_that_ends_first() -> None:
    board = FiringSources(limit=2)
    board.fire(firing({"alertname": "ZoneDown", "zone": "a"}, until=NOW + 10))
    board.fire(firing({"alertname": "ZoneDown", "zone": "b"}, until=NOW + 5))
    board.fire(firing({"alertname": "ZoneDown", "zone": "c"}, until=NOW + 20))
    assert sorted(s.labels["zone"] for s in board) == ["a", "c"]


def test_the_fingerprint_is_of_the_label_set_whatever_its_order() -> None:
    assert fingerprint({"a": "1", "b": "2"}) == fingerprint({"b": "2", "a": "1"})
    assert fingerprint({"a": "1"}) != fingerprint({"a": "1", "b": ""})


label_sets = st.dictionaries(
    st.sampled_from(["alertname", "severity", "zone", "service"]),
    st.sampled_from(["", "ZoneDown", "warning", "critical", "eu-1", "eu-2"]),
)


@settings(max_examples=200, deadline=None)
@given(
    sources=st.lists(st.tuples(label_sets, st.integers(-5, 5)), max_size=6),
    target=label_sets,
    reindex=st.booleans(),
)
def test_the_indexed_board_decides_as_the_plain_reading(
    sources: list[tuple[dict[str, str], int]], target: dict[str, str], reindex: bool
) -> None:
    rules = [
        ZONE_DOWN,
        InhibitRule(
            "crit-over-warn",
            source=(label_matcher("severity", "=", "critical"),),
            target=(label_matcher("severity", "=~", "warning|critical"),),
            equal=("service", "zone"),
        ),
    ]
    board = FiringSources()
    if not reindex:
        board.use_rules(rules)
    for labels, ends in sources:
        board.fire(FiringSource(labels, at=NOW - 10, until=NOW + ends))
    if reindex:
        board.use_rules(rules)
    indexed = board.inhibition(rules, target, NOW)
    plain = inhibition_of(rules, list(board), target, NOW)
    assert (indexed is None) == (plain is None)
    if indexed is not None and plain is not None:
        assert indexed.rule == plain.rule


# -- the rules file -------------------------------------------------------------------------


def test_inhibit_rules_load_with_every_kind_of_matcher(tmp_path: Path) -> None:
    config = config_from(
        tmp_path,
        """
        inhibit_rules:
          - name: zone-down
            source_matchers: ['alertname="ZoneDown"']
            source_match: {env: prod}
            target_matchers: ['severity=~"warning|info"']
            target_match_re: {service: "check.*"}
            equal: [zone]
          - source_match: {severity: critical}
            target_match: {severity: warning}
        """,
    )
    first, second = config.rules.inhibit_rules
    assert first.name == "zone-down" and first.equal == ("zone",)
    assert len(first.source) == 2 and len(first.target) == 2
    assert second.name == "inhibit_rules[1]"
    assert first.matches_source({"alertname": "ZoneDown", "env": "prod"})
    assert not first.matches_target({"severity": "warning", "service": "web"})


def test_inhibit_rule_problems_name_the_line_and_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        config_from(
            tmp_path,
            """
            inhibit_rules:
              - source_matchers: ['alertname=~"(unclosed"']
                target_matchers: ['severity="warning"']
                equal: [zone, zone]
              - source_match: {bad-name: x}
              - targets: oops
            """,
        )
    text = str(refused.value)
    assert "streamer.yaml:8: inhibit_rules.0.source_matchers.0: alertname=~" in text
    assert "streamer.yaml:10: inhibit_rules.0.equal.1: label 'zone' is named twice" in text
    bad_name = 'streamer.yaml:11: inhibit_rules.1.source_match.bad-name: invalid label name "bad-'
    assert bad_name in text
    assert "streamer.yaml:12: inhibit_rules.2.targets: unknown setting" in text


def test_a_rule_without_source_matchers_loads_with_a_warning_naming_it(tmp_path: Path) -> None:
    # issue 24: every alert is then a source and writes a firing record; Alertmanager
    # allows it, so streamer does, and says so at load (streamer run, rules check, reload)
    config = config_from(
        tmp_path,
        """
        inhibit_rules:
          - source_matchers: ['alertname="ZoneDown"']
            target_matchers: ['severity="warning"']
          - name: any-critical
            target_matchers: ['severity="info"']
            equal: [zone]
        """,
    )
    assert config.rules.inhibit_rules[1].source == ()
    assert config.rules.inhibit_rules[1].matches_source({"alertname": "Anything"})
    (warning,) = config.warnings
    assert "streamer.yaml:" in warning and "inhibit_rules.1" in warning
    assert "inhibit rule 'any-critical' has no source matchers: every alert" in warning


def test_rules_import_warns_of_an_alertmanager_rule_without_source_matchers() -> None:
    from streamer.alertmanager_inhibition import InhibitReader

    problems: list[str] = []
    warnings: list[str] = []
    reader = InhibitReader(lambda *_: "am.yml:7", problems, warnings, "utf8")
    reader.read(
        {
            "inhibit_rules": [
                {"source_match": {"severity": "critical"}, "target_matchers": ["a=b"]},
                {"target_matchers": ['severity="warning"'], "equal": ["zone"]},
            ]
        }
    )
    assert problems == [] and len(reader.rules) == 2
    (warning,) = warnings
    assert warning.startswith("am.yml:7: inhibit_rules[1]: inhibit rule 'inhibit_rules[1]' ")
    assert "has no source matchers" in warning


def test_inhibition_settings_have_alertmanagers_defaults(tmp_path: Path) -> None:
    config = config_from(tmp_path, "routes: []\n")
    assert config.file.kafka.firing_topic == "streamer.firing"
    assert config.file.inhibition.resolve_timeout_seconds == 300


# -- rules test --------------------------------------------------------------------------------


def test_rules_test_says_which_rule_and_source_inhibited_an_event(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    from tests.rules_helpers import HEADER, alert

    (tmp_path / "streamer.yaml").write_text(
        HEADER
        + """
default: {destination: a}
inhibit_rules:
  - name: zone-down
    source_matchers: [alertname="ZoneDown"]
    target_matchers: [severity="warning"]
    equal: [zone]
"""
    )

    def event(name: str, status: str, **labels: str) -> str:
        data = alert()
        data["event_time"] = 1795000000000
        data["alert"].update(status=status, labels=labels, starts_at=1795000000000)
        path = tmp_path / name
        path.write_text(json.dumps(data, default=str))
        return str(path)

    warning = event("warning.json", "FIRING", alertname="DiskSlow", severity="warning", zone="a")
    down = event("down.json", "FIRING", alertname="ZoneDown", zone="a")
    up = event("up.json", "RESOLVED", alertname="ZoneDown", zone="a")
    config = str(tmp_path / "streamer.yaml")
    command = [sys.executable, "-m", "streamer", "rules", "test", "--config", config]
    done = subprocess.run(
        [*command, "--explain", "--event", warning, down, warning, up, warning],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert [len(r["deliveries"]) for r in results] == [1, 1, 0, 1, 1]
    assert "inhibited" not in results[0] and "inhibited" not in results[4]
    (inhibited,) = results[2]["inhibited"]
    assert inhibited["rule"] == "zone-down" and inhibited["destination"] == "a"
    assert inhibited["source_labels"] == {"alertname": "ZoneDown", "zone": "a"}
    assert inhibited["source"] == fingerprint({"alertname": "ZoneDown", "zone": "a"})


def test_global_resolve_timeout_is_read_as_prometheus_reads_durations() -> None:
    from streamer.alertmanager_inhibition import prometheus_duration

    assert prometheus_duration("5m") == 300
    assert prometheus_duration("1h30m") == 5400
    assert prometheus_duration("1d") == 86400
    assert prometheus_duration("0") == 0
    for wrong in ("", "5", "m", "30m1h", "5 m", "1.5h"):
        assert prometheus_duration(wrong) is None, wrong


def test_an_unreadable_global_resolve_timeout_stops_the_import(tmp_path: Path) -> None:
    from streamer.alertmanager import ImportProblems, import_alertmanager
    from tests.rules_helpers import SCHEMA

    base = {
        "reader_schema": str(SCHEMA),
        "topics": [{"name": "events", "format": "json"}],
        "destinations": {"hit": {"alert_source_config_id": "ID", "token": {"env": "TOKEN"}}},
    }
    alertmanager = {
        "global": {"resolve_timeout": "five minutes"},
        "route": {"receiver": "hit"},
        "receivers": [{"name": "hit"}],
        "inhibit_rules": [{"source_matchers": ["a=b"], "target_matchers": ["c=d"]}],
    }
    with pytest.raises(ImportProblems, match="resolve_timeout: a positive duration"):
        import_alertmanager(alertmanager, base, receivers={"hit": "hit"}, base_dir=tmp_path)
