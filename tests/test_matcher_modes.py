"""Alertmanager's three matcher parsing modes (streamer/matcher_modes.py,
streamer/classic_matchers.py): fallback by default, utf8-strict and classic on request, and
the disagreements Alertmanager documents, through `rules check`, `rules test` and the import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from streamer.alertmanager import import_alertmanager
from streamer.matcher_modes import read_matchers
from tests.rules_helpers import HEADER, alert

ROOT = Path(__file__).parent.parent
EMOJI_BYTES = r'foo="\xf0\x9f\x99\x82"'  # docs/configuration.md, "Fallback mode"


def meaning(text: str, mode: str) -> list[tuple[str, str, str]]:
    return [(m.path[-1], m.op, m.value) for m in read_matchers(text, mode).matchers]  # type: ignore[arg-type]


# (text, classic reading, UTF-8 reading); None: that parser refuses the text
DOCUMENTED = [
    # only the classic parser reads these: a missing value, a single backslash, a bare `!`
    ("foo=", [("foo", "=", "")], None),
    (r'code=~"5\d\d"', [("code", "=~", r"5\d\d")], None),
    (r"foo=!bar\n", [("foo", "=", "!bar\n")], None),
    ("{foo=bar}}", [("foo", "=", "bar}")], None),
    ("tricky=~~~", [("tricky", "=~", "~~")], None),
    # both read it, differently: Go escapes mean bytes to the UTF-8 parser only
    (EMOJI_BYTES, [("foo", "=", r"\xf0\x9f\x99\x82")], [("foo", "=", "🙂")]),
    (r'foo="bar\t"', [("foo", "=", r"bar\t")], [("foo", "=", "bar\t")]),
    # only the UTF-8 parser reads these: UTF-8 and quoted names
    ("foo🙂=bar", None, [("foo🙂", "=", "bar")]),
    ('{"service.name"="api"}', None, [("service.name", "=", "api")]),
    # both, the same
    (
        '{foo="bar", baz!~"qu.*"}',
        [("foo", "=", "bar"), ("baz", "!~", "qu.*")],
        [("foo", "=", "bar"), ("baz", "!~", "qu.*")],
    ),
]


@pytest.mark.parametrize(("text", "classic", "utf8"), DOCUMENTED)
def test_each_mode_reads_as_alertmanager_does(text: str, classic, utf8) -> None:
    for mode, expected in (("classic", classic), ("utf8-strict", utf8)):
        if expected is None:
            with pytest.raises(ValueError):
                read_matchers(text, mode)  # type: ignore[arg-type]
        else:
            assert meaning(text, mode) == expected, mode
    reading = read_matchers(text)
    assert [(m.path[-1], m.op, m.value) for m in reading.matchers] == (classic or utf8)
    # a warning exactly when the classic reading is taken and the UTF-8 one differs
    assert bool(reading.warning) == (classic is not None and classic != utf8)


def test_a_disagreement_warning_gives_both_readings() -> None:
    warning = read_matchers(EMOJI_BYTES).warning
    assert warning is not None
    assert r'mean {foo="\\xf0\\x9f\\x99\\x82"} to Alertmanager' in warning
    assert 'but {foo="🙂"} to its UTF-8 parser; read as classic' in warning


def test_a_classic_only_warning_suggests_the_utf8_spelling() -> None:
    warning = read_matchers("foo=").warning
    assert warning is not None
    assert "read by Alertmanager's classic parser only" in warning
    assert 'write {foo=""} to mean the same in every mode' in warning


def test_refused_by_both_says_both() -> None:
    with pytest.raises(ValueError) as error:
        read_matchers("foo!bar")
    assert "column 4: '!' must be followed by = or ~" in str(error.value)
    assert "classic parser refuses it too: bad matcher format" in str(error.value)


def write_config(tmp_path: Path, mode: str | None) -> Path:
    path = tmp_path / "streamer.yaml"
    setting = f"matcher_mode: {mode}\n" if mode else ""
    path.write_text(
        HEADER
        + setting
        + "routes:\n"
        + "  - name: emoji\n"
        + "    destination: a\n"
        + f"    matchers: ['{EMOJI_BYTES}']\n"
    )
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamer", "rules", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def test_rules_check_warns_with_file_line_and_both_readings(tmp_path: Path) -> None:
    path = write_config(tmp_path, None)
    done = run("check", "--no-secrets", "--config", str(path))
    assert done.returncode == 0, done.stderr
    line = HEADER.count("\n") + 4
    assert f"warning: {path}:{line}: route emoji (matchers.0): matchers " in done.stderr
    assert 'but {foo="🙂"} to its UTF-8 parser' in done.stderr
    quiet = run("check", "--no-secrets", "--config", str(write_config(tmp_path, "utf8-strict")))
    assert quiet.returncode == 0 and "warning" not in quiet.stderr


@pytest.mark.parametrize(
    ("mode", "label", "routed"),
    [
        (None, r"\xf0\x9f\x99\x82", True),  # fallback: the classic reading, as Alertmanager
        (None, "🙂", False),
        ("classic", r"\xf0\x9f\x99\x82", True),
        ("utf8-strict", "🙂", True),
        ("utf8-strict", r"\xf0\x9f\x99\x82", False),
    ],
)
def test_rules_test_routes_by_the_mode_s_reading(
    tmp_path: Path, mode: str | None, label: str, routed: bool
) -> None:
    event = alert()
    event["alert"]["labels"] = {"foo": label}
    event["event_time"] = 1795000000000
    event["alert"]["starts_at"] = 1794999400000
    file = tmp_path / "event.json"
    file.write_text(json.dumps(event))
    done = run("test", "--config", str(write_config(tmp_path, mode)), "--event", str(file))
    assert done.returncode == 0, done.stderr
    (result,) = json.loads(done.stdout)
    assert result["matched_routes"] == (["emoji"] if routed else [])
    assert ("warning:" in done.stderr) == (mode is None)


def test_an_unknown_mode_is_a_load_problem(tmp_path: Path) -> None:
    done = run("check", "--no-secrets", "--config", str(write_config(tmp_path, "strict")))
    assert done.returncode == 1
    assert "matcher_mode" in done.stderr and "utf8-strict" in done.stderr


def test_the_import_warns_with_the_alertmanager_file_s_line() -> None:
    from streamer.config.yaml_text import load_go_yaml

    am = load_go_yaml(
        "route:\n  receiver: r\n  routes:\n    - receiver: r\n"
        f"      matchers: ['{EMOJI_BYTES}', 'code=~\"5\\d\\d\"']\nreceivers: [{{name: r}}]\n"
    )
    imported = import_alertmanager(
        am, {"destinations": {"a": {}}}, receivers={"r": "a"}, source="am.yml"
    )
    assert len(imported.warnings) == 2
    assert imported.warnings[0].startswith("am.yml:5: route.routes[0]: matchers ")
    assert "to its UTF-8 parser" in imported.warnings[0]
    assert "classic parser only" in imported.warnings[1]
    assert "# warning: am.yml:5:" in imported.to_yaml("am.yml")
