"""Time intervals (streamer/time_intervals.py) and what they do to routing: a muted route
sends nothing, says why, and is counted; Alertmanager's own cases are in the conformance
suite (tests/test_alertmanager_conformance.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamer.config import ConfigError
from streamer.dead_letters import SourceMessage
from streamer.decoding import EventDecoder, load_schema
from streamer.intake import works_of
from streamer.telemetry import Telemetry
from streamer.testing.events import as_json
from streamer.time_intervals import TimeInterval, muted_by, parse_spec
from tests.rules_helpers import HEADER, SCHEMA, alert, config_from

ROOT = Path(__file__).parent.parent
STREAMER = (sys.executable, "-m", "streamer")
MONDAY_8 = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)  # a Monday, 08:00 UTC
MONDAY_10 = MONDAY_8 + timedelta(hours=2)
SATURDAY_10 = MONDAY_10 + timedelta(days=5)

INTERVALS = """
time_intervals:
  - name: nights
    time_intervals:
      - times: [{start_time: 00:00, end_time: 09:00}]   # unquoted, as Alertmanager's docs write it
  - name: weekends
    time_intervals:
      - weekdays: [Saturday, sunday]
  - name: office
    time_intervals:
      - times: [{start_time: 09:00, end_time: 17:00}]  # YAML 1.1 reads 17:00 as 1020: kept
        weekdays: [monday:friday]
        days_of_month: [1:31]  # and 1:31 as 91
