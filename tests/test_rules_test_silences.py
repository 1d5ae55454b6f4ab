"""`rules test --silences FILE`: which silence would keep an event quiet, as the service
decides (streamer/rules_report.py uses the same matching as intake)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from streamer.cli import build_parser
from streamer.rules_report import outcome
from streamer.silence_index import Silences
from streamer.silences import Silence, parse_matchers
from tests.rules_helpers import alert, config_from

EXAMPLES = Path(__file__).parent.parent / "examples"
AT = "2026-12-07T12:00:00+00:00"


def silence_file(tmp_path: Path, *texts: str) -> Path:
    matchers, _ = parse_matchers(texts)
    start = datetime.fromisoformat(AT) - timedelta(minutes=5)
    s = Silence.new(matchers, duration=timedelta(hours=1), at=start, comment="deploy")
    path = tmp_path / "silences.json"
    path.write_text(json.dumps([{**s.to_json(), "status": {"state": "active"}}]))
    return path


def rules_test(capsys, *argv: str) -> tuple[int, list[dict], str]:
    args = build_parser().parse_args(
        ["rules", "test", "--config", str(EXAMPLES / "streamer.yaml"), *argv]
    )
    code = args.func(args)
    out, err = capsys.readouterr()
    return code, json.loads(out) if out else [], err


def test_rules_test_names_the_silence_that_keeps_an_event_quiet(capsys, tmp_path) -> None:
    file = silence_file(tmp_path, 'alertname="HighErrorRate"', 'env="prod"')
    events = [str(EXAMPLES / "events" / n) for n in ("alert-firing.json", "alert-resolved.json")]
    code, (firing, resolved), err = rules_test(
        capsys, "--event", *events, "--silences", str(file), "--at", AT
    )
    assert code == 0, err
    silence_id = json.loads(file.read_text())[0]["id"]
    assert firing["deliveries"] == []
    assert {s["silence"] for s in firing["silenced"]} == {silence_id}
    assert {s["route"] for s in firing["silenced"]} == set(firing["matched_routes"])
    assert firing["silenced"][0]["matchers"] == '{alertname="HighErrorRate", env="prod"}'
    assert "silenced" not in resolved and resolved["deliveries"]  # resolves go through


def test_a_silence_not_active_at_the_time_asked_keeps_nothing_quiet(capsys, tmp_path) -> None:
    file = silence_file(tmp_path, 'alertname="HighErrorRate"')
    later = (datetime.fromisoformat(AT) + timedelta(hours=2)).isoformat()
    code, (firing,), _ = rules_test(
        capsys,
        "--event",
        str(EXAMPLES / "events" / "alert-firing.json"),
        "--silences",
        str(file),
        "--at",
        later,
    )
    assert code == 0 and firing["deliveries"] and "silenced" not in firing


def test_a_bad_silences_file_is_named(capsys, tmp_path) -> None:
    file = tmp_path / "silences.json"
    file.write_text(json.dumps([{"id": "x", "matchers": [], "startsAt": AT, "endsAt": AT}]))
    event = str(EXAMPLES / "events" / "alert-firing.json")
    code, _, err = rules_test(capsys, "--event", event, "--silences", str(file))
    assert code == 1 and "silences.json: silence" in err and "matchers" in err


def test_the_report_applies_silences_before_anything_else(tmp_path) -> None:
    rules = config_from(tmp_path, "routes:\n  - name: all\n    destination: a\n").rules
    matchers, _ = parse_matchers(['team="payments"'])
    now = datetime(2026, 12, 7, 12, tzinfo=UTC)
    s = Silence.new(matchers, duration=timedelta(hours=1), at=now)
    result = outcome(rules, alert(), at=now, silences=Silences([s]))
    assert result["deliveries"] == [] and result["silenced"][0]["silence"] == s.id
    assert not result["dropped"]
