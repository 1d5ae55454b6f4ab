"""Where the hand-over state lives: commit metadata or a small compacted topic.

Run: `python bench/handover_state.py [--partitions 12] [--rounds 200]`. On a real broker
(`local_infrastructure`, or KAFKA_BOOTSTRAP_SERVERS and SCHEMA_REGISTRY_URL), it times
what each candidate costs on the two paths that matter:

- the steady state, once per commit interval: a commit carrying realistic notes
  (`budget.encode`: 60 start times and an offset map per partition) against the same
  commit with no metadata (the baseline); and producing the same notes, keyed by
  partition, to a compacted topic (acks=all) next to a bare commit;
- a take-over, once per rebalance or restart: reading every partition's note, with
  `committed()` (one OffsetFetch), against reading a compacted topic from its start to
  its end with a fresh consumer (what a new incarnation has to do).

Reported as medians and ratios to the baseline, never asserted.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
import uuid
from collections.abc import Callable

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streamer.budget import PartitionNote, Spent, encode
from streamer.testing.infra import local_infrastructure


def note(partition: int) -> str:
    """A busy partition's note: 60 irregular starts in the window for each of two
    destinations, and a sparse offset map."""
    now, jitter = time.time(), random.Random(partition)
    spent = Spent(tuple(now - jitter.uniform(0, 60) for _ in range(60)), 0.0, 3, 2)
    done = frozenset(range(1000 + partition, 1400, 3))  # a sparse offset map
    return encode(PartitionNote("bench", False, {"a": spent, "b": spent}, done), 1000)


def median_ms(action: Callable[[], None], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    with local_infrastructure() as infra:
        bootstrap = infra.bootstrap_servers
        suffix = uuid.uuid4().hex[:6]
        topic, state, group = f"bench-{suffix}", f"bench-state-{suffix}", f"bench-{suffix}"
        admin = AdminClient({"bootstrap.servers": bootstrap})
        futures = admin.create_topics(
            [
                NewTopic(topic, num_partitions=args.partitions),
                NewTopic(state, num_partitions=1, config={"cleanup.policy": "compact"}),
            ]
        )
        for future in futures.values():
            future.result(30)
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
        consumer.assign([TopicPartition(topic, p) for p in range(args.partitions)])
        notes = {p: note(p) for p in range(args.partitions)}
        size = max(len(n) for n in notes.values())

        def commit(metadata: bool) -> None:
            consumer.commit(
                offsets=[
                    TopicPartition(topic, p, 0, notes[p] if metadata else "")
                    for p in range(args.partitions)
                ],
                asynchronous=False,
            )

        producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})

        def produce_notes() -> None:
            for p in range(args.partitions):
                producer.produce(state, key=str(p).encode(), value=notes[p].encode())
            producer.flush(30)

        bare = median_ms(lambda: commit(False), args.rounds)
        with_notes = median_ms(lambda: commit(True), args.rounds)
        topic_and_commit = median_ms(lambda: (produce_notes(), commit(False)), args.rounds)
        tps = [TopicPartition(topic, p) for p in range(args.partitions)]
        read_metadata = median_ms(lambda: consumer.committed(tps, timeout=10), args.rounds)

        def read_topic() -> None:
            reader = Consumer(
                {"bootstrap.servers": bootstrap, "group.id": f"r-{uuid.uuid4().hex[:6]}"}
            )
            _, high = reader.get_watermark_offsets(TopicPartition(state, 0), timeout=10)
            reader.assign([TopicPartition(state, 0, 0)])
            seen = 0
            while seen < high:  # consume() waits its whole timeout for a short batch
                batch = reader.consume(1000, 0.01)
                seen = max([seen, *(m.offset() + 1 for m in batch if m.error() is None)])
            reader.close()

        read_compacted = median_ms(read_topic, max(5, args.rounds // 20))
        consumer.close()
        print(f"{args.partitions} partitions, notes of up to {size} bytes each")
        print(f"commit, no metadata (baseline)      {bare:7.2f} ms  1.00")
        print(f"commit with notes                   {with_notes:7.2f} ms  {with_notes / bare:.2f}")
        print(
            f"notes to a compacted topic + commit {topic_and_commit:7.2f} ms"
            f"  {topic_and_commit / bare:.2f}"
        )
        print(f"take-over: committed() with notes   {read_metadata:7.2f} ms")
        print(
            f"take-over: compacted topic to end   {read_compacted:7.2f} ms"
            f"  {read_compacted / read_metadata:.1f}x committed()"
        )


if __name__ == "__main__":
    main()
