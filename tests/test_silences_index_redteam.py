"""Red team of the silences' index (issue 24): `Silences.matching` tests only the silences
an alert's own labels could satisfy (by one `name="value"` matcher each) and those with no
such matcher. Whatever silences are put, replaced and removed, it finds exactly what
testing every silence finds, in the same order; and it does not test the others."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.silence_index import Silences
from streamer.silences import Silence, SilenceError, SilenceMatcher

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
NAMES = ["team", "env", "severity"]
VALUES = ["", "db", "prod", "1", "true", "x.*"]

matcher = st.builds(
    SilenceMatcher,
    st.sampled_from(NAMES),
    st.sampled_from(VALUES),
    st.booleans(),
    st.booleans(),
)
label_value = st.one_of(st.sampled_from(VALUES), st.none(), st.just(1), st.just(True))
labels = st.dictionaries(st.sampled_from(NAMES), label_value)
operation = st.tuples(
    st.sampled_from(["put", "remove"]),
    st.sampled_from(["a", "b", "c", "d"]),
    st.lists(matcher, min_size=1, max_size=3),
    st.integers(-2, 2),  # hours from T0 to its end
)


def _silence(silence_id: str, matchers: list[SilenceMatcher], ends: int) -> Silence | None:
    try:
        return Silence(
            silence_id, tuple(matchers), T0 - timedelta(hours=3), T0 + timedelta(hours=ends)
        )
    except SilenceError:  # matches the empty label set: refused, as on the topic
        return None


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(operation, max_size=20), alert=labels)
def test_matching_finds_what_testing_every_silence_finds(steps, alert) -> None:
    book = Silences()
    for kind, silence_id, matchers, ends in steps:
        silence = _silence(silence_id, matchers, ends)
        if kind == "put" and silence is not None:
            book.put(silence)
        elif kind == "remove":
            book.remove(silence_id)
    shaped = {"alert": {"labels": alert}}
    plain = [s for s in book if s.state(T0) == "active" and s.matches(shaped)]
    assert book.matching(shaped, T0) == plain


def test_a_silence_on_another_label_value_is_not_tested(monkeypatch) -> None:
    tested: list[str] = []
    real = Silence.matches

    def counted(self: Silence, labels) -> bool:
        tested.append(self.id)
        return real(self, labels)

    monkeypatch.setattr(Silence, "matches", counted)
    book = Silences(
        _silence(f"s{n}", [SilenceMatcher("team", f"team-{n}")], 1) for n in range(1000)
    )
    found = book.matching({"alert": {"labels": {"team": "team-7"}}}, T0)
    assert [s.id for s in found] == ["s7"] and tested == ["s7"]
