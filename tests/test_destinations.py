"""Destinations: holds and their probe, both limiters taken together, shares, hand-over."""

from __future__ import annotations

from pydantic import SecretStr

from streamer.config import DeliverySettings, Destination, TokenSource
from streamer.destinations import Destinations
from streamer.failure_policy import Accepted, HoldDestination, Retry
from streamer.ledger import DeliveryLedger, OrderingKey

P0, P1 = ("events", 0), ("events", 1)
HOLD = HoldDestination("HTTP 401: bad token", 401)


def destinations(per_minute: int = 120, **settings) -> Destinations:
    spec = Destination(
        alert_source_config_id="SRC", token=TokenSource(env="T"), events_per_minute=per_minute
    )
    ds = Destinations(DeliverySettings(rate_limit_margin_seconds=0.0, **settings))
    ds.configure({"a": spec, "b": spec}, {"a": SecretStr("t1"), "b": SecretStr("t2")})
    return ds


def test_a_held_destination_sends_one_probe_per_retry_interval_and_the_probe_releases_it():
    state = destinations()["a"]
    assert state.take_slot(0.0)
    assert (
        state.answered(HOLD, was_probe=state.request_ended(0.0, 0.0), now=0.0, hold_retry=30.0)
        == "held"
    )
    assert not state.take_slot(10.0)  # held: nothing starts before the probe is due
    assert state.take_slot(30.0)  # the probe
    assert not state.take_slot(30.0)  # only one at a time
    was_probe = state.request_ended(30.0, 30.0)
    assert was_probe
    assert state.answered(HOLD, was_probe=was_probe, now=30.0, hold_retry=30.0) is None
    assert state.probe_at == 60.0 and not state.take_slot(59.0)  # still held
    assert state.take_slot(60.0)
    change = state.answered(
        Retry(1.0, "HTTP 503"), was_probe=state.request_ended(60.0, 60.0), now=60.0, hold_retry=30.0
    )
    assert change == "released"  # it answers again (a 503 is not the destination's fault)
    assert state.held_reason is None and state.take_slot(60.0)


def test_an_answer_to_an_older_request_does_not_release_a_hold_unless_it_is_accepted() -> None:
    state = destinations()["a"]
    state.answered(HOLD, was_probe=False, now=0.0, hold_retry=30.0)
    assert state.answered(Retry(1.0, "HTTP 503"), was_probe=False, now=1.0, hold_retry=30.0) is None
    assert state.answered(Accepted(), was_probe=False, now=2.0, hold_retry=30.0) == "released"


def test_a_hold_stops_only_its_own_destination() -> None:
    ds = destinations()
    ds["a"].answered(HOLD, was_probe=False, now=0.0, hold_retry=30.0)
    assert not ds["a"].take_slot(1.0) and ds["b"].take_slot(1.0)
    assert ds.held() == 1


def test_the_alert_source_limit_and_a_429_pause_the_destination() -> None:
    state = destinations(per_minute=2)["a"]
    assert state.take_slot(0.0) and state.take_slot(0.0)
    assert not state.take_slot(1.0)
    assert state.earliest_start(1.0) == 60.0
    state.rate_limited(until=100.0)
    assert state.earliest_start(61.0) == 100.0 and not state.take_slot(99.0)
    assert state.take_slot(100.0)


def test_destinations_with_one_token_share_its_api_key_limit() -> None:
    spec = Destination(alert_source_config_id="S", token=TokenSource(env="T"))
    ds = Destinations(
        DeliverySettings(requests_per_minute_per_api_key=3, rate_limit_margin_seconds=0.0)
    )
    ds.configure({"a": spec, "b": spec}, {"a": SecretStr("same"), "b": SecretStr("same")})
    started = [ds[name].take_slot(0.0) for name in ("a", "b", "a", "b")]
    assert started == [True, True, True, False]


def test_shares_split_each_limit_by_partitions_owned() -> None:
    ds = destinations(per_minute=120, requests_per_minute_per_api_key=1200)
    ds.share(owned_partitions=1, total_partitions=3)
    assert ds["a"].limiter.limit == 40 and ds["a"].key_limiter.limit == 400
    fixed = destinations(per_minute=120, rate_limit_share=0.5)
    fixed.share(owned_partitions=1, total_partitions=3)
    assert fixed["a"].limiter.limit == 60


def test_letting_a_partition_go_hands_its_key_to_the_same_key_on_another_partition() -> None:
    # One alert's events on two partitions (a producer not keying by the alerting thing):
    # dropping the first partition's queued job must pass the key to the second.
    ds, ledger = destinations(), DeliveryLedger()
    ledger.assign(P0)
    ledger.assign(P1)
    key = OrderingKey("a", "host-1//disk")
    [first] = ledger.add(P0, 0, [(key, "event 0")])
    assert ledger.add(P1, 0, [(key, "event 1")]) == []  # waits for the first
    ds["a"].ready.append(first)  # waiting for its rate limit
    ledger.revoke(P0)
    [dropped] = ds.drop({P0})
    assert dropped is first and not ds["a"].ready
    [handed_over] = ledger.finish(dropped)
    assert handed_over.partition == P1 and handed_over.work == "event 1"


def test_a_slot_and_its_handed_over_start_are_kept_until_a_window_after_the_answer() -> None:
    """incident.io may count a slow request as late as its answer: the limiters, and the
    note its partition's next owner reads, count it from then."""
    ds, ledger = destinations(per_minute=1), DeliveryLedger()
    ledger.assign(P0)
    [job] = ledger.add(P0, 0, [(OrderingKey("a", "host-1//disk"), "event")])
    ds["a"].ready.append(job)
    assert ds["a"].take_slot(1.0)
    ds["a"].request_ended(1.0, 4.0, P0)
    assert list(ds["a"].spent[P0]) == [4.0]
    assert ds["a"].earliest_start(61.0) == 64.0
