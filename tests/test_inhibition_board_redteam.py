"""Red team of the firing sources' board (issue 24): its index keeps each bucket sorted until
the bucket changes, and a source firing again only updates its expiry. Whatever the order
of fires, re-fires, resolves, expiries and looks, the board names the same rule and source
as the plain reading over the sources in fingerprint order (so every replica names the
same one), and a storm of targets does not sort the bucket again at every look."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.inhibition import FiringSource, FiringSources, InhibitRule, inhibition_of
from streamer.label_matchers import label_matcher
from tests.test_inhibition import NOW, ZONE_DOWN

RULES = [
    ZONE_DOWN,
    InhibitRule(
        "crit-over-warn",
        source=(label_matcher("severity", "=", "critical"),),
        target=(label_matcher("severity", "=~", "warning|critical"),),
        equal=("service", "zone"),
    ),
]
labels = st.dictionaries(
    st.sampled_from(["alertname", "severity", "zone", "service"]),
    st.sampled_from(["", "ZoneDown", "warning", "critical", "eu-1", "eu-2"]),
)
operation = st.one_of(
    st.tuples(st.just("fire"), labels, st.integers(-5, 5)),
    st.tuples(st.just("resolve"), labels, st.just(0)),
    st.tuples(st.just("look"), labels, st.just(0)),
    st.tuples(st.just("expire"), labels, st.integers(-5, 5)),
)


def _plain(board: FiringSources, target: dict[str, str]) -> tuple[str, str] | None:
    ordered = sorted(board, key=lambda s: s.fingerprint)
    found = inhibition_of(RULES, ordered, target, NOW)
    return None if found is None else (found.rule, found.source.fingerprint)


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(operation, max_size=25))
def test_the_board_names_what_the_plain_reading_names_after_any_history(
    steps: list[tuple[str, dict[str, str], int]],
) -> None:
    board = FiringSources()
    board.use_rules(RULES)
    for kind, label_set, n in steps:
        if kind == "fire":
            board.fire(FiringSource(label_set, at=NOW - 10, until=NOW + n))
        elif kind == "resolve":
            board.resolve(FiringSource(label_set, 0, 0).fingerprint)
        elif kind == "expire":
            board.expire(NOW + n)
        found = board.inhibition(RULES, label_set, NOW)
        assert (None if found is None else (found.rule, found.source.fingerprint)) == _plain(
            board, label_set
        )


def test_a_source_firing_again_with_an_earlier_end_expires_then() -> None:
    board = FiringSources()
    board.use_rules(RULES)
    source = {"alertname": "ZoneDown", "zone": "eu-1"}
    target = {"severity": "warning", "zone": "eu-1"}
    board.fire(FiringSource(source, at=NOW - 10, until=NOW + 300))
    assert board.inhibition(RULES, target, NOW) is not None
    board.fire(FiringSource(source, at=NOW, until=NOW + 1))  # its new ends_at
    assert board.inhibition(RULES, target, NOW + 2) is None
    assert len(board) == 1


def test_a_look_sorts_a_bucket_once_until_it_changes(monkeypatch) -> None:
    import streamer.inhibition as inhibition

    board = FiringSources()
    board.use_rules(RULES)
    for n in range(50):
        board.fire(FiringSource({"alertname": "ZoneDown", "zone": "eu-1", "n": str(n)}, 0, NOW + 9))
    sorts = []
    real_sorted = sorted

    def counted(items):  # a bucket (a set) sorted; fingerprints sort their label pairs
        if isinstance(items, set):
            sorts.append(1)
        return real_sorted(items)

    monkeypatch.setattr(inhibition, "sorted", counted, raising=False)
    target = {"severity": "warning", "zone": "eu-1"}
    for _ in range(100):  # a storm of targets
        assert board.inhibition(RULES, target, NOW) is not None
    assert len(sorts) == 1
    board.fire(FiringSource({"alertname": "ZoneDown", "zone": "eu-1", "n": "0"}, 0, NOW + 99))
    board.inhibition(RULES, target, NOW)  # firing again changed no bucket
    assert len(sorts) == 1
    board.resolve(
        FiringSource({"alertname": "ZoneDown", "zone": "eu-1", "n": "0"}, 0, 0).fingerprint
    )
    board.inhibition(RULES, target, NOW)
    assert len(sorts) == 2
