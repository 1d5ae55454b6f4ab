"""Topics every replica reads in full, outside the consumer group, with one reader.

Some state is shared by writing it to a topic that every replica reads whole: the dead
letters already written (so a next owner does not write one twice), the silences, the
firing sources of inhibit rules. `Followers` reads all of them with ONE librdkafka
consumer on ONE thread: each client's threads wake several times a second even while
nothing happens, and a reader per topic (with its asking client) was most of the
service's CPU while deliveries waited on a rate limit (bench/waiting.py). Each topic is a
`FollowedTopic`: it has every partition assigned (no group, no commits), starts at the
offsets of a recent window (`offsets_for_times`) or at the beginning, and each of its
records is handed to its handler on the shared thread. `TopicFollower` is one topic with
a reader of its own (the CLI's reads, tests).

What readers need is "have I read everything written before now"; follow_progress.py
states that rule (`caught_up(since)`) and keeps it with plain values. The topics' ends are
asked for on demand: a reader that finds its topic not caught up asks for a fresh look,
and the thread answers within one round trip (it looks between polls, brief ones for
`EAGER_SECONDS` after a topic is added and after each question).

A topic that cannot be read (it does not exist, an ACL refuses it, no broker answers) is
reported, never raised: `failing_since` says since when nothing could be read of it, and
it is looked at again every few seconds while the other topics are read. What to do
meanwhile is the reader's choice.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from streamer.follow_progress import (
    EAGER_SECONDS,
    PENDING_LOOKS,
    RETRY_SECONDS,
    FollowedTopic,
    FollowProgress,
    Follows,
    read_to_now,
)

log = logging.getLogger(__name__)

__all__ = [
    "PENDING_LOOKS",
    "FollowProgress",
    "FollowedTopic",
    "Followers",
    "Follows",
    "TopicFollower",
    "following",
    "read_to_now",
]

REQUEST_TIMEOUT = 5.0
QUEUED_KBYTES = 4096
# how long the thread waits for a record (one wakes it at once) before it looks at
# requests again, so also how late a fresh look may start (a dead letter's check that it
# was not written already waits up to this long more). Each wakeup costs ~0.1 ms of CPU.
POLL_SECONDS = 1.0
# A reader that waits to be caught up waits for a look asked after its question, and the
# thread looks only between polls: so for a while after a topic is added (the service
# waits for it at start-up) and after each question, the thread polls this briefly, and a
# question is answered within about one round trip, not one `POLL_SECONDS` later.
EAGER_POLL_SECONDS = 0.05
ASKER_IDLE_SECONDS = 30.0  # the asking client is closed after this long without a look


class Followers:
    """Topics read in full by one reader on one thread (see the module docstring).
    `settings` are librdkafka's; the reader never joins a group nor commits."""

    def __init__(
        self,
        settings: Mapping[str, Any],
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        name: str = "follow",
    ) -> None:
        self.clock, self.wall_clock, self.name = clock, wall_clock, name
        self._settings = {
            "group.id": "streamer-follower",  # required by the client, never joined
            **settings,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,  # an end reached is progress too
            "auto.offset.reset": "earliest",  # a window start already deleted: the oldest
            # fetched ahead of the handlers at most this much (librdkafka's default: 64 MiB)
            "queued.max.messages.kbytes": QUEUED_KBYTES,
        }
        self.lock = threading.Lock()
        self.eager_until = 0.0  # polls are brief until then (EAGER_SECONDS)
        self._topics: dict[str, FollowedTopic] = {}
        self._left: list[FollowedTopic] = []  # their partitions are to be unassigned
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._asker: Consumer | None = None  # this thread's only (`_asking`)
        self._asked_at = 0.0

    def follow(
        self, topic: str, handle: Callable[[Message], None], *, window_seconds: float | None
    ) -> FollowedTopic:
        """Reads `topic` in full from now on, handing each record to `handle` on the
        followers' thread (`handle` must be quick; what it raises is logged and skipped).
        `window_seconds`: start at records this recent, or from the beginning when None."""
        followed = FollowedTopic(self, topic, handle, window_seconds)
        self.add(followed)
        return followed

    def add(self, followed: FollowedTopic) -> None:
        with self.lock:
            if self._stop.is_set():  # nothing would read it: never caught up, never failing
                raise RuntimeError(f"{self.name} is closed: {followed.topic} cannot be followed")
            if followed.topic in self._topics:
                raise ValueError(f"{followed.topic} is followed already")
            self._topics[followed.topic] = followed
            self.eager_until = self.clock() + EAGER_SECONDS  # it is waited for at start-up
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()

    def leave(self, followed: FollowedTopic) -> None:
        with self.lock:
            if self._topics.get(followed.topic) is followed:
                del self._topics[followed.topic]
                self._left.append(followed)

    def close(self, timeout: float = 10.0) -> None:
        """Stops reading every topic (no handler is called after it returns)."""
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout)

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            reader: Consumer | None = None
            try:
                reader = Consumer(self._settings)
                self._follow(reader)
            except Exception as e:  # the reader itself: every topic, tried again
                self._failed(self._following(), f"{type(e).__name__}: {e}")
                self._stop.wait(RETRY_SECONDS)
            finally:
                for client in (reader, self._asker):
                    if client is not None:
                        with contextlib.suppress(Exception):
                            client.close()
                self._asker = None

    def _following(self) -> list[FollowedTopic]:
        with self.lock:
            return list(self._topics.values())

    def _follow(self, reader: Consumer) -> None:
        with self.lock:  # a new reader: nothing assigned yet, so nothing to unassign
            self._left = []
            for followed in self._topics.values():
                followed.assigned, followed.looked_at = set(), -RETRY_SECONDS
                followed.missing = False
        while not self._stop.is_set():
            with self.lock:
                topics = list(self._topics.values())
                left, self._left = self._left, []
                now = self.clock()
                eager = now < self.eager_until
            for followed in left:
                if followed.assigned:
                    reader.incremental_unassign(
                        [TopicPartition(followed.topic, p) for p in sorted(followed.assigned)]
                    )
            # every due look asked before any partition is assigned: while nothing is
            # assigned the reader asks itself (`_asking`), the start-up's looks included
            with self.lock:
                due = [(t, asked) for t in topics for on, asked in [t.look_due(now)] if on]
            reading = any(t.assigned for t in topics)
            # a missing topic no reader waits for is asked by the reader (no asker kept for it)
            new = [
                tp
                for t, asked in due
                for tp in self._look(reader, t, reading=reading and (asked or not t.missing))
            ]
            if new:
                reader.incremental_assign(new)
            if self._asker is not None and self.clock() - self._asked_at > ASKER_IDLE_SECONDS:
                asker, self._asker = self._asker, None
                asker.close()
            poll = EAGER_POLL_SECONDS if eager else POLL_SECONDS
            if not any(t.assigned for t in topics):
                self._stop.wait(poll)
                continue
            # poll wakes at the first record (consume(n, timeout) would wait out its
            # timeout for a full batch); the rest already fetched is taken without waiting
            first = reader.poll(poll)
            if first is None:
                continue
            for message in [first, *reader.consume(500, 0)]:
                self._take(message)

    def _asking(self, reader: Consumer, reading: bool) -> Consumer:
        """The client that asks the broker questions (metadata, watermarks, offsets): the
        reader itself while it reads nothing, else another client (a broker answers one
        connection's requests in order: a question behind a waiting fetch would wait
        fetch.wait.max.ms too), made when needed and closed after `ASKER_IDLE_SECONDS`
        without a look (an idle client's threads still wake)."""
        self._asked_at = self.clock()
        if self._asker is not None:
            return self._asker
        if not reading:
            return reader
        self._asker = Consumer(self._settings)
        return self._asker

    def _look(
        self, reader: Consumer, followed: FollowedTopic, *, reading: bool
    ) -> list[TopicPartition]:
        """Asks for `followed`'s ends (a look: caught up once read up to them); returns its
        partitions not assigned yet, from where to read them. A failure is this topic's
        alone: reported, and looked at again later (`FollowedTopic.look_due`)."""
        try:
            asker = self._asking(reader, reading)
            # the look's time: before its first question (a partition added, and written
            # to, while the metadata is asked is in no later look's answer)
            asked = self.clock()
            new = self._new_partitions(asker, followed)
            if new is None:  # no such topic (yet): everything it held when asked is read
                followed.missing, followed.looked_at = True, asked
                with self.lock:  # (a first dead letter does not wait 30 s for it)
                    followed.progress.look(asked, {})
                    followed.settled()
                return []
            followed.missing, followed.looked_at = False, asked
            marks = {p: self._watermarks(asker, followed.topic, p) for p in followed.assigned | new}
            with self.lock:  # ends below what was read: another log (the topic created again)
                gone = {p for p, (_, high) in marks.items() if high < followed.progress.next(p)}
            if again := gone & followed.assigned:
                reader.incremental_unassign([TopicPartition(followed.topic, p) for p in again])
                followed.assigned -= again
            starts = self._starts(asker, followed, new | gone, marks)
            with self.lock:  # after a failure: go on from where reading stopped
                starts = {
                    p: o if p in gone else max(o, followed.progress.next(p))
                    for p, o in starts.items()
                }
            if starts:
                followed.assigned.update(starts)
                log.info(
                    "following %s from %s", followed.topic, starts, extra={"topic": followed.topic}
                )
            with self.lock:
                for partition, offset in starts.items():
                    followed.progress.start(partition, offset, again=partition in gone)
                followed.progress.look(followed.looked_at, {p: h for p, (_, h) in marks.items()})
                followed.settled()
            return [TopicPartition(followed.topic, p, o) for p, o in sorted(starts.items())]
        except Exception as e:  # never raised to anyone: reported, and looked at again
            followed.looked_at = self.clock()
            self._failed([followed], f"{type(e).__name__}: {e}")
            if self._asker is not None:  # a fresh one next time
                with contextlib.suppress(Exception):
                    self._asker.close()
                self._asker = None
            return []

    def _new_partitions(self, asker: Consumer, followed: FollowedTopic) -> set[int] | None:
        """The topic's partitions not assigned yet; None if the topic does not exist (the
        broker says so: not a failure to read it)."""
        metadata = asker.list_topics(followed.topic, timeout=REQUEST_TIMEOUT)
        topic = metadata.topics.get(followed.topic)
        error = None if topic is None else topic.error
        unknown = error is not None and error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART
        if unknown and not followed.assigned:
            return None
        if topic is None or error is not None:
            raise KafkaException(error if error is not None else "no metadata")
        return set(topic.partitions) - followed.assigned

    def _starts(
        self,
        asker: Consumer,
        followed: FollowedTopic,
        partitions: Iterable[int],
        marks: Mapping[int, tuple[int, int]],
    ) -> dict[int, int]:
        partitions = sorted(partitions)
        if followed.window_seconds is None or not partitions:
            return {p: marks[p][0] for p in partitions}
        since_ms = int((self.wall_clock() - followed.window_seconds) * 1000)
        found = asker.offsets_for_times(
            [TopicPartition(followed.topic, p, since_ms) for p in partitions],
            timeout=REQUEST_TIMEOUT,
        )
        starts = {}
        for tp in found:
            if tp.error is not None:
                raise KafkaException(tp.error)
            # -1: nothing that recent; start at the end as it was before the question
            starts[tp.partition] = tp.offset if tp.offset >= 0 else marks[tp.partition][1]
        return starts

    @staticmethod
    def _watermarks(asker: Consumer, topic: str, partition: int) -> tuple[int, int]:
        answer = asker.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=REQUEST_TIMEOUT, cached=False
        )
        if answer is None:
            raise KafkaException(f"no answer for {topic}[{partition}]'s watermarks")
        low, high = answer
        return int(low), int(high)

    def _take(self, message: Message) -> None:
        name, partition, offset = message.topic(), message.partition(), message.offset()
        with self.lock:
            followed = self._topics.get(name) if name is not None else None
        error = message.error()
        if error is not None and error.code() != KafkaError._PARTITION_EOF:
            # a topic's error is its own; one of the client's (no topic) is every topic's
            if name is None or followed is not None:
                self._failed([followed] if followed is not None else self._following(), error.str())
            return
        if followed is None or partition not in followed.assigned or offset is None:
            return  # fetched for a follower that left (its topic maybe followed again since)
        if error is None:
            try:
                followed.handle(message)  # before the progress: caught up means handled
            except Exception:
                log.exception("a record of %s[%d]@%d could not be read", name, partition, offset)
            offset += 1
        with self.lock:  # (an end reached is progress too)
            followed.progress.read(partition, offset)
            followed.settled()

    def _failed(self, topics: Iterable[FollowedTopic], problem: str) -> None:
        with self.lock:
            for followed in topics:
                followed.failed(self.clock(), problem)