"""


def interval(name: str, *specs: dict[str, Any]) -> TimeInterval:
    return TimeInterval(name, tuple(parse_spec(s) for s in specs))


# -- the core ------------------------------------------------------------------------------


def test_a_field_left_out_matches_any_instant_and_an_empty_list_none() -> None:
    # As Alertmanager reads YAML: a null field is unset (any), `[]` is a list none satisfies.
    assert parse_spec({"times": None}).contains(MONDAY_8)
    assert not parse_spec({"weekdays": []}).contains(MONDAY_8)
    assert parse_spec(None).contains(MONDAY_8)


def test_the_end_of_a_time_range_is_exclusive_and_24_00_is_the_end_of_the_day() -> None:
    spec = parse_spec({"times": [{"start_time": "17:00", "end_time": "24:00"}]})
    assert spec.contains(datetime(2026, 12, 7, 23, 59, 59, tzinfo=UTC))
    assert not spec.contains(datetime(2026, 12, 8, 0, 0, tzinfo=UTC))
    assert not spec.contains(datetime(2026, 12, 7, 16, 59, 59, tzinfo=UTC))
    for refused in ("9:00", "09:00:00", "24:30", " 09:00"):
        with pytest.raises(ValueError, match="invalid format"):
            parse_spec({"times": [{"start_time": refused, "end_time": "24:00"}]})


def test_a_location_is_an_iana_zone_utc_by_default_and_local_is_the_host_s() -> None:
    assert parse_spec({"location": "Europe/Berlin"}).zone is not None
    assert parse_spec({}).location == "UTC"
    berlin_9 = parse_spec(
        {"times": [{"start_time": "09:00", "end_time": "10:00"}], "location": "Europe/Berlin"}
    )
    assert berlin_9.contains(MONDAY_8)  # 09:00 in Berlin (UTC+1 in December)
    assert not berlin_9.contains(MONDAY_8 + timedelta(hours=1))
    with pytest.raises(ValueError, match="unknown time zone Mars/Olympus"):
        parse_spec({"location": "Mars/Olympus"})
    with pytest.raises(ValueError, match="unknown time zone"):
        parse_spec({"location": "../../etc/passwd"})


def test_local_is_read_when_asked_in_the_host_s_zone(tmp_path: Path) -> None:
    code = (
        "from datetime import datetime, UTC\n"
        "from streamer.time_intervals import parse_spec\n"
        "s = parse_spec({'times': [{'start_time': '09:00', 'end_time': '10:00'}], "
        "'location': 'Local'})\n"
        "print(s.contains(datetime(2026, 12, 7, 8, 0, tzinfo=UTC)))\n"
    )
    for zone, inside in (("Europe/Berlin", "True"), ("UTC", "False")):
        done = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env={**os.environ, "TZ": zone},
            timeout=60,
        )
        assert done.stdout.strip() == inside, done.stderr


def test_unknown_fields_and_shapes_are_refused_with_what_to_write() -> None:
    with pytest.raises(ValueError, match=r"unknown field.*weekday"):
        parse_spec({"weekday": ["monday"]})
    with pytest.raises(ValueError, match="weekdays: must be a list"):
        parse_spec({"weekdays": "monday"})
    with pytest.raises(ValueError, match='parsing "1x"'):
        parse_spec({"years": ["1x"]})
    with pytest.raises(ValueError, match="invalid format"):
        parse_spec({"months": ["1:2:3"]})


def test_active_intervals_are_asked_first_then_mute_intervals() -> None:
    nights = interval("nights", {"times": [{"start_time": "00:00", "end_time": "09:00"}]})
    weekends = interval("weekends", {"weekdays": ["saturday", "sunday"]})
    office = interval("office", {"weekdays": ["monday:friday"]})
    assert muted_by([nights], [], MONDAY_8) == ("mute_time_intervals", ("nights",))
    assert muted_by([nights], [], MONDAY_10) is None
    # outside every active interval: all of them are the reason (Alertmanager's marker)
    assert muted_by([nights], [office, weekends], MONDAY_8) == (
        "mute_time_intervals",
        ("nights",),
    )
    assert muted_by([], [office], SATURDAY_10) == ("active_time_intervals", ("office",))
    assert muted_by([weekends, nights], [], SATURDAY_10 - timedelta(hours=2)) == (
        "mute_time_intervals",
        ("weekends", "nights"),
    )


@given(st.datetimes(timezones=st.just(UTC)), st.integers(-31, -1), st.integers(1, 31))
def test_a_negative_day_is_the_same_day_counted_from_the_month_s_end(
    at: datetime, negative: int, positive: int
) -> None:
    # -1 is the last day: the day `d` of a month of `n` days is also day d - n - 1
    import calendar

    days = calendar.monthrange(at.year, at.month)[1]
    from_end = at.day - days - 1
    assert parse_spec({"days_of_month": [str(from_end)]}).contains(at)
    assert parse_spec({"days_of_month": [str(at.day)]}).contains(at)
    assert parse_spec({"days_of_month": [f"{negative}:-1"]}).contains(at) is (
        at.day >= max(1, days + negative + 1)
    )
    assert parse_spec({"days_of_month": [f"1:{positive}"]}).contains(at) is (at.day <= positive)


# -- routing -------------------------------------------------------------------------------


def rules_with(tmp_path: Path, routes: str) -> Any:
    return config_from(tmp_path, INTERVALS + routes).rules


def test_a_muted_route_sends_nothing_and_says_which_interval_and_when(tmp_path: Path) -> None:
    rules = rules_with(
        tmp_path,
        """
routes:
  - name: pages
    match: [labels.team = payments]
    destination: a
    mute_time_intervals: [nights, weekends]
""",
    )
    quiet = rules.evaluate(alert(), MONDAY_8)
    assert quiet.deliveries == () and not quiet.dropped and quiet.matched == ("pages",)
    [muted] = quiet.muted
    assert (muted.route, muted.destination, muted.by, muted.intervals, muted.at) == (
        "pages",
        "a",
        "mute_time_intervals",
        ("nights",),
        MONDAY_8,
    )
    [delivered] = rules.evaluate(alert(), MONDAY_10).deliveries
    assert delivered.destination == "a"
    [entry] = rules.explain(alert(), MONDAY_8)
    assert entry["muted"] == {
        "by": "mute_time_intervals",
        "intervals": ["nights"],
        "at": "2026-12-07T08:00:00+00:00",
    }


def test_intervals_are_not_inherited_by_child_routes(tmp_path: Path) -> None:
    # Alertmanager (dispatch/route.go) sets a route's intervals from its own settings only:
    # a child that matches is not muted by its parent's; the parent is, when it delivers.
    rules = rules_with(
        tmp_path,
        """
