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
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from streamer.dead_letters import DeadLetter, SourceMessage
from streamer.decoding import DecodeError, EventDecoder, RegistryUnavailable
from streamer.dispatch import Delivery
from streamer.ledger import OrderingKey
from streamer.routing import Rules
from streamer.telemetry import Telemetry

log = logging.getLogger(__name__)

Work = tuple[OrderingKey | None, Delivery | DeadLetter]


class Muted(list[Work]):
    """No works because every route that would deliver it is muted by a time interval
    (its own outcome, `muted`, committed like a dropped event but not counted as one)."""


def works_of(
    source: SourceMessage,
    decoders: Mapping[str, EventDecoder],
    rules: Rules,
    telemetry: Telemetry,
    at: datetime | None = None,
) -> list[Work]:
    """A message's jobs (none: the rules dropped or muted it), time intervals asked about
    `at` (None: now); raises only RegistryUnavailable."""
    try:
        return _works_of(source, decoders, rules, telemetry, at)
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
) -> list[Work]:
    try:
        event = decoders[source.topic].decode(source.value, source.headers)
    except DecodeError as e:
        return [(None, DeadLetter(source, f"decode:{e.reason}", e.detail))]
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
    if not decision.deliveries and not decision.failures:
        # dropped on purpose (the firehose's common case, kept short), or muted
        return Muted() if decision.muted else []
    event_time = event.get("event_time")
    event_epoch = event_time.timestamp() if isinstance(event_time, datetime) else None
    works: list[Work] = []
    for d in decision.deliveries:
        body: dict[str, Any] = d.payload.model_dump(exclude_none=True)
        key = OrderingKey(d.destination, d.payload.deduplication_key or "")
        works.append((key, Delivery(source, d.route, d.destination, body, event_time=event_epoch)))
        telemetry.routed.add(1, {"route": d.route, "destination": d.destination})
    for f in decision.failures:
        works.append((None, DeadLetter(source, f.code, f.reason, f.route, f.destination)))
    return works


def _detail(error: Exception) -> str:
    """An unexpected error's text for a dead letter (bounded there, masked in logs)."""
    text = str(error)
    return f"{type(error).__name__}: {text[:1000]}" if text else type(error).__name__
