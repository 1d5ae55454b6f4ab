"""Silences as values: states in time, matching, the wire form and amtool's JSON."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamer.silence_index import Silences, labels_of
from streamer.silences import (
    EXPIRED_KEPT,
    Silence,
    SilenceError,
    SilenceMatcher,
    from_amtool,
    parse_matchers,
)

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def silence(*texts: str, hours: float = 2, start: datetime = T0) -> Silence:
    matchers, _ = parse_matchers(texts or ('alertname="DiskFull"',))
    return Silence.new(matchers, duration=timedelta(hours=hours), at=start, created_by="me")


def alert(**labels: str) -> dict:
    return labels_of({"alert": {"labels": labels}})


def test_a_silence_is_pending_then_active_then_expired() -> None:
    s = silence(start=T0)
    assert s.state(T0 - timedelta(seconds=1)) == "pending"
    assert s.state(T0) == "active"
    assert s.state(T0 + timedelta(hours=2) - timedelta(microseconds=1)) == "active"
    assert s.state(T0 + timedelta(hours=2)) == "expired"


def test_only_active_silences_whose_matchers_all_hold_match() -> None:
    disk = silence('alertname="DiskFull"', 'env=~"prod|staging"')
    later = silence('alertname="DiskFull"', start=T0 + timedelta(hours=1))
    book = Silences([disk, later])
    assert book.matching(alert(alertname="DiskFull", env="prod"), T0) == [disk]
    assert book.matching(alert(alertname="DiskFull", env="dev"), T0) == []
    assert book.matching(alert(alertname="CPU", env="prod"), T0) == []
    both = book.matching(alert(alertname="DiskFull", env="prod"), T0 + timedelta(hours=1))
    assert {s.id for s in both} == {disk.id, later.id}
    assert book.matching(alert(alertname="DiskFull", env="prod"), T0 + timedelta(hours=3)) == []


def test_labels_are_the_events_labels_with_the_alerts_own_over_them() -> None:
    event = {"labels": {"team": "a", "env": "prod"}, "alert": {"labels": {"env": "dev"}}}
    s = silence('team="a"', 'env="dev"')
    assert s.matches(labels_of(event))
    check = {"labels": {"team": "a"}, "alert": None, "check": {"host": "h"}}
    assert silence('team="a"').matches(labels_of(check))


def test_a_missing_label_reads_as_empty() -> None:
    s = silence('alertname="X"', 'team!~".+"')
    assert s.matches(alert(alertname="X"))
    assert not s.matches(alert(alertname="X", team="a"))


@pytest.mark.parametrize(
    ("texts", "says"),
    [
        ((), "at least one"),
        (('team=""',), "empty label set"),
        (('team=~".*"', 'env!="x"'), "empty label set"),
    ],
)
def test_a_silence_that_would_mute_everything_is_refused(texts: tuple[str, ...], says: str) -> None:
    matchers, _ = parse_matchers(texts)
    with pytest.raises(SilenceError, match=says):
        Silence.new(matchers, duration=timedelta(hours=1), at=T0)


def test_bad_matchers_and_durations_are_named() -> None:
    with pytest.raises(SilenceError, match=r"--matcher 'alertname=~\"\(\"'.*missing \)"):
        parse_matchers(['alertname=~"("'])
    with pytest.raises(SilenceError, match="duration"):
        silence(hours=0)
    with pytest.raises(SilenceError, match="ends_at"):
        Silence("x", silence().matchers, T0, T0)


def test_expiring_ends_an_active_silence_now_and_keeps_it_listed_for_a_while() -> None:
    s = silence()
    at = T0 + timedelta(minutes=30)
    ended = s.expired_at(at)
    assert ended.state(at) == "expired" and ended.ends_at == at and ended.id == s.id
    book = Silences([ended])
    assert book.forget_old(at + EXPIRED_KEPT - timedelta(seconds=1)) == []
    assert book.forget_old(at + EXPIRED_KEPT) == [ended] and len(book) == 0


def test_expiring_a_pending_silence_ends_it_before_it_starts() -> None:
    s = silence(start=T0 + timedelta(hours=1))
    ended = s.expired_at(T0)
    assert ended.state(T0) == "expired"
    assert ended.state(T0 + timedelta(hours=1, minutes=1)) == "expired"


@pytest.mark.parametrize("skew", [timedelta(minutes=-10), timedelta(hours=5)])
def test_an_expired_silence_is_expired_at_once_whatever_the_expiring_host_s_clock(
    skew: timedelta,
) -> None:
    # issue 24: a `silence expire` run where the clock is off (ahead by 10 minutes, or by
    # more than the silence has left) once left it muting in the replicas until their
    # clocks reached the host's "now" (or its old end)
    s = silence()
    replicas_now = T0 + timedelta(minutes=30)
    ended = s.expired_at(replicas_now - skew)
    assert ended.expired and ended.state(replicas_now) == "expired"
    assert Silences([ended]).matching(alert(alertname="DiskFull"), replicas_now) == []
    assert ended.expired_at(replicas_now + timedelta(days=1)) == ended  # once is enough
    wire = json.loads(json.dumps(ended.to_json()))
    assert wire["expired"] is True and Silence.from_json(wire).to_json() == wire


def test_a_pending_silence_expired_within_a_millisecond_reads_back() -> None:
    # the wire form keeps milliseconds: a start 1 microsecond before the end once read
    # back as equal to it, and every replica skipped the record (the pending version stayed)
    s = silence(start=T0 + timedelta(hours=1))
    ended = s.expired_at(T0 + timedelta(microseconds=500))
    back = Silence.from_json(json.loads(json.dumps(ended.to_json())))
    assert back.expired and back.state(T0 + timedelta(hours=1, minutes=1)) == "expired"


def test_a_record_without_the_expired_mark_is_read_by_its_times() -> None:
    wire = silence().to_json()  # as written before the mark existed
    assert "expired" not in wire
    old = Silence.from_json(wire)
    assert not old.expired and old.state(T0) == "active"
    with pytest.raises(SilenceError, match=r"silence\.expired: expected true or false"):
        Silence.from_json({**wire, "expired": "yes"})


label_names = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True)
values = st.text(max_size=12)


@given(
    st.lists(st.tuples(label_names, values.filter(bool), st.booleans()), min_size=1, max_size=4),
    st.text(max_size=30),
    st.integers(1, 10_000),
)
def test_the_wire_form_reads_back_as_the_same_silence(
    raw: list[tuple[str, str, bool]], comment: str, minutes: int
) -> None:
    matchers = [SilenceMatcher(name, value, False, equal) for name, value, equal in raw]
    matchers.append(SilenceMatcher("alertname", "X"))
    s = Silence.new(matchers, duration=timedelta(minutes=minutes), at=T0, comment=comment)
    wire = json.loads(json.dumps(s.to_json()))
    assert Silence.from_json(wire) == s


AMTOOL = """[
  {"id": "2b1e6c3a-0000-4000-8000-000000000001",
   "status": {"state": "active"},
   "updatedAt": "2026-12-07T11:59:00.123456789Z",
   "comment": "maintenance of db-1",
   "createdBy": "alice",
   "endsAt": "2026-12-07T14:00:00Z",
   "startsAt": "2026-12-07T12:00:00.000Z",
   "matchers": [
     {"isEqual": true, "isRegex": false, "name": "alertname", "value": "DiskFull"},
     {"isEqual": true, "isRegex": true, "name": "instance", "value": "db-1.*"},
     {"isEqual": false, "isRegex": false, "name": "severity", "value": "info"}
   ]}
]"""


def test_amtools_json_reads_as_it_is() -> None:
    (s,) = from_amtool(json.loads(AMTOOL))
    assert s.id.endswith("0001") and s.created_by == "alice" and s.comment.startswith("maint")
    assert s.matcher_text == '{alertname="DiskFull", instance=~"db-1.*", severity!="info"}'
    assert s.starts_at == T0 and s.ends_at == T0 + timedelta(hours=2)
    assert s.matches(alert(alertname="DiskFull", instance="db-1:9100", severity="page"))
    assert not s.matches(alert(alertname="DiskFull", instance="db-1:9100", severity="info"))


@pytest.mark.parametrize(
    ("change", "names"),
    [
        (lambda d: d.pop("id"), r"\[0\]\.id"),
        (lambda d: d.update(matchers="x"), r"\[0\]\.matchers"),
        (lambda d: d["matchers"][1].update(isRegex="yes"), r"\[0\]\.matchers\[1\]\.isRegex"),
        (lambda d: d["matchers"][1].update(value="("), r"\[0\]\.matchers\[1\]"),
        (lambda d: d["matchers"][0].pop("name"), r"\[0\]\.matchers\[0\]\.name"),
        (lambda d: d.update(endsAt="tomorrow"), r"\[0\]\.endsAt"),
        (lambda d: d.update(startsAt="2026-12-07T12:00:00"), r"\[0\]\.startsAt.*time zone"),
        (lambda d: d.update(endsAt="2026-12-07T11:00:00Z"), r"ends_at"),
    ],
)
def test_a_wrong_field_in_amtools_json_is_named(change, names: str) -> None:
    data = json.loads(AMTOOL)
    change(data[0])
    with pytest.raises(SilenceError, match=names):
        from_amtool(data)


def test_amtools_json_must_be_a_list() -> None:
    with pytest.raises(SilenceError, match="JSON list"):
        from_amtool({"id": "x"})


# -- properties: matching is Alertmanager's, whatever the labels --------------------------

NAMES = ["alertname", "env", "team", "instance"]
VALUES = ["", "prod", "staging", "db-1", "db-10", "x"]
REGEXES = ["prod|staging", "db-.*", ".*", ".+", "x?"]


def oracle(matchers: list[tuple[str, str, str]], labels: dict[str, str]) -> bool:
    """Alertmanager's rule, written out: a missing label is "", regexes anchored."""
    import re

    def holds(name: str, op: str, value: str) -> bool:
        actual = labels.get(name, "")
        if op in ("=~", "!~"):
            return (re.fullmatch(value, actual) is not None) is (op == "=~")
        return (actual == value) is (op == "=")

    return all(holds(*m) for m in matchers)


