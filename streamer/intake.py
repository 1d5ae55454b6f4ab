"""In: one fetched message -> its jobs (deliveries, a dead letter, or none).

Invariant (docs/design.md, guarantee 7): this never raises for any message, whatever its
bytes, except `RegistryUnavailable` (not the message's fault: the caller pauses the
partition and reads it again later). A message that cannot be decoded becomes a dead
letter `decode:<reason>`; a template that fails becomes `template`, a `when:` that fails
`route:when`, rules that raise otherwise `route:<error>`; anything else that goes wrong
on the way (a bug met by one message) becomes `internal:<error>`, logged with its
traceback. Decoding, regexes, templates and `when:` are bounded where they run; this is
the last line.

A route a time interval keeps quiet makes no job (guarantee 11): an event all of whose
routes are muted has no works and is committed like a dropped one; each muted route is
counted in `streamer.events.muted` by route and interval. Intervals are asked about the
time of routing (`at`; the wall clock when not given), which is what Alertmanager asks
about too: the time a notification would go out, not the event's own time.

A delivery whose event an active silence matches (streamer/silences.py, read from the
silences topic by streamer/silence_book.py) makes no job either (guarantee 11): an event
all of whose deliveries are silenced ends `silenced` (`Silenced`, committed like a muted
one); each is counted in `streamer.events.silenced` by silence and route and logged with
the silence's id. A silence read after an event was routed mutes its deliveries still
waiting too: the delivery machine asks `quiet_at_turn` (`silenced_at_turn`) when each
one's turn to start comes, and it ends `silenced`, taking no request. A resolve is never
silenced, so incident.io can always close an alert whose firing it received (and may
receive the resolve of one it never saw: it ignores it).

Inhibition (streamer/inhibition.py; the sources' state in streamer/firing_state.py): an
alert event that is a source of an inhibit rule writes its state first (`observe`), then a
firing delivery of an event an inhibit rule's firing source inhibits makes no job; an
event all of whose deliveries are inhibited ends `inhibited` (`Inhibited`, committed like
a muted one); each is counted in `streamer.events.inhibited` by rule, route and stage
and logged with the source's fingerprint. A source read after a target was routed inhibits
its deliveries still waiting too (`quiet_at_turn` asks `inhibited_at_turn`, after the
silences): they end `inhibited`, taking no request. Resolves always go through, as with
silences. An inhibited firing is held (streamer/held_targets.py: its key's latest state,
sent once nothing inhibits it); any other delivery of its key made here settles it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from streamer.dead_letters import DeadLetter, SourceMessage
from streamer.decoding import DecodeError, EventDecoder, RegistryUnavailable
from streamer.dispatch import Delivery
from streamer.held_targets import HeldTargets
from streamer.inhibition import Inhibition, InhibitRule, alert_labels
from streamer.ledger import OrderingKey
from streamer.quiet_log import quiet_log_of
from streamer.routing import RoutedAlert, Rules
from streamer.silence_index import labels_of
from streamer.silences import Silence
from streamer.telemetry import Telemetry

log = logging.getLogger(__name__)

Work = tuple[OrderingKey | None, Delivery | DeadLetter]


class Muted(list[Work]):
    """No works because every route that would deliver it is muted by a time interval
    (its own outcome, `muted`, committed like a dropped event but not counted as one)."""


class Silenced(Muted):
    """No works because an active silence matched every alert event it made (outcome
    `silenced`, committed like a muted event)."""


class Inhibited(Muted):
    """No works because an inhibit rule's firing source inhibited every alert event it
    made (outcome `inhibited`, committed like a muted event)."""


class FiringLookup(Protocol):
    """The inhibit rules' sources and held targets (streamer.firing_state.FiringState)."""

    held: HeldTargets

    def observe(self, event: Mapping[str, Any], rules: tuple[InhibitRule, ...]) -> str | None: ...
    def inhibition(
        self, rules: tuple[InhibitRule, ...], labels: Mapping[str, str]
    ) -> Inhibition | None: ...


class SilenceLookup(Protocol):
    """The silences in force (streamer.silence_book.SilenceBook)."""

    def matching(self, labels: Mapping[str, Any], at: datetime) -> list[Silence]: ...


def works_of(
    source: SourceMessage,
    decoders: Mapping[str, EventDecoder],
    rules: Rules,
    telemetry: Telemetry,
    at: datetime | None = None,
    silences: SilenceLookup | None = None,
    firing: FiringLookup | None = None,
) -> list[Work]:
    """A message's jobs (none: the rules dropped, muted, silenced or inhibited it), time
    intervals and silences asked about `at` (None: now), inhibit rules about `firing`;
    raises only RegistryUnavailable."""
    try:
        return _works_of(source, decoders, rules, telemetry, at, silences, firing)
    except RegistryUnavailable:
        raise
    except Exception as e:  # a bug met by one message must not stop every partition
        log.exception(
            "internal error on %s[%d]@%d: dead-lettered",
            source.topic,
            source.partition,
            source.offset,
        )
        return [(None, DeadLetter(source, f"internal:{type(e).__name__}", _detail(e)))]