routes:
  - name: team
    match: [labels.team = payments]
    destination: a
    mute_time_intervals: [nights]
    routes:
      - name: checkout
        match: [labels.service = checkout]
        destination: b
""",
    )
    [child] = rules.evaluate(alert(), MONDAY_8).deliveries
    assert child.route == "team > checkout"
    other = alert(labels={"team": "payments", "service": "search"})
    assert rules.evaluate(other, MONDAY_8).muted[0].route == "team"
    assert rules.evaluate(other, MONDAY_10).deliveries[0].route == "team"


def test_a_muted_route_still_ends_the_walk_unless_it_continues(tmp_path: Path) -> None:
    # "When a route is muted it ... otherwise acts normally (including ending the route-
    # matching process if the `continue` option is not set)" (Alertmanager's docs)
    rules = rules_with(
        tmp_path,
        """
routes:
  - name: office-pages
    match: [labels.team = payments]
    destination: a
    active_time_intervals: [office]
  - name: fallback
    match: [labels.team = payments]
    destination: b
""",
    )
    assert [m.route for m in rules.evaluate(alert(), SATURDAY_10).muted] == ["office-pages"]
    assert rules.evaluate(alert(), SATURDAY_10).deliveries == ()
    assert [d.route for d in rules.evaluate(alert(), MONDAY_10).deliveries] == ["office-pages"]


def test_a_muted_route_renders_nothing_so_a_template_cannot_fail_it(tmp_path: Path) -> None:
    rules = rules_with(
        tmp_path,
        """
routes:
  - name: pages
    destination: a
    mute_time_intervals: [nights]
    templates: {title: "{{ labels.nonexistent }}"}
""",
    )
    assert rules.evaluate(alert(), MONDAY_8).failures == ()
    assert [f.code for f in rules.evaluate(alert(), MONDAY_10).failures] == ["template"]


def test_a_resolve_goes_through_a_mute_window_so_a_firing_sent_before_it_closes(
    tmp_path: Path,
) -> None:
    # issue 24: Alertmanager sends the resolve after the interval; streamer keeps no memory
    # to do that, so a resolve passes the interval (as it passes silences and inhibition)
    rules = rules_with(
        tmp_path,
        """
routes:
  - name: pages
    match: [labels.team = payments]
    destination: a
    mute_time_intervals: [nights]
  - name: office-pages
    match: [labels.team = payments]
    destination: b
    active_time_intervals: [office]
    continue: true
""",
    )
    firing = alert()
    resolve = alert(alert={**firing["alert"], "status": "RESOLVED"})
    assert rules.evaluate(firing, MONDAY_10).deliveries[0].payload.status == "firing"
    assert [m.route for m in rules.evaluate(firing, MONDAY_8).muted] == ["pages"]
    closing = rules.evaluate(resolve, MONDAY_8)  # inside nights: the resolve goes out
    assert closing.muted == () and not closing.dropped
    [sent] = closing.deliveries
    assert (sent.route, sent.destination, sent.payload.status) == ("pages", "a", "resolved")
    [entry, _] = rules.explain(resolve, MONDAY_8)
    assert entry["resolve_not_muted"]["intervals"] == ["nights"] and "muted" not in entry


def test_a_resolve_on_a_muted_route_whose_template_fails_is_muted_not_dead_lettered(
    tmp_path: Path,
) -> None:
    rules = rules_with(
        tmp_path,
        """
routes:
  - name: pages
    destination: a
    mute_time_intervals: [nights]
    templates: {title: "{{ labels.nonexistent }}"}
