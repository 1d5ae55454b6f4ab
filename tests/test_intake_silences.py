"""Silences at intake: a silenced alert is not sent, a resolve always is, and both counted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from streamer.dead_letters import SourceMessage
from streamer.decoding import EventDecoder, load_schema
from streamer.intake import Muted, Silenced, works_of
from streamer.silence_index import Silences
from streamer.silences import Silence, parse_matchers
from streamer.telemetry import Telemetry
from streamer.testing.events import as_json
from tests.rules_helpers import SCHEMA, alert, config_from

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
ROUTES = """
routes:
  - name: payments
    match: ["labels.team = payments"]
    continue: true
    destination: a
  - name: everyone
    destination: b
"""


@pytest.fixture(scope="module")
def rules(tmp_path_factory):
    return config_from(tmp_path_factory.mktemp("silences"), ROUTES).rules


def silence(*texts: str, start: datetime = NOW - timedelta(minutes=5)) -> Silence:
    matchers, _ = parse_matchers(texts)
    return Silence.new(matchers, duration=timedelta(hours=1), at=start, comment="maintenance")


def through(rules, event, book: Silences, telemetry: Telemetry | None = None):
    source = SourceMessage("events", 0, 7, b"k", as_json(event), ())
    decoders = {"events": EventDecoder("json", load_schema(SCHEMA))}
    return works_of(source, decoders, rules, telemetry or Telemetry(), NOW, silences=book)


def test_an_alert_an_active_silence_matches_is_not_sent_and_ends_silenced(rules, caplog) -> None:
    s = silence('alertname="HighErrorRate"')
    telemetry = Telemetry()
    caplog.set_level("INFO")
    works = through(rules, alert(), Silences([s]), telemetry)
    assert works == [] and isinstance(works, Silenced) and isinstance(works, Muted)
    # both routes' alert events were kept quiet, each counted by silence and route
    assert telemetry.silenced.total(lambda a: a["silence"] == s.id) == 2
    assert telemetry.routed.total() == 0
    assert s.id in caplog.text and "silenced on route payments" in caplog.text


def test_what_no_silence_matches_is_sent(rules) -> None:
    book = Silences(
        [silence('alertname="Other"'), silence('team="payments"', start=NOW + timedelta(hours=1))]
    )
    works = through(rules, alert(), book)
    assert len(works) == 2 and not isinstance(works, Muted)


def test_an_expired_silence_mutes_nothing(rules) -> None:
    s = silence('alertname="HighErrorRate"').expired_at(NOW - timedelta(seconds=1))
    assert len(through(rules, alert(), Silences([s]))) == 2


def test_a_resolve_always_goes_through(rules) -> None:
    resolved = alert()
    resolved["alert"] = {**resolved["alert"], "status": "RESOLVED"}
    works = through(rules, resolved, Silences([silence('alertname="HighErrorRate"')]))
    assert len(works) == 2
    assert {w.payload["status"] for _, w in works} == {"resolved"}


def test_common_labels_silence_checks_too(rules) -> None:
    from tests.rules_helpers import check

    works = through(rules, check(), Silences([silence('team="payments"', 'service="checkout"')]))
    assert works == [] and isinstance(works, Silenced)
    works = through(rules, check(), Silences([silence('team="payments"', 'service="other"')]))
    assert len(works) == 2


def test_without_silences_nothing_changes(rules) -> None:
    source = SourceMessage("events", 0, 7, b"k", as_json(alert()), ())
    decoders = {"events": EventDecoder("json", load_schema(SCHEMA))}
    assert len(works_of(source, decoders, rules, Telemetry(), NOW)) == 2