def _works_of(
    source: SourceMessage,
    decoders: Mapping[str, EventDecoder],
    rules: Rules,
    telemetry: Telemetry,
    at: datetime | None,
    silences: SilenceLookup | None = None,
    firing: FiringLookup | None = None,
) -> list[Work]:
    try:
        event = decoders[source.topic].decode(source.value, source.headers)
    except DecodeError as e:
        return [(None, DeadLetter(source, f"decode:{e.reason}", e.detail))]
    if firing is not None and rules.inhibit_rules:  # a source's state, whatever its routes
        firing.observe(event, rules.inhibit_rules)
    try:
        decision = rules.evaluate(event, at)
    except Exception as e:  # evaluate is bounded and should not raise; if it does
        return [(None, DeadLetter(source, f"route:{type(e).__name__}", _detail(e)))]
    for m in decision.muted:
        interval = ",".join(m.intervals)
        telemetry.muted.add(1, {"route": m.route, "interval": interval})
        log.debug(
            "%s[%d]@%d: muted on route %s by %s (%s)",
            source.topic,
            source.partition,
            source.offset,
            m.route,
            interval,
            m.by,
        )
    deliveries, silenced = decision.deliveries, False
    if silences is not None and deliveries:
        deliveries = _not_silenced(source, event, deliveries, silences, telemetry, at)
        silenced = len(deliveries) < len(decision.deliveries)
    inhibited: tuple[RoutedAlert, ...] = ()
    if firing is not None and rules.inhibit_rules and deliveries:
        kept = _not_inhibited(source, event, deliveries, firing, rules, telemetry)
        inhibited, deliveries = tuple(d for d in deliveries if d not in kept), kept
    if firing is not None:  # held till released; or newer: settled (rules reloaded away too)
        quiet = tuple(d for d in decision.deliveries if d not in deliveries) if silenced else ()
        firing.held.routed(
            source, event, decision.deliveries, inhibited, rules.inhibit_rules, quiet
        )
    if not deliveries and not decision.failures:
        # dropped on purpose (the firehose's common case, kept short), muted, silenced
        # or inhibited
        if silenced:
            return Silenced()
        if inhibited:
            return Inhibited()
        return Muted() if decision.muted else []
    event_time = event.get("event_time")
    event_epoch = event_time.timestamp() if isinstance(event_time, datetime) else None
    labels = labels_of(event) if silences is not None else None  # asked again at its turn
    # and inhibit rules too (alerts only)
    own = alert_labels(event) if firing is not None and rules.inhibit_rules else None
    works: list[Work] = []
    for d in deliveries:
        body: dict[str, Any] = d.payload.model_dump(exclude_none=True)
        key = OrderingKey(d.destination, d.payload.deduplication_key or "")
        delivery = Delivery(
            source,
            d.route,
            d.destination,
            body,
            event_time=event_epoch,
            labels=labels,
            alert_labels=own,
        )
        works.append((key, delivery))
        telemetry.routed.add(1, {"route": d.route, "destination": d.destination})
    for f in decision.failures:
        works.append((None, DeadLetter(source, f.code, f.reason, f.route, f.destination)))
    return works


def _not_silenced(
    source: SourceMessage,
    event: Mapping[str, Any],
    deliveries: tuple[RoutedAlert, ...],
    silences: SilenceLookup,
    telemetry: Telemetry,
    at: datetime | None,
) -> tuple[RoutedAlert, ...]:
    """The deliveries no active silence keeps quiet (resolves always go through)."""
    if all(d.payload.status == "resolved" for d in deliveries):
        return deliveries
    found = silences.matching(labels_of(event), at or datetime.now(UTC))
    if not found:
        return deliveries
    by = min(found, key=lambda s: (s.starts_at, s.id))  # the same one every time
    said = ("silenced", f"silence {by.id} ({by.matcher_text})")
    counted = {"silence": by.id}
    return _quieted(source, deliveries, telemetry, telemetry.silenced, counted, said, counted)


def _not_inhibited(
    source: SourceMessage,
    event: Mapping[str, Any],
    deliveries: tuple[RoutedAlert, ...],
    firing: FiringLookup,
    rules: Rules,
    telemetry: Telemetry,
) -> tuple[RoutedAlert, ...]:
    """The deliveries no inhibit rule keeps quiet (resolves always go through)."""
    if all(d.payload.status == "resolved" for d in deliveries):
        return deliveries
    labels = alert_labels(event)
    by = None if labels is None else firing.inhibition(rules.inhibit_rules, labels)
    if by is None:
        return deliveries
    said = ("inhibited", by.describe())
    extra = {"inhibit_rule": by.rule, "inhibited_by": by.source.fingerprint}
    counter, counted = telemetry.inhibited, {"rule": by.rule}
    return _quieted(source, deliveries, telemetry, counter, counted, said, extra)


