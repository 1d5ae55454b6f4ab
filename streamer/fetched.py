"""Fetched Kafka messages -> the machine's `Incoming` values (the firehose's path).

Most messages are dropped by the rules, so this is the firehose's cost: per message only
decode and route (`route`, i.e. `intake.works_of`), and nothing at all for a message the
machine already knows the end of (`needs_routing` false: a hand-over's done offsets).
Whatever a message's bytes, it becomes an `Incoming`; only a schema registry that cannot
be reached leaves it unrouted (`registry_down`: the machine pauses its partition and the
message is read again later). Consumer errors other than a partition's end are logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from confluent_kafka import KafkaError, Message

from streamer.dead_letters import SourceMessage
from streamer.decoding import RegistryUnavailable
from streamer.delivery_events import Incoming
from streamer.instrumentation import MessageSpans
from streamer.intake import Muted, Silenced, Work
from streamer.kafka_clients import source_message
from streamer.ledger import Partition

log = logging.getLogger(__name__)


def incoming(
    batch: Sequence[Message],
    needs_routing: Callable[[Partition, int], bool],
    route: Callable[[SourceMessage], list[Work]],
    spans: MessageSpans | None,
) -> tuple[list[Incoming], dict[str, int]]:
    """The batch's messages for the machine, and how many of each topic were routed."""
    consumed: dict[str, int] = {}
    messages: list[Incoming] = []
    for message in batch:
        error = message.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer error: %s", error)
            continue
        source = source_message(message)
        if source is None:
            continue
        partition: Partition = (source.topic, source.partition)
        if not needs_routing(partition, source.offset):
            messages.append(Incoming(partition, source.offset, works=None))
            continue
        consumed[source.topic] = consumed.get(source.topic, 0) + 1
        span = spans.start(source) if spans is not None else None
        size = len(source.value or b"") + len(source.key or b"")
        try:
            works = route(source)
        except RegistryUnavailable as e:
            if span is not None:
                span.set_attribute("streamer.outcome", "registry-unavailable")
                span.end()
            messages.append(Incoming(partition, source.offset, size, (), str(e)))
            continue
        muted, silenced = isinstance(works, Muted), isinstance(works, Silenced)
        messages.append(
            Incoming(
                partition, source.offset, size, works, span=span, muted=muted, silenced=silenced
            )
        )
    return messages, consumed
