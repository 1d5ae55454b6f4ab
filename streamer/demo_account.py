"""The demo's final account: how every consumed message ended, and the lag explained.

`reconciliation` writes three sums that must add up (messages by outcome, alert events,
the lag the broker holds); `KafkaPosition` is what the broker holds for the demo's topics
(high watermarks, committed offsets, the offsets their notes say are done already), and
`message_outcomes` reads the outcomes from the service's own metrics. tests/test_cli.py
stops a demo mid-way and checks the sums; tests/test_operations.py checks the account.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException, TopicPartition

from streamer import budget
from streamer.instrumentation import Stats
from streamer.telemetry import Telemetry


@dataclass(frozen=True)
class KafkaPosition:
    """Where the demo's topics stand: messages in them (the high watermarks), offsets the
    group committed, and the offsets above those that its commits' notes say are done
    already (`budget.PartitionNote.done`: its next owner skips them)."""

    in_topics: int = 0
    committed: int = 0
    done_after: int = 0

    @property
    def lag(self) -> int:
        return self.in_topics - self.committed


def position(
    consumer: Consumer,
    topics: tuple[str, ...],
    committed: Mapping[tuple[str, int], int],
    notes: Mapping[tuple[str, int], str | None] | None = None,
) -> KafkaPosition:
    in_topics = at = done = 0
    for topic in topics:
        for partition in consumer.list_topics(topic, timeout=5).topics[topic].partitions:
            _, high = _high_watermark(consumer, TopicPartition(topic, partition))
            offset = min(high, max(0, committed.get((topic, partition), 0)))
            in_topics, at = in_topics + high, at + offset
            if notes is not None:
                done += budget.decode(notes.get((topic, partition)), offset).done.count()
    return KafkaPosition(in_topics, at, done)


def _high_watermark(consumer: Consumer, partition: TopicPartition) -> tuple[int, int]:
    """The partition's watermarks; a broker's refusal (a leader moving, as on a busy machine
    right after the topic was made: NOT_LEADER_FOR_PARTITION) is asked again for 10 s."""
    deadline = time.monotonic() + 10
    while True:
        try:
            low, high = consumer.get_watermark_offsets(partition, timeout=2)
            return low, high
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def committed_position(bootstrap: str, topics: tuple[str, ...], group_id: str) -> KafkaPosition:
    """The position as the broker holds it for `group_id` (read after the engine left):
    its committed offsets and the notes committed with them."""
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": group_id})
    try:
        partitions = [
            TopicPartition(topic, partition)
            for topic in topics
            for partition in reader.list_topics(topic, timeout=5).topics[topic].partitions
        ]
        answers = reader.committed(partitions, timeout=10)
        offsets = {(tp.topic, tp.partition): tp.offset for tp in answers}
        notes = {(tp.topic, tp.partition): tp.metadata for tp in answers}
        return position(reader, topics, offsets, notes)
    finally:
        reader.close()


def message_outcomes(telemetry: Telemetry) -> dict[str, int]:
    """Messages per outcome: `dropped` from its tally (dropped messages are not timed), the
    others (delivered, dead-lettered, superseded, revoked) from the process-duration
    histogram, which counts each message once: when its last job ends, or when its
    partition is let go unfinished (`revoked`)."""
    from prometheus_client.parser import text_string_to_metric_families

    outcomes: dict[str, int] = {
        "dropped": telemetry.dropped.total(),
        "silenced": telemetry.silenced_messages.total(),
    }
    for family in text_string_to_metric_families(telemetry.scrape().decode()):
        for sample in family.samples:
            if sample.name == "messaging_process_duration_seconds_count":
                outcome = sample.labels.get("streamer_outcome", "?")
                outcomes[outcome] = outcomes.get(outcome, 0) + int(sample.value)
    return outcomes


def refused(telemetry: Telemetry) -> int:
    """Alert events dead-lettered after they were routed: refused by incident.io (a 400,
    413 or 422) or given up on after retries (`dispatch.py`'s reasons)."""
    return telemetry.dead_lettered.total(
        lambda a: str(a.get("reason", "")).startswith("http-") or a.get("reason") == "gave-up"
    )


def reconciliation(
    stats: Stats,
    outcomes: Mapping[str, int],
    kafka: KafkaPosition,
    refused: int = 0,
    quieted: int = 0,
) -> str:
    """The final account, in three sums.

    Messages: each consumed message is in exactly one term, by how its last alert event
    ended (a message that became several alert events counts once); `dropped` is the
    summary's; `silenced` ended with every alert event kept quiet by a silence (a term shown
    when there is one); `not finished` were let go unfinished (at the end: the engine shut
    down), and the next run reads them again. Alert events: the summary's routed, delivered
    and superseded. Kafka: the lag is what the next run reads again (the unfinished
    messages, what was never read) plus the finished messages after the first unfinished
    one, which the commit's offset map lets it skip; a map too long for the commit's 4 KiB
    keeps the runs nearest the committed offset, and the finished messages past it are read
    (and sent) again: more lag than the terms is a duplicate, never a loss. Less lag than
    the terms, or messages that do not add up, would be a bug, and the account says so.
    """
    delivered, dropped = outcomes.get("delivered", 0), outcomes.get("dropped", 0)
    dead, superseded = outcomes.get("dead-lettered", 0), outcomes.get("superseded", 0)
    unfinished, silenced = outcomes.get("revoked", 0), outcomes.get("silenced", 0)
    accounted = delivered + dropped + silenced + dead + superseded + unfinished
    # `quieted`: alert events a silence added while they waited kept quiet (never sent)
    alerts_unfinished = stats.routed - stats.delivered - stats.superseded - refused - quieted
    unread = kafka.in_topics - stats.consumed
    known = unfinished + kafka.done_after + unread
    read_again = kafka.lag - known  # finished, past what the offset map could hold
    adds_up = accounted == stats.consumed and alerts_unfinished >= 0 and read_again >= 0
    lines = [
        "final reconciliation (a message counts once, by how its last alert event ended)",
        f"  messages  consumed {stats.consumed} = dropped {dropped} + "
        + (f"silenced {silenced} + " if silenced else "")
        + f"delivered {delivered} "
        f"+ dead-lettered {dead} + superseded {superseded} + not finished {unfinished}"
        + ("" if accounted == stats.consumed else f"   DOES NOT ADD UP: {accounted}"),
        f"  alerts    routed {stats.routed} = delivered {stats.delivered} "
        f"+ superseded {stats.superseded} + refused {refused} "
        + (f"+ silenced while waiting {quieted} " if quieted else "")
        + f"+ not finished {alerts_unfinished}",
        f"  kafka     lag {kafka.lag} = not finished {unfinished} "
        f"+ done after them {kafka.done_after} (skipped next run) + not read yet {unread}"
        + (f" + done, read again {read_again}" if read_again > 0 else "")
        + ("" if read_again >= 0 else f"   DOES NOT ADD UP: {known}"),
    ]
    if not adds_up:
        lines.append("  the account does not add up: please report it with the service log")
    elif kafka.lag == 0:
        lines.append("  nothing lost: every message finished and every offset committed")
    else:
        lines.append(
            f"  nothing lost: the next run reads the {unfinished + unread} not finished "
            f"or not read yet, and skips the {kafka.done_after} done"
            + (f" (the offset map held no room for {read_again} more)" if read_again else "")
        )
    return "\n".join(lines) + "\n"