""",
    )
    firing = alert()
    resolve = alert(alert={**firing["alert"], "status": "RESOLVED"})
    quiet = rules.evaluate(resolve, MONDAY_8)
    assert quiet.failures == () and quiet.deliveries == () and len(quiet.muted) == 1


def test_without_a_time_the_wall_clock_is_asked_only_by_routes_with_intervals(
    tmp_path: Path,
) -> None:
    config = config_from(
        tmp_path,
        """
time_intervals:
  - name: closed
    time_intervals: [{years: ["1999"]}]
routes:
  - name: never
    destination: a
    active_time_intervals: [closed]
""",
    )
    before = datetime.now(UTC)
    [muted] = config.rules.evaluate(alert()).muted
    assert before <= muted.at <= datetime.now(UTC)
    assert muted.by == "active_time_intervals" and muted.intervals == ("closed",)


# -- configuration -------------------------------------------------------------------------


def test_names_must_be_defined_and_unique_and_specs_readable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        config_from(
            tmp_path,
            """
time_intervals:
  - name: nights
    time_intervals: [{times: [{start_time: "22:00", end_time: "06:00"}]}]
  - name: nights
    time_intervals: []
routes:
  - name: pages
    destination: a
    mute_time_intervals: [night]
""",
        )
    text = str(raised.value)
    assert "nights: start time cannot be equal or greater than end time" in text
    assert "time interval 'nights' is defined twice" in text
    assert "unknown time interval 'night' (time_intervals: nights)" in text
    assert "streamer.yaml:9: time_intervals.0.time_intervals.0: nights: start time" in text
    assert "streamer.yaml:10: time_intervals.1.name: time interval 'nights'" in text
    assert "streamer.yaml:15: route pages (mute_time_intervals.0): unknown time interval" in text


def test_the_default_route_has_no_intervals_as_alertmanager_s_root_has_none(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError, match="unknown setting"):
        config_from(
            tmp_path,
            """
time_intervals: [{name: nights, time_intervals: []}]
default: {destination: a, mute_time_intervals: [nights]}
""",
        )


# -- the service's path: intake, the metric ------------------------------------------------


def test_a_muted_event_makes_no_job_and_is_counted_by_route_and_interval(
    tmp_path: Path,
) -> None:
    rules = rules_with(
        tmp_path,
        """
routes:
  - name: pages
    destination: a
    mute_time_intervals: [nights, weekends]
""",
    )
    decoder = EventDecoder("json", load_schema(SCHEMA))
    source = SourceMessage("events", 0, 7, b"k", as_json(alert()), ())
    telemetry = Telemetry()
    assert works_of(source, {"events": decoder}, rules, telemetry, MONDAY_8) == []
    assert (
        works_of(source, {"events": decoder}, rules, telemetry, SATURDAY_10 - timedelta(hours=2))
        == []
    )
    assert len(works_of(source, {"events": decoder}, rules, telemetry, MONDAY_10)) == 1
    assert telemetry.muted.total() == 2  # one per muted route, labelled with its intervals
    assert telemetry.muted.total(lambda a: a == {"route": "pages", "interval": "nights"}) == 1
    both = {"route": "pages", "interval": "nights,weekends"}
    assert telemetry.muted.total(lambda a: a == both) == 1
    scraped = telemetry.scrape().decode()
    assert re.search(
        r'streamer_events_muted_total\{interval="nights",[^}]*route="pages"\} 1.0', scraped
    )


# -- rules test --at --explain ---------------------------------------------------------------


def test_rules_test_says_which_interval_muted_an_event_at_a_given_time(tmp_path: Path) -> None:
    config = tmp_path / "streamer.yaml"
    config.write_text(
        HEADER
        + INTERVALS
        + """
routes:
  - name: pages
    destination: a
    mute_time_intervals: [nights]
