"""The delivery engine: the loop that wires the cores to Kafka and HTTP.

One thread (the poll thread) owns all state and makes every decision, in order, without
locks; the rebalance callbacks (which librdkafka runs inside `poll`) drain and commit
synchronously. Worker threads only POST to incident.io and hand the answer back through
a queue; the dead-letter producer's acknowledgements arrive on the poll thread too.

The decisions live in pure cores, each with its own tests: the `DeliveryLedger` (per-key
order, the commit watermark, fencing), `Destinations` (holds, probes, limits, shares),
the `FailurePolicy` (what an answer means), `CommitSchedule` (confirmed-only commits),
`GroupBudget` (rate budget, demand and done offsets shared through commit metadata),
`HandOver` (claims, drain cut-offs), `Backpressure` (pause, resume, registry blocks);
`Ownership` says what taking and letting go of a partition means to all of them.

A message's life: fetched -> decoded -> routed -> one job per delivery (or a dead letter)
-> each job waits for its key, its destination's hold and limits, then a worker -> the
policy decides -> terminal -> the watermark moves -> the offset is committed. Whatever a
message's bytes, it ends terminal: any failure to decode, route or render it becomes its
dead letter, with the reason; nothing raised by one message leaves the loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from opentelemetry.trace import INVALID_SPAN

from streamer import logs
from streamer.backpressure import Backpressure
from streamer.commits import CommitSchedule
from streamer.committer import Committer
from streamer.config import Config, DeliverySettings
from streamer.consumption_flow import ConsumptionFlow
from streamer.dead_letter_writer import DeadLetterWriter
from streamer.dead_letters import DeadLetter
from streamer.decoding import EventDecoder, RegistryUnavailable
from streamer.destinations import Destinations
from streamer.dispatch import Dispatcher
from streamer.failure_policy import Backoff
from streamer.group_budget import GroupBudget
from streamer.handover import HandOver
from streamer.incident_io import IncidentIoClient, PostsAlertEvents
from streamer.instrumentation import (
    ConsumerLag,
    MessageSpans,
    Stats,
    count_consumed,
    log_context,
    register_gauges,
    stats_of,
)
from streamer.intake import works_of
from streamer.kafka_clients import (
    decoders_of,
    make_consumer,
    make_producer,
    names,
    registry_of,
    source_message,
)
from streamer.ledger import DeliveryLedger, Job, Partition
from streamer.ownership import Ownership
from streamer.reload import ConfigReloader
from streamer.telemetry import Telemetry

log = logging.getLogger("streamer.engine")

__all__ = ["Engine"]


class Engine:
    def __init__(
        self,
        config: Config,
        *,
        consumer: Consumer | None = None,
        producer: Producer | None = None,
        http: PostsAlertEvents | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.telemetry = telemetry or Telemetry()
        self.reloader = ConfigReloader(
            config, count=lambda result: self.telemetry.config_reloads.add(1, {"result": result})
        )
        self.settings: DeliverySettings = config.file.delivery
        self.clock, self.wall_clock = clock, wall_clock
        self.lag = ConsumerLag()
        s = self.settings
        self.http: PostsAlertEvents = http or IncidentIoClient(timeout=s.request_timeout_seconds)
        self.ledger = DeliveryLedger()
        self.destinations = Destinations(s)
        self.backpressure = Backpressure(
            max_messages=s.max_unfinished, max_bytes=s.max_unfinished_bytes
        )
        self.handover = HandOver(s.request_timeout_seconds)
        self.commits = CommitSchedule(
            interval=s.commit_interval_seconds, every=s.commit_every_messages, now=clock()
        )
        # a note may take two commit intervals (and a round trip) to be confirmed
        self.budget = GroupBudget(
            self.destinations,
            self.ledger,
            tail_seconds=2 * s.commit_interval_seconds + 1.0,
            view_interval=s.commit_interval_seconds,
        )
        self.committer = Committer(
            commits=self.commits,
            budget=self.budget,
            handover=self.handover,
            ledger=self.ledger,
            config=lambda: self.config,
            clock=clock,
            wall_clock=wall_clock,
        )
        self.consumer = consumer or make_consumer(
            config, on_commit=self.committer.on_commit, on_statistics=self.lag.on_statistics
        )
        self.producer = producer or make_producer(config)
        self.dead_letters = DeadLetterWriter.of(self.producer, config)
        self.committer.attach(self.consumer)
        self.spans = MessageSpans(self.telemetry, config.file.kafka.group_id, clock)
        self.flow = ConsumptionFlow(
            self.consumer,
            self.ledger,
            self.backpressure,
            clock,
            Backoff(s.backoff_base_seconds, s.backoff_cap_seconds),
        )
        self.out = Dispatcher(
            s,
            ledger=self.ledger,
            destinations=self.destinations,
            handover=self.handover,
            http=self.http,
            telemetry=self.telemetry,
            spans=self.spans,
            clock=clock,
            wall_clock=wall_clock,
            activate=self._activate,
            finish=self._finish,
            release=self._release,
            dead_letter=self._write_dead_letter,
        )
        self.ownership = Ownership(
            ledger=self.ledger,
            destinations=self.destinations,
            handover=self.handover,
            commits=self.commits,
            committer=self.committer,
            budget=self.budget,
            backpressure=self.backpressure,
            release=self._release,
        )
        self._decoders: dict[str, EventDecoder] = {}
        self._registry = registry_of(config)
        self._last_reload_check = clock()
        self._apply_config(config)
        register_gauges(self.telemetry, self.ledger, self.backpressure, self.destinations, self.lag)

    @property
    def stats(self) -> Stats:
        """The summary's numbers as they stand (read from the metrics)."""
        return stats_of(
            self.telemetry,
            held_destinations=self.destinations.held(),
            pauses=self.backpressure.pauses,
            committed=self.commits.last_confirmed,
        )

    @property
    def config(self) -> Config:
        return self.reloader.current

    def _apply_config(self, config: Config) -> None:
        logs.MASK.add(config.secret_values())
        # Topics the new file no longer names keep their decoders: the subscription is set
        # at start (changing topics needs a restart), so their messages still arrive.
        self._decoders.update(decoders_of(config, self._registry))
        self.destinations.configure(config.file.destinations, config.tokens)
        self.ownership.update_shares()

    # -- the loop --------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Consumes until `stop` is set, then drains within the grace period and commits."""
        topics = [t.name for t in self.config.file.topics]
        self.consumer.subscribe(
            topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        try:
            while not stop.is_set():
                self._step(consume=True)
        finally:
            self._shutdown()

    def _step(self, *, consume: bool) -> None:
        self.telemetry.health.progressed()
        # While requests are in flight, answers arrive on the results queue: wait there
        # (woken at once by an answer) instead of inside consume(), which nothing wakes.
        timeout = 0.01 if self.out.has_timers else 0.1
        room = self.backpressure.room(self.ledger.unfinished(), self.ledger.unfinished_size())
        fetched = 0
        if consume and room > 0:
            # Never fetch past the cap. poll() returns as soon as one message arrives
            # (consume(n, timeout) would wait for a full batch); then take whatever else is
            # already fetched without waiting.
            first = self.consumer.poll(0 if self.out.busy else timeout)
            batch = [] if first is None else [first]
            if first is not None and room > 1:
                batch += self.consumer.consume(min(500, room - 1), 0)
            self._ingest(batch)
            fetched = len(batch)
        elif consume:
            # At the cap: still serve rebalance callbacks. Partitions are paused, but one
            # just assigned may hand over a message; it is ingested, never dropped.
            handed_over = self.consumer.poll(0)
            if handed_over is not None:
                self._ingest([handed_over])
        if not fetched:
            self.out.collect(wait=timeout if self.out.busy else 0.0)
            if not self.out.busy and (not consume or room <= 0):
                time.sleep(timeout / 2)
        self.producer.poll(0)
        self.out.collect()
        self.out.fire_timers()
        self.flow.unblock_due()
        self.out.dispatch()
        self.flow.apply_caps()
        self.committer.commit_if_due()
        now = self.clock()
        if now - self._last_reload_check >= self.settings.reload_interval_seconds:
            self._last_reload_check = now
            if self.reloader.check():
                self._apply_config(self.reloader.current)

    # -- in: messages -> jobs --------------------------------------------------------------

    def _ingest(self, batch: list[Message]) -> None:
        """Turns fetched messages into jobs. Most are dropped by the rules and terminal at
        once, so this is the firehose's cost: per message only decode, route and the
        ledger's offset; counters are added once per batch."""
        rules, decoders, ledger, spans = self.config.rules, self._decoders, self.ledger, self.spans
        tracing = self.telemetry.tracing
        consumed: dict[str, int] = {}
        dropped = 0
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
            if not ledger.holds(partition) or self.backpressure.blocked(partition):
                continue  # no longer ours / re-fetched after the seek that unblocks it
            seen_up_to = ledger.next_offset(partition)
            if seen_up_to is not None and source.offset < seen_up_to:
                continue  # fetched twice (a prefetch around a seek): already accounted for
            if self.committer.unread(partition):  # its offset map is not known yet
                why = "the previous owner's note is not read yet"
                self.flow.block_for_registry(partition, source.offset, "no coordinator", why)
                continue
            if self.budget.already_done(partition, source.offset):
                ledger.add(partition, source.offset, ())  # terminal before a hand-over
                continue
            consumed[source.topic] = consumed.get(source.topic, 0) + 1
            span = spans.start(source) if tracing else None
            try:
                works = works_of(source, decoders, rules, self.telemetry)
            except RegistryUnavailable as e:
                self.flow.block_for_registry(partition, source.offset, str(e))
                if span is not None:
                    span.set_attribute("streamer.outcome", "registry-unavailable")
                    span.end()
                continue
            self.backpressure.registry_answered(partition)
            size = len(source.value or b"") + len(source.key or b"")
            if works:
                spans.routed(partition, source.offset, span or INVALID_SPAN, len(works))
                for job in ledger.add(partition, source.offset, works, size):
                    self._activate(job)
                self.out.coalesce(works)  # a newer event supersedes its key's waiting one
            else:  # dropped on purpose: terminal now
                ledger.add(partition, source.offset, (), size)
                dropped += 1
                if span is not None:
                    spans.routed(partition, source.offset, span, 0)
        if dropped:
            self.telemetry.dropped.add(dropped)
            self.commits.terminal(dropped)
        count_consumed(self.telemetry, consumed, self.config.file.kafka.group_id)

    def _activate(self, job: Job) -> None:
        """A job whose key is free: queue it for its destination, or dead-letter it."""
        if isinstance(job.work, DeadLetter):
            self._write_dead_letter(job)
        else:
            self.out.enqueue(job)  # coalesced and ranked (streamer/coalescing.py)

    # -- dead letters ----------------------------------------------------------------------

    def _write_dead_letter(self, job: Job) -> None:
        letter: DeadLetter = job.work

        def written() -> None:
            self.telemetry.dead_lettered.add(1, {"reason": letter.reason})
            self._finish(job)

        def again_in(seconds: float) -> None:  # not terminal until it is safely written
            self.out.schedule(self.clock() + seconds, job)

        self.dead_letters.write(letter, written, again_in, log_context(job))

    # -- terminal states and commits -------------------------------------------------------

    def _finish(self, job: Job) -> None:
        outcome = "dead-lettered" if isinstance(job.work, DeadLetter) else "delivered"
        self.spans.job_ended(job.partition, job.offset, outcome)
        next_jobs, ended = self.out.ended(job)
        self.commits.terminal(ended)
        self.commits.soon()  # in the offset map within 0.1 s: a kill re-sends little
        for next_job in next_jobs:
            self._activate(next_job)

    def _release(self, job: Job) -> None:
        """A fenced job: free its key without touching any watermark."""
        self.spans.job_ended(job.partition, job.offset, "revoked")
        for next_job in self.ledger.finish(job):
            self._activate(next_job)

    # -- rebalance -------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.telemetry.health.joined = True  # an empty assignment is a joined member too
        self.ownership.take(partitions)
        self.dead_letters.taken((tp.topic, tp.partition) for tp in partitions)
        log.info("assigned %s", names(partitions), extra={"partitions": names(partitions)})
        if self.backpressure.paused:
            consumer.pause(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        deadline = self.clock() + self.settings.revoke_drain_seconds
        self.handover.begin(revoked, deadline)
        self._drain(revoked, deadline)  # then commit what is terminal and let go
        self.committer.commit_if_due(force=True, partitions=revoked)
        left = sum(self.ledger.unfinished(p) for p in revoked)
        self.ownership.let_go(revoked)
        log.info("revoked %s (%d events left to the next owner)", names(partitions), left)

    def _drain(self, partitions: Collection[Partition], deadline: float) -> None:
        """Serves everything (other partitions too) until `partitions` are terminal, the
        deadline passes, or waiting cannot change anything (`Dispatcher.worth_waiting`)."""
        while (
            any(self.ledger.unfinished(p) for p in partitions)
            and self.clock() < deadline
            and self.out.worth_waiting(producing=len(self.producer) > 0)
        ):
            self._step(consume=False)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.ownership.let_go({(tp.topic, tp.partition) for tp in partitions})  # no commit
        log.warning(
            "lost %s: nothing committed for them",
            names(partitions),
            extra={"partitions": names(partitions)},
        )

    # -- shutdown --------------------------------------------------------------------------

    def _shutdown(self) -> None:
        """Stop fetching, drain within the grace period, commit, leave the group."""
        deadline = self.clock() + self.settings.shutdown_grace_seconds
        self.handover.begin(self.ledger.partitions, deadline)
        try:
            self.consumer.pause([TopicPartition(*p) for p in self.ledger.partitions])
            self._drain(self.ledger.partitions, deadline)
            self.committer.commit_if_due(force=True)
            left = self.ledger.unfinished()
            if left:
                log.warning(
                    "shutdown: %d events not terminal; their requests could not start "
                    "before the %.0f s grace ends (rate limits, retries, a held destination "
                    "or a slow incident.io): the next owner delivers them",
                    left,
                    self.settings.shutdown_grace_seconds,
                )
        finally:
            self.consumer.close()  # leaves the group; on_revoke has nothing left to drain
            self.producer.flush(5)
            self.dead_letters.close()  # its follower of the dead-letter topic
            self.out.close()
