"""The engine: the shell that performs the delivery machine's effects with Kafka and HTTP.

Every decision is the `DeliveryMachine`'s (docs/design.md, "The delivery machine"): the
engine turns what happens into events (messages fetched and routed, answers, dead-letter
acknowledgements, rebalances, the broker's answers to commits, time passing), hands each
to `machine.handle`, and performs the effects that come back, feeding their results in
as events again. It never decides and the machine never calls back into it.

One thread (the poll thread) feeds the machine, in order, without locks; the rebalance
callbacks (which librdkafka runs inside `poll`) feed it too and drain synchronously.
Worker threads only POST to incident.io and hand the answer back through a queue; the
dead-letter producer's acknowledgements arrive on the poll thread.

A message's life: fetched -> decoded and routed here (`intake.works_of`; whatever its
bytes, a failure becomes its dead letter) -> `Fetched` -> the machine's effects.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor

from confluent_kafka import Consumer, Message, Producer, TopicPartition

from streamer import logs
from streamer.broker_effects import BrokerEffects
from streamer.config import Config, DeliverySettings
from streamer.dead_letter_writer import DeadLetterWriter
from streamer.dead_letters import SourceMessage
from streamer.decoding import EventDecoder
from streamer.delivery_events import (
    Answered,
    Assigned,
    Commit,
    ConfigChanged,
    DeadLetterNotWritten,
    DeadLetterWritten,
    Effect,
    Event,
    Fetched,
    HeldSent,
    HoldTarget,
    LetGo,
    Post,
    Revoked,
    Revoking,
    Tick,
    WriteDeadLetter,
)
from streamer.delivery_machine import DeliveryMachine
from streamer.fetched import incoming
from streamer.firing_state import FiringState
from streamer.incident_io import Answer, IncidentIoClient, PostsAlertEvents
from streamer.instrumentation import ConsumerLag, Stats, count_consumed, log_context
from streamer.intake import Work, quiet_at_turn, works_of
from streamer.kafka_clients import (
    PartitionCounts,
    decoders_of,
    follower_settings,
    make_consumer,
    make_producer,
    names,
    registry_of,
)
from streamer.ledger import Job, Partition
from streamer.reload import ConfigReloader
from streamer.silence_book import STARTUP_WAIT_SECONDS, SilenceBook
from streamer.telemetry import Telemetry
from streamer.topic_follower import Followers

log = logging.getLogger(__name__)

__all__ = ["Engine"]

# s: the loop wakes at least this often (a reload taken, `stop` seen). Everything else
# wakes it when due: messages, rebalances and commit answers (poll), answers (the queue),
# and whatever the machine knows of (`next_wakeup`: a slot, a retry, a commit, a view)
MAX_WAIT = 2.0
MIN_WAIT = 0.002  # s: and never spins (messages and answers still wake it at once)
BUSY_WAIT = 0.02  # s: while answers or dead-letter acknowledgements are due


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
        silences: SilenceBook | None = None,
        firing: FiringState | None = None,
    ) -> None:
        self.telemetry = telemetry or Telemetry()
        # the silences, dead-letter and firing topics, read in full by one reader from now on
        self.followers = Followers(follower_settings(config))
        self.silences = silences or SilenceBook.of(config, self.followers)
        self.reloader = ConfigReloader(
            config, count=lambda result: self.telemetry.config_reloads.add(1, {"result": result})
        )
        self.settings: DeliverySettings = config.file.delivery
        self.clock, self.wall_clock = clock, wall_clock
        self.lag = ConsumerLag()
        self.http = http or IncidentIoClient(timeout=self.settings.request_timeout_seconds)
        self.machine = DeliveryMachine.of(config, now=clock(), telemetry=self.telemetry)
        # a silence read after an event was routed still mutes its deliveries that wait
        self.machine.quiet_with(
            lambda delivery, wall: quiet_at_turn(
                delivery,
                wall,
                self.telemetry,
                silences=self.silences,
                firing=self.firing,
                rules=self.config.rules.inhibit_rules,
            ),
            stale=lambda key, source, offset: not self.firing.held.holds(key, source, offset),
        )
        self.consumer = consumer or make_consumer(
            config,
            on_commit=lambda error, tps: self.broker.on_commit(error, tps),
            on_statistics=self.lag.on_statistics,
        )
        self.producer = producer or make_producer(config)
        self.dead_letters = DeadLetterWriter.of(self.producer, config, self.followers)
        self.partition_counts = PartitionCounts(self.consumer)
        self.broker = BrokerEffects(self.consumer, self._feed, self._every_partition)
        self._workers = ThreadPoolExecutor(self.settings.workers, thread_name_prefix="deliver")
        self._answers: queue.SimpleQueue[tuple[Job, Answer | Exception]] = queue.SimpleQueue()
        self._events: deque[Event] = deque()
        self._feeding, self._polled, self._producer_polled = False, 0.0, 0.0
        self._decoders: dict[str, EventDecoder] = {}
        self._registry = registry_of(config)
        self._reloaded: queue.SimpleQueue[Config] = queue.SimpleQueue()
        self._total_partitions = 0
        self._apply_config(config)
        self.machine.register_gauges(self.lag)
        self.firing = firing or FiringState.of(config, self.producer, self.followers)
        self.firing.show(self.telemetry, lambda: self.config.rules.inhibit_rules, self.silences)
        self.firing.held.muted_routes = lambda at: self.config.rules.quiet_routes(at)
        self.firing.held.routes = lambda: {r.path: r.destination for r in self.config.rules.walk()}

    @property
    def stats(self) -> Stats:
        """The summary's numbers as they stand (read from the metrics)."""
        return self.machine.stats

    @property
    def config(self) -> Config:
        return self.reloader.current

    def _apply_config(self, config: Config) -> None:
        logs.MASK.add(config.secret_values())
        # Topics the new file no longer names keep their decoders: the subscription is set
        # at start (changing topics needs a restart), so their messages still arrive.
        self._decoders.update(decoders_of(config, self._registry))

    def _count_partitions(self) -> int:
        """Every configured topic's partitions (asked once per topic, outside callbacks)."""
        self._total_partitions = self.partition_counts.total(
            [t.name for t in self.config.file.topics]
        )
        return self._total_partitions

    def _every_partition(self) -> list[Partition]:
        counts = {t.name: self.partition_counts.total([t.name]) for t in self.config.file.topics}
        return [(name, i) for name, count in counts.items() for i in range(count)]

    # -- the machine's door, and its effects ----------------------------------------------

    def _feed(self, event: Event) -> None:
        """Hands `event` to the machine and performs its effects; results that arrive while
        performing (a produce refused at once) are fed after, in order."""
        self._events.append(event)
        if self._feeding:
            return
        self._feeding = True
        try:
            while self._events:
                effects = self.machine.handle(
                    self._events.popleft(), self.clock(), self.wall_clock()
                )
                for effect in effects:
                    self._perform(effect)
        finally:
            self._feeding = False

    def _perform(self, effect: Effect) -> None:
        match effect:
            case Post():
                self._post(effect)
            case WriteDeadLetter():
                self._write_dead_letter(effect)
            case Commit():
                self.firing.before_commit()  # a source's state before its offset's commit
                self.broker.perform(effect)
            case HoldTarget() | HeldSent():  # a held target's record (held_targets.py)
                self.firing.held.perform(effect)
            case _:
                self.broker.perform(effect)

    def _post(self, effect: Post) -> None:
        def post() -> None:
            try:
                answer: Answer | Exception = self.http.post_alert_event(
                    effect.url, effect.alert_source_config_id, effect.token, effect.payload
                )
            except Exception as e:  # never lose a result: the machine decides
                answer = e
            self._answers.put((effect.job, answer))

        self._workers.submit(post)

    def _write_dead_letter(self, effect: WriteDeadLetter) -> None:
        job = effect.job
        self.dead_letters.write(
            effect.letter,
            written=lambda: self._feed(DeadLetterWritten(job)),
            again_in=lambda seconds: self._feed(DeadLetterNotWritten(job, seconds)),
            context=log_context(job),
        )

    # -- the loop --------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Consumes until `stop` is set, then drains within the grace period and commits."""
        topics = [t.name for t in self.config.file.topics]
        self._count_partitions()
        self.silences.wait_read(STARTUP_WAIT_SECONDS, stop)  # bounded: fail open
        self.firing.wait_read(self.config.file.inhibition.startup_read_seconds, stop)
        self.consumer.subscribe(
            topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        watching = threading.Event()
        # a changed file is loaded and compiled on this thread, never on the poll thread
        watcher = threading.Thread(
            target=self.reloader.run,
            args=(watching, self.settings.reload_interval_seconds, self._reloaded.put),
            name="config-reload",
            daemon=True,
        )
        watcher.start()
        try:
            while not stop.is_set():
                self._step(consume=True)
        finally:
            watching.set()
            self._shutdown()

    def _step(self, *, consume: bool) -> None:
        self.telemetry.health.progressed()
        machine = self.machine
        # Sleep until the next thing that can happen: a message (poll wakes at once), an
        # answer (the queue wakes at once), or what the machine knows of (`next_wakeup`).
        now = self.clock()
        wait = min(MAX_WAIT, max(MIN_WAIT, machine.next_wakeup(now) - now))
        if producing := len(self.producer) > 0:  # records on their way: acks come by polling
            wait = min(wait, BUSY_WAIT)
        room, fetched = machine.room(), 0
        # answers due (each wakes the loop): the consumer is polled at most every BUSY_WAIT
        # (a poll costs ~70 us of CPU); a message or a rebalance waits that long at most
        fetch = consume and (not machine.busy or now - self._polled >= BUSY_WAIT)
        self._polled = now if fetch else self._polled
        if fetch and room > 0:
            # Never past the cap; poll() returns at the first message, then the rest fetched
            first = self.consumer.poll(0 if machine.busy else wait)
            batch = [] if first is None else [first]
            if first is not None and room > 1:
                batch += self.consumer.consume(min(500, room - 1), 0)
            self._ingest(batch)
            fetched = len(batch)
        elif fetch:
            # At the cap: still serve rebalance callbacks. Partitions are paused, but one
            # just assigned may hand over a message; it is ingested, never dropped.
            handed_over = self.consumer.poll(0 if machine.busy else wait)
            if handed_over is not None:
                self._ingest([handed_over])
        if not fetched:
            self._collect(wait=min(wait, BUSY_WAIT) if machine.busy else 0.0)
            if not consume and not machine.busy:  # draining: nothing to fetch
                time.sleep(min(wait, BUSY_WAIT))
        if producing or now - self._producer_polled >= 1.0:  # else only its logs (~0.1 ms)
            self.producer.poll(0)
            self._producer_polled = now
        self._collect()
        if held := self.firing.held.due(machine.partitions, self.clock(), machine.held_waiting):
            self._feed(self.firing.held.released(held, self.consumer))  # nothing keeps quiet
        self._feed(Tick())
        self._take_reloaded()

    def _take_reloaded(self) -> None:
        try:
            new = self._reloaded.get_nowait()
        except queue.Empty:
            return
        self.reloader.apply(new)
        self._apply_config(new)
        total = self._count_partitions()
        self._feed(ConfigChanged(new.file.destinations, new.tokens, total))

    def _collect(self, wait: float = 0.0) -> None:
        """Feeds every answer that arrived; waits up to `wait` s for the first one."""
        while True:
            try:
                job, answer = (
                    self._answers.get(timeout=wait) if wait else self._answers.get_nowait()
                )
            except queue.Empty:
                return
            wait = 0.0
            self._feed(Answered(job, answer))

    def _ingest(self, batch: Sequence[Message]) -> None:
        """Decodes and routes what the machine wants routed (`fetched.incoming`)."""
        machine = self.machine

        def route(source: SourceMessage) -> list[Work]:
            return works_of(
                source,
                self._decoders,
                self.config.rules,
                self.telemetry,
                silences=self.silences,
                firing=self.firing,
            )

        spans = machine.spans if self.telemetry.tracing else None
        messages, consumed = incoming(batch, machine.needs_routing, route, spans)
        if messages:
            self._feed(Fetched(messages))
        count_consumed(self.telemetry, consumed, self.config.file.kafka.group_id)

    # -- rebalance -------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.telemetry.health.joined = True  # an empty assignment is a joined member too
        taken = [(tp.topic, tp.partition) for tp in partitions]
        self.dead_letters.taken(taken)  # letters are checked against the topic from here
        self.firing.held.taken(taken)  # held targets: released once read from here
        self._feed(Assigned(taken, self._total_partitions))
        log.info("assigned %s", names(partitions), extra={"partitions": names(partitions)})

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = [(tp.topic, tp.partition) for tp in partitions]
        self._drain(revoked, self.clock() + self.settings.revoke_drain_seconds)
        left = sum(self.machine.unfinished(p) for p in revoked)
        self._feed(LetGo(revoked))
        log.info("revoked %s (%d events left to the next owner)", names(partitions), left)

    def _drain(self, partitions: Collection[Partition], deadline: float) -> None:
        """Serves everything (other partitions too) until `partitions` are terminal, the
        deadline passes, or waiting cannot change anything; then commits what is terminal."""
        self._feed(Revoking(list(partitions), deadline))
        while self.clock() < deadline and not self.machine.drained(
            partitions, producing=len(self.producer) > 0
        ):
            self._step(consume=False)
        self._feed(Revoked(list(partitions)))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._feed(LetGo([(tp.topic, tp.partition) for tp in partitions], lost=True))
        lost = names(partitions)
        log.warning("lost %s: nothing committed for them", lost, extra={"partitions": lost})

    # -- shutdown --------------------------------------------------------------------------

    def _shutdown(self) -> None:
        """Stop fetching, drain within the grace period, commit, leave the group."""
        deadline = self.clock() + self.settings.shutdown_grace_seconds
        mine = self.machine.partitions
        try:
            self.consumer.pause([TopicPartition(*p) for p in mine])
            self._drain(mine, deadline)
            left = self.machine.unfinished()
            if left:
                log.warning(
                    "shutdown: %d events not terminal; their requests could not start "
                    "before the %.0f s grace ends (rate limits, retries, a held destination "
                    "or a slow incident.io): the next owner delivers them",
                    left,
                    self.settings.shutdown_grace_seconds,
                )
            self._feed(LetGo(mine))  # committed: closing revokes nothing left to drain
        finally:
            # letters acknowledged before leaving: the next owner's check then sees them
            self.producer.flush(5)
            self.consumer.close()  # leaves the group; on_revoke has nothing left to drain
            self.dead_letters.close()  # its follower of the dead-letter topic
            self.silences.close()
            self.firing.close()
            self.followers.close()
            self._workers.shutdown(wait=False, cancel_futures=True)
            self.http.close()