"""
    )
    event = tmp_path / "event.json"
    event.write_text(json.dumps(json.loads(as_json(alert()))))

    def rules_test(*args: str) -> Any:
        done = subprocess.run(
            [*STREAMER, "rules", "test", "--config", str(config), "--event", str(event), *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)[0]

    [result] = [rules_test("--explain", "--at", "2026-12-07T09:30:00+01:00")]
    assert result["deliveries"] == [] and result["dropped"] is False
    assert result["muted"] == [
        {
            "route": "pages",
            "destination": "a",
            "by": "mute_time_intervals",
            "intervals": ["nights"],
            "at": "2026-12-07T09:30:00+01:00",
        }
    ]
    assert result["explain"][0]["muted"]["intervals"] == ["nights"]
    awake = rules_test("--at", "2026-12-07T10:00:00")  # no offset: UTC
    assert [d["destination"] for d in awake["deliveries"]] == ["a"] and awake["muted"] == []


def test_rules_test_refuses_a_time_it_cannot_read(tmp_path: Path) -> None:
    done = subprocess.run(
        [*STREAMER, "rules", "test", "--config", "x.yaml", "--event", "e.json", "--at", "now"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 2 and "is not an ISO 8601 time" in done.stderr


def test_the_routes_muted_right_now_are_listed_with_their_intervals(tmp_path: Path) -> None:
    rules = rules_with(
        tmp_path,
        """
routes:
  - name: pages
    destination: a
    mute_time_intervals: [nights]
    routes:
      - name: office
        match: [labels.team = payments]
        active_time_intervals: [office]
  - name: dropped
    destination: drop
    mute_time_intervals: [nights]
""",
    )
    assert rules.quiet_routes(MONDAY_8) == [
        ("pages", "mute_time_intervals", ("nights",)),
        ("pages > office", "active_time_intervals", ("office",)),
    ]
    assert rules.quiet_routes(MONDAY_10) == []


def test_rules_diff_tells_a_muted_destination_from_a_delivered_one(tmp_path: Path) -> None:
    from streamer.rules_report import changes, outcome

    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    plain = config_from(tmp_path / "a", "routes: [{name: pages, destination: a}]")
    muted = config_from(
        tmp_path / "b",
        INTERVALS + "routes: [{name: pages, destination: a, mute_time_intervals: [nights]}]",
    )
    change = changes(
        "e", outcome(plain.rules, alert(), at=MONDAY_8), outcome(muted.rules, alert(), at=MONDAY_8)
    )
    assert change is not None and change["changed"] == ["destination"]
    assert change["destinations"] == {"old": ["a"], "new": ["a (muted by nights)"]}


_texts = st.sampled_from(["", "1", "-1", "1:-1", "monday", "june:may", "24:00", "Local", "x:y:z"])
_values = st.recursive(
    st.none() | st.booleans() | st.integers() | _texts | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_texts | st.text(), inner),
    max_leaves=12,
)
_fields = st.sampled_from(
    ["times", "weekdays", "days_of_month", "months", "years", "location", "start_time"]
)


@given(st.dictionaries(_fields, _values, max_size=4) | _values)
def test_any_spec_is_read_or_refused_with_a_reason_never_an_error(raw: Any) -> None:
    try:
        spec = parse_spec(raw)
    except ValueError as e:
        assert str(e)
        return
    spec.contains(MONDAY_8)  # and a spec that reads can be asked about any instant


def test_the_import_refuses_what_alertmanager_refuses_naming_file_and_line(
    tmp_path: Path,
) -> None:
    from streamer.alertmanager import ImportProblems, import_alertmanager, read_yaml_file

    am = tmp_path / "alertmanager.yml"
    am.write_text(
        """\
route:
  receiver: r
  mute_time_intervals: [nights]
  routes:
    - receiver: r
      active_time_intervals: [nights, never-defined]
time_intervals:
  - name: evenings
    time_intervals:
      - times: [{start_time: "23:00", end_time: "06:00"}]
  - name: nights
mute_time_intervals:
  - name: nights
  - time_intervals: []
  - 5
receivers:
  - name: r