def _quieted(
    source: SourceMessage,
    deliveries: tuple[RoutedAlert, ...],
    telemetry: Telemetry,
    counter: Any,
    counted: Mapping[str, str],
    said: tuple[str, str],
    extra: Mapping[str, str],
) -> tuple[RoutedAlert, ...]:
    """The firing deliveries are kept quiet (each counted by `counter` with `counted`, its
    route and stage routing, and logged as `said` (the outcome, and what kept it quiet)
    with `extra`: at info once a minute per reason, `quiet_log.py`); the resolves go on."""
    for d in deliveries:
        if d.payload.status == "resolved":
            continue
        counter.add(1, {**counted, "route": d.route, "stage": "routing"})
        quiet_log_of(telemetry).say(
            log,
            (said[0], next(iter(counted.values()))),
            "%s[%d]@%d: %s on route %s by %s",
            source.topic,
            source.partition,
            source.offset,
            said[0],
            d.route,
            said[1],
            extra={
                "topic": source.topic,
                "partition": source.partition,
                "offset": source.offset,
                "route": d.route,
                "destination": d.destination,
                "deduplication_key": d.payload.deduplication_key,
                **extra,
            },
        )
    return tuple(d for d in deliveries if d.payload.status == "resolved")


def silenced_at_turn(
    delivery: Delivery, silences: SilenceLookup, wall: float, telemetry: Telemetry
) -> bool:
    """Asked when a routed delivery's turn to start comes (`DeliveryMachine.quiet_with`):
    does a silence read since it was routed mute it now? (A resolve: never.) A delivery
    that waited behind a storm's backlog is not sent once the storm is silenced."""
    if delivery.labels is None or delivery.payload.get("status") == "resolved":
        return False
    found = silences.matching(delivery.labels, datetime.fromtimestamp(wall, UTC))
    if not found:
        return False
    by = min(found, key=lambda s: (s.starts_at, s.id))
    telemetry.silenced.add(1, {"silence": by.id, "route": delivery.route, "stage": "waiting"})
    source = delivery.message
    quiet_log_of(telemetry).say(
        log,
        ("silenced", by.id),
        "%s[%d]@%d: silenced on route %s by silence %s (%s) while it waited",
        source.topic,
        source.partition,
        source.offset,
        delivery.route,
        by.id,
        by.matcher_text,
        extra={
            "topic": source.topic,
            "partition": source.partition,
            "offset": source.offset,
            "route": delivery.route,
            "destination": delivery.destination,
            "deduplication_key": delivery.payload.get("deduplication_key"),
            "silence": by.id,
        },
    )
    return True


def inhibited_at_turn(
    delivery: Delivery,
    firing: FiringLookup,
    rules: tuple[InhibitRule, ...],
    telemetry: Telemetry,
) -> bool:
    """Asked when a routed delivery's turn to start comes: does a source that fired since
    it was routed inhibit it now? (A resolve: never.) Warnings queued behind the rate limit
    before their zone's critical was read are not sent once it is."""
    labels = delivery.alert_labels
    if labels is None or not rules or delivery.payload.get("status") == "resolved":
        return False
    by = firing.inhibition(rules, labels)
    if by is None:
        return False
    telemetry.inhibited.add(1, {"rule": by.rule, "route": delivery.route, "stage": "waiting"})
    source = delivery.message
    quiet_log_of(telemetry).say(
        log,
        ("inhibited", by.rule),
        "%s[%d]@%d: inhibited on route %s by %s while it waited",
        source.topic,
        source.partition,
        source.offset,
        delivery.route,
        by.describe(),
        extra={
            "topic": source.topic,
            "partition": source.partition,
            "offset": source.offset,
            "route": delivery.route,
            "destination": delivery.destination,
            "deduplication_key": delivery.payload.get("deduplication_key"),
            "inhibit_rule": by.rule,
            "inhibited_by": by.source.fingerprint,
        },
    )
    return True


def quiet_at_turn(
    delivery: Delivery,
    wall: float,
    telemetry: Telemetry,
    *,
    silences: SilenceLookup | None = None,
    firing: FiringLookup | None = None,
    rules: tuple[InhibitRule, ...] = (),
) -> str | None:
    """The shell's answer at a delivery's turn (`DeliveryMachine.quiet_with`): the outcome
    it ends with if a silence (`silenced`) or an inhibit rule (`inhibited`) mutes it now,
    else None."""
    if silences is not None and silenced_at_turn(delivery, silences, wall, telemetry):
        return "silenced"
    if firing is not None and inhibited_at_turn(delivery, firing, rules, telemetry):
        return "inhibited"
    return None


def _detail(error: Exception) -> str:
    """An unexpected error's text for a dead letter (bounded there, masked in logs)."""
    text = str(error)
    return f"{type(error).__name__}: {text[:1000]}" if text else type(error).__name__