class TopicFollower(FollowedTopic):
    """One topic followed by a reader of its own (a `Followers` of one topic): the CLI's
    reads and tests. `start()` begins reading; `close()` stops the reader."""

    def __init__(
        self,
        settings: Mapping[str, Any],
        topic: str,
        handle: Callable[[Message], None],
        *,
        window_seconds: float | None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        settings = {"group.id": f"streamer-follower-{topic}", **settings}
        self.own = Followers(settings, clock=clock, wall_clock=wall_clock, name=f"follow-{topic}")
        super().__init__(self.own, topic, handle, window_seconds)

    def start(self) -> TopicFollower:
        self.own.add(self)
        return self

    def close(self, timeout: float = 10.0) -> None:
        self.own.close(timeout)


def following(
    settings: Mapping[str, Any],
    topic: str,
    *,
    window_seconds: float | None,
    followers: Followers | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Callable[[Callable[[Message], None]], Follows]:
    """How a reader of `topic` gets its follower for a handler: one of `followers` (the
    service's shared reader) or, without, a reader of its own started now."""

    def follower(handle: Callable[[Message], None]) -> Follows:
        if followers is not None:
            return followers.follow(topic, handle, window_seconds=window_seconds)
        return TopicFollower(
            settings, topic, handle, window_seconds=window_seconds, clock=clock
        ).start()

    return follower
