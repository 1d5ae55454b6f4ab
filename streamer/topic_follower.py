"""A topic every replica reads in full, outside the consumer group, and knows how far.

Some state is shared by writing it to a topic that every replica reads whole: the dead
letters already written (so a next owner does not write one twice), later the silences.
A `TopicFollower` assigns itself every partition of such a topic (no group, no commits),
starts at the offsets of a recent window (`offsets_for_times`) or at the beginning, and
hands each record to a handler on its own thread.

What its readers need is not "have I read something" but "have I read *everything
written before now*". Invariant: `caught_up(since)` is true only once the follower has
handed over every record below high watermarks that were *asked for* at or after
`since` (by the same clock). A record acknowledged before `since` is below those
watermarks, so a reader that waits for `caught_up(since)` has seen it. The watermarks are
asked for on demand: a reader that finds the follower not caught up asks for a fresh look,
and the follower's thread answers within one round trip (it looks between polls, brief
ones for `EAGER_SECONDS` after its start and after each question). `FollowProgress` is
that rule with plain values (tested in tests/test_topic_follower.py); the thread is the
shell.

A topic that cannot be read (it does not exist, an ACL refuses it, no broker answers) is
reported, never raised: `failing_since` says since when nothing could be read, and the
follower tries again every few seconds. What to do meanwhile is the reader's choice.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

log = logging.getLogger(__name__)

__all__ = ["FollowProgress", "Follows", "TopicFollower", "read_to_now"]

PENDING_LOOKS = 16  # watermark looks waiting to be reached; older ones are covered by newer
RETRY_SECONDS = 2.0  # after a failure to read the topic
REQUEST_TIMEOUT = 5.0
QUEUED_KBYTES = 4096
# how long the thread waits for a record (one wakes it at once) before it looks at
# requests again, so also how late a fresh look may start (a dead letter's check that it
# was not written already waits up to this long more). Each wakeup costs ~0.1 ms of CPU,
# per follower (the service runs three: dead letters, silences, firing sources): at
# 0.25 s, ~1 ms of CPU a second in all while nothing happens (bench/waiting.py), at 1 s a
# quarter of that.
POLL_SECONDS = 1.0
# A reader that waits to be caught up waits for a look asked after its question, and the
# thread looks only between polls: so for a while after its start (when the service waits
# for it) and after each question, the thread polls this briefly, and a question is
# answered within about one round trip, not one `POLL_SECONDS` later (`streamer run` built
# to assigned: 1.1-1.2 s, waiting for two followers one after the other; 0.17 s). 20
# wakeups a second cost ~2 ms of CPU a second, for those seconds only.
EAGER_POLL_SECONDS = 0.05
EAGER_SECONDS = 3.0
ASKER_IDLE_SECONDS = 30.0  # the asking client is closed after this long without a look


class Follows(Protocol):
    """What a reader needs of a `TopicFollower` (tests pass a plain one)."""

    def caught_up(self, since: float) -> bool: ...
    def failing_since(self) -> float | None: ...
    def problem(self) -> str: ...
    def close(self) -> None: ...


def read_to_now(
    follower: Follows,
    clock: Callable[[], float],
    timeout: float,
    stop: threading.Event | None = None,
) -> bool:
    """Waits until `follower` has read every record written before now (True), or
    `timeout` s pass or `stop` is set (False)."""
    since = clock()
    deadline = since + timeout
    while not follower.caught_up(since):
        if clock() >= deadline or (stop is not None and stop.is_set()):
            return False
        time.sleep(0.05)
    return True


class FollowProgress:
    """How far a follower has read against the ends it was told about (plain values).

    `look(asked_at, highs)` records the high watermarks of a query sent at `asked_at`;
    `read(partition, next_offset)` records progress. Once every partition of a look has
    been read up to its watermark, everything acknowledged before `asked_at` has been
    read: `caught_up(since)` holds for every `since <= asked_at`. High watermarks only
    grow, so looks are reached in the order they were asked."""

    def __init__(self) -> None:
        self._next: dict[int, int] = {}
        self._looks: deque[tuple[float, dict[int, int]]] = deque(maxlen=PENDING_LOOKS)
        self.caught_up_at: float | None = None

    def start(self, partition: int, offset: int) -> None:
        """Reading `partition` begins at `offset` (nothing below it is of interest)."""
        self._next[partition] = offset
        self._settle()

    def next(self, partition: int) -> int:
        """The next offset to read of `partition` (-1: not started)."""
        return self._next.get(partition, -1)

    def look(self, asked_at: float, highs: Mapping[int, int]) -> None:
        self._looks.append((asked_at, dict(highs)))
        self._settle()

    def read(self, partition: int, next_offset: int) -> None:
        if next_offset > self._next.get(partition, -1):
            self._next[partition] = next_offset
            self._settle()

    def caught_up(self, since: float) -> bool:
        return self.caught_up_at is not None and self.caught_up_at >= since

    def behind(self) -> int:
        """Records between what was read and the latest watermarks known (for logs)."""
        if not self._looks:
            return 0
        _, highs = self._looks[-1]
        return sum(max(0, high - self._next.get(p, 0)) for p, high in highs.items())

    def _settle(self) -> None:
        while self._looks:
            asked_at, highs = self._looks[0]
            if any(self._next.get(p, -1) < high for p, high in highs.items()):
                return
            self._looks.popleft()
            self.caught_up_at = max(asked_at, self.caught_up_at or asked_at)


class TopicFollower:
    """Reads `topic` in full on a thread of its own and hands each record to `handle`
    (on that thread; `handle` must be quick and must not raise, though what it raises is
    logged and skipped). `window_seconds`: start at records this recent (by their
    timestamps), or from the beginning when None. `settings` are librdkafka's; the
    follower never joins a group nor commits."""

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
        self.topic, self.handle, self.window_seconds = topic, handle, window_seconds
        self.clock, self.wall_clock = clock, wall_clock
        self._settings = {
            "group.id": f"streamer-follower-{topic}",  # required by the client, never joined
            **settings,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,  # an end reached is progress too
            "auto.offset.reset": "earliest",  # a window start already deleted: the oldest
            # fetched ahead of the handler at most this much (librdkafka's default: 64 MiB)
            "queued.max.messages.kbytes": QUEUED_KBYTES,
        }
        self._lock = threading.Lock()
        self._progress = FollowProgress()
        self._wanted: float | None = None  # a reader waits for a look asked at or after this
        self._failing_since: float | None = None
        self._problem: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"follow-{topic}", daemon=True)
        self._asker: Consumer | None = None  # this thread's only (`_ask`)
        self._asked_at = 0.0
        self._eager_until = 0.0  # polls are brief until then (EAGER_SECONDS)

    # -- readers (any thread) --------------------------------------------------------------

    def start(self) -> TopicFollower:
        self._eager_until = self.clock() + EAGER_SECONDS  # it is waited for at start-up
        self._thread.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def caught_up(self, since: float) -> bool:
        """Has every record acknowledged before `since` been handled? When not yet, the
        follower looks at the topic's ends again (once per caller's `since`)."""
        with self._lock:
            if self._progress.caught_up(since):
                return True
            self._wanted = since if self._wanted is None else max(self._wanted, since)
            self._eager_until = max(self._eager_until, self.clock() + EAGER_SECONDS)
            return False

    def failing_since(self) -> float | None:
        """Since when the topic could not be read (None: it can, as far as is known)."""
        with self._lock:
            return self._failing_since

    def problem(self) -> str:
        """What stands in the way, in words (for a log line)."""
        with self._lock:
            if self._problem is not None:
                return self._problem
            return f"{self._progress.behind()} records left to read"

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            reader: Consumer | None = None
            try:
                reader = Consumer(self._settings)
                self._follow(reader)
            except Exception as e:  # never raised to anyone: reported, and tried again
                self._failed(f"{type(e).__name__}: {e}")
                self._stop.wait(RETRY_SECONDS)
            finally:
                for client in (reader, self._asker):
                    if client is not None:
                        with contextlib.suppress(Exception):
                            client.close()
                self._asker = None

    def _ask(self) -> Consumer:
        """The client that asks the broker questions (metadata, watermarks, offsets).

        Not the reader: a broker answers one connection's requests in order, so a question
        asked behind a waiting fetch would wait fetch.wait.max.ms too. Made when a look is
        needed and closed after `ASKER_IDLE_SECONDS` without one: looks are rare (the
        start, a reader's wait, a failure), and an idle client's threads still wake."""
        if self._asker is None:
            self._asker = Consumer(self._settings)
        self._asked_at = self.clock()
        return self._asker

    def _follow(self, reader: Consumer) -> None:
        assigned: set[int] = set()
        looked_at = -RETRY_SECONDS
        missing = False  # the topic did not exist at the last look
        while not self._stop.is_set():
            with self._lock:
                wanted, failing = self._wanted, self._failing_since is not None
                poll = EAGER_POLL_SECONDS if self.clock() < self._eager_until else POLL_SECONDS
            # a reader waits for a fresh look; or a failure may be over: prove it
            if (
                (not assigned and not missing)
                or (wanted is not None and wanted > looked_at)
                or ((failing or missing) and self.clock() - looked_at >= RETRY_SECONDS)
            ):
                asked = self.clock()
                # no such topic (yet): it holds nothing, so everything it held when asked
                # has been read (a first dead letter does not wait 30 s for it)
                missing = not self._assign_new(reader, self._ask(), assigned)
                # else the ends are asked for from now (making the asker and assigning may
                # take a while): a look asked later answers more questions
                looked_at = asked if missing else self.clock()
                self._look(self._ask(), assigned, looked_at)
            elif self._asker is not None and self.clock() - self._asked_at > ASKER_IDLE_SECONDS:
                asker, self._asker = self._asker, None
                asker.close()
            if missing:
                self._stop.wait(poll)
                continue
            # poll wakes at the first record (consume(n, timeout) would wait out its
            # timeout for a full batch); the rest already fetched is taken without waiting
            first = reader.poll(poll)
            if first is None:
                continue
            for message in [first, *reader.consume(500, 0)]:
                self._take(message)

    def _assign_new(self, reader: Consumer, asker: Consumer, assigned: set[int]) -> bool:
        """Assigns the partitions not assigned yet, from the window's start; False if the
        topic does not exist (the broker says so: not a failure to read it)."""
        metadata = asker.list_topics(self.topic, timeout=REQUEST_TIMEOUT)
        topic = metadata.topics.get(self.topic)
        missing = topic is not None and topic.error is not None
        if missing and topic.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART and not assigned:
            return False
        if topic is None or topic.error is not None:
            raise KafkaException(topic.error if topic is not None else "no metadata")
        new = sorted(set(topic.partitions) - assigned)
        if not new:
            return True
        starts = self._starts(asker, new)
        with self._lock:  # after a failure: go on from where reading stopped
            starts = {p: max(o, self._progress.next(p)) for p, o in starts.items()}
        reader.incremental_assign([TopicPartition(self.topic, p, o) for p, o in starts.items()])
        with self._lock:
            for partition, offset in starts.items():
                self._progress.start(partition, offset)
            self._settled()
        assigned.update(new)
        log.info("following %s from %s", self.topic, starts, extra={"topic": self.topic})
        return True

    def _starts(self, asker: Consumer, partitions: list[int]) -> dict[int, int]:
        if self.window_seconds is None:
            return {p: self._watermarks(asker, p)[0] for p in partitions}
        highs = {p: self._watermarks(asker, p)[1] for p in partitions}
        since_ms = int((self.wall_clock() - self.window_seconds) * 1000)
        found = asker.offsets_for_times(
            [TopicPartition(self.topic, p, since_ms) for p in partitions],
            timeout=REQUEST_TIMEOUT,
        )
        starts = {}
        for tp in found:
            if tp.error is not None:
                raise KafkaException(tp.error)
            # -1: nothing that recent; start at the end as it was before the question
            starts[tp.partition] = tp.offset if tp.offset >= 0 else highs[tp.partition]
        return starts

    def _look(self, asker: Consumer, assigned: set[int], asked_at: float) -> None:
        highs = {p: self._watermarks(asker, p)[1] for p in sorted(assigned)}
        with self._lock:
            self._progress.look(asked_at, highs)
            self._settled()

    def _watermarks(self, asker: Consumer, partition: int) -> tuple[int, int]:
        answer = asker.get_watermark_offsets(
            TopicPartition(self.topic, partition), timeout=REQUEST_TIMEOUT, cached=False
        )
        if answer is None:
            raise KafkaException(f"no answer for {self.topic}[{partition}]'s watermarks")
        low, high = answer
        return int(low), int(high)

    def _take(self, message: Message) -> None:
        partition, offset = message.partition(), message.offset()
        error = message.error()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF and partition is not None:
                if offset is not None:
                    with self._lock:
                        self._progress.read(partition, offset)
                        self._settled()
                return
            self._failed(error.str())
            return
        if partition is None or offset is None:
            return
        try:
            self.handle(message)  # before the progress: caught up means handled
        except Exception:
            log.exception("a record of %s[%d]@%d could not be read", self.topic, partition, offset)
        with self._lock:
            self._progress.read(partition, offset + 1)
            self._settled()

    def _settled(self) -> None:
        """A look reached proves the topic reads: no longer failing (lock held)."""
        if self._failing_since is not None and self._progress.caught_up(self._failing_since):
            log.info("%s reads again", self.topic, extra={"topic": self.topic})
            self._failing_since, self._problem = None, None

    def _failed(self, problem: str) -> None:
        with self._lock:
            if self._failing_since is None:
                self._failing_since = self.clock()
                log.warning(
                    "%s cannot be read (%s); trying again every %.0f s",
                    self.topic,
                    problem,
                    RETRY_SECONDS,
                    extra={"topic": self.topic},
                )
            self._problem = problem