matcher_triples = st.one_of(
    st.tuples(st.sampled_from(NAMES), st.sampled_from(["=", "!="]), st.sampled_from(VALUES)),
    st.tuples(st.sampled_from(NAMES), st.sampled_from(["=~", "!~"]), st.sampled_from(REGEXES)),
)


@given(
    st.lists(matcher_triples, min_size=1, max_size=4),
    st.dictionaries(st.sampled_from(NAMES), st.sampled_from(VALUES), max_size=4),
    st.integers(-3, 3),
)
def test_a_silence_matches_as_alertmanager_says_and_only_while_active(
    triples: list[tuple[str, str, str]], labels: dict[str, str], hours: int
) -> None:
    matchers = [SilenceMatcher(n, v, op in ("=~", "!~"), op in ("=", "=~")) for n, op, v in triples]
    try:
        s = Silence.new(matchers, duration=timedelta(hours=2), at=T0)
    except SilenceError:  # every matcher matches the empty label set: refused
        assert oracle(triples, {})
        return
    assert s.matches(labels_of({"alert": {"labels": labels}})) == oracle(triples, labels)
    at = T0 + timedelta(hours=hours)
    found = Silences([s]).matching(labels_of({"alert": {"labels": labels}}), at)
    assert bool(found) == (oracle(triples, labels) and s.state(at) == "active")
    assert s.state(at) == ("pending" if hours < 0 else "active" if hours < 2 else "expired")