"""
    )
    with pytest.raises(ImportProblems) as raised:
        import_alertmanager(
            read_yaml_file(am),
            {"destinations": {"r": {}}},
            receivers={"r": "r"},
            source=str(am),
        )
    problems = "\n".join(raised.value.problems)
    for expected in (
        ":3: route: the root route must not have any mute_time_intervals",
        ":6: route.routes[0]: undefined time interval never-defined used in route",
        ":10: evenings: start time cannot be equal or greater than end time",
        # the older key is read first, as Alertmanager reads it: the newer name is the twin
        ":11: time interval nights is not unique",
        ":14: mute_time_intervals[1]: missing name in time interval",
        ":15: mute_time_intervals[2]: a time interval is a mapping",
    ):
        assert expected in problems, problems


def test_a_replayed_letter_whose_route_is_muted_now_is_reported_not_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streamer.replay import Letter, ReplayReport, _LetterDelivery

    monkeypatch.setenv("TOKEN_A", "token-a")
    monkeypatch.setenv("TOKEN_B", "token-b")
    config = config_from(
        tmp_path,
        INTERVALS + "routes: [{name: pages, destination: a, mute_time_intervals: [nights]}]",
        check_secrets=True,
    )
    letter = Letter(0, 3, b"k", as_json(alert()), [], {"source_topic": "events", "route": "pages"})
    report = ReplayReport()
    delivery = _LetterDelivery(config, report, 1, True, wall_clock=MONDAY_8.timestamp)
    delivery.run(iter([letter]))
    assert report.failed == [
        {
            "letter": "streamer.dead-letters[0]@3",
            "destination": "a",
            "reason": "muted now on route pages by mute_time_intervals nights",
        }
    ]
    awake = ReplayReport()
    _LetterDelivery(config, awake, 1, True, wall_clock=MONDAY_10.timestamp).run(iter([letter]))
    assert awake.failed == [] and awake.to_destinations == {"a": 1}


def test_the_muted_routes_gauge_shows_what_is_quiet_now_and_by_what(tmp_path: Path) -> None:
    from streamer.cli.run import muted_routes

    rules = rules_with(
        tmp_path, "routes: [{name: pages, destination: a, mute_time_intervals: [nights]}]"
    )
    telemetry = Telemetry()
    telemetry.gauge("streamer.routes.muted", lambda: muted_routes(rules, MONDAY_8))
    scraped = telemetry.scrape().decode()
    assert re.search(
        r'streamer_routes_muted\{by="mute_time_intervals",interval="nights",[^}]*route="pages"\} 1.0',
        scraped,
    ), scraped
    assert muted_routes(rules, MONDAY_10) == []


@pytest.mark.integration
def test_muted_events_commit_without_a_post_and_others_flow(
    infrastructure: Any, fake: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against a real broker: team b's route is muted (an interval that holds always), so
    its events are counted as muted, never POSTed, and committed; team a's arrive."""
    import yaml

    from tests.pipeline import Pipeline, check_event

    pipeline = Pipeline(infrastructure, fake, tmp_path, monkeypatch=monkeypatch)
    config = yaml.safe_load(pipeline.config_path.read_text())
    config["time_intervals"] = [{"name": "always", "time_intervals": [{}]}]
    config["routes"][0]["mute_time_intervals"] = ["always"]
    pipeline.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    muted = [check_event(f"b-{i}", "CRITICAL", team="b", n=i) for i in range(20)]
    sent = [check_event(f"a-{i}", "CRITICAL", n=i) for i in range(5)]
    pipeline.produce(muted + sent)
    pipeline.deliver_all(len(sent))
    assert sorted(e.payload["deduplication_key"] for e in fake.events) == [
        f"a-{i}//disk" for i in range(5)
    ]
    assert {e.source_id for e in fake.events} == {"SRC_A"}
    assert pipeline.engine is not None
    counted = pipeline.engine.telemetry.muted
    assert counted.total(lambda a: a == {"route": "to-b", "interval": "always"}) == 20
    assert pipeline.dead_letters(expected=0) == []
