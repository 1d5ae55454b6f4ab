"""The silences every replica shares: a compacted topic, read in full by each of them.

The silences topic (`kafka.silence_topic`, default `streamer.silences`, compacted) holds
one record per silence, keyed by its id, valued with its latest version (JSON, Alertmanager's
API form; streamer/silences.py); an empty value (a tombstone) forgets it. `streamer silence
add | expire | import` write it; every replica follows it whole (`TopicFollower`,
`window_seconds=None`, outside the consumer group), so a silence written anywhere is read
by every replica within about a follower's poll (0.25 s) and applies to what each routes
next. The topic is the only state: a replica (re)started reads it from the beginning.

Fail open (README, "Silences"; docs/design.md, guarantee 11): an unreadable topic never
hides an alert that no silence read says to hide.

- At start-up, `wait_read(timeout)` waits (bounded) until every record written before the
  start is read; if that cannot be done in time (the topic is unreadable, the brokers slow),
  it warns and the replica routes on with the silences read so far (maybe none): alerts
  a silence would have muted are delivered. A topic that does not exist holds nothing:
  read at once.
- Later, while the topic cannot be read, the silences already read keep applying until
  they end; a silence added meanwhile applies once the topic reads again.

Expired silences are kept (and listed) for `EXPIRED_KEPT` after they end, then forgotten;
the writers tombstone the ones they find that old, and compaction removes them.

A silence with `expire_if_unmatched_for` makes a replica's book (`of`, with a writer) start
a thread that writes "matched at" marks and, when the group's marks say the silence
matched nothing for that long, its expiry (streamer/silence_expiry.py says why that is
safe group-wide). Only then does a replica write to the topic.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from streamer.config import Config
from streamer.kafka_clients import follower_settings
from streamer.silence_expiry import MARK_PREFIX, UnmatchedExpiry, mark_value, read_mark
from streamer.silence_index import Silences
from streamer.silences import Silence, SilenceError
from streamer.topic_follower import Followers, Follows, following, read_to_now

log = logging.getLogger(__name__)

__all__ = ["SilenceBook", "ensure_topic", "publish", "read_silences"]

STARTUP_WAIT_SECONDS = 10.0  # at start, the silences are waited for at most this long
TEND_SECONDS = 15.0  # how often marks and unmatched expiries are written, when any is due
Records = list[tuple[str, bytes | None]]  # (key, value; None: a tombstone)


class SilenceBook:
    """The silences read from the topic so far; `matching` is asked on the poll thread,
    the follower adds on its own."""

    def __init__(
        self,
        topic: str,
        follower: Callable[[Callable[[Message], None]], Follows],
        *,
        clock: Callable[[], float] = time.monotonic,
        write: Callable[[Records], None] | None = None,
        expiry: UnmatchedExpiry | None = None,
        tend_seconds: float = TEND_SECONDS,
    ) -> None:
        self.topic, self.clock = topic, clock
        self._lock = threading.Lock()
        self._silences = Silences()
        self._version = 0  # bumped by every record read: snapshots are cheap to reuse
        self._write = write  # None: this book never writes (the CLI's reads)
        self._expiry = expiry or UnmatchedExpiry()
        self._tend_seconds = tend_seconds
        self._stop = threading.Event()
        self._tending: threading.Thread | None = None
        self.follower = follower(self._read)

    @classmethod
    def following(
        cls,
        settings: Mapping[str, Any],
        topic: str,
        write: Callable[[Records], None] | None = None,
        followers: Followers | None = None,
    ) -> SilenceBook:
        """A book fed by a follower of `topic` started now: one of `followers`, else with
        a reader of its own (librdkafka `settings`)."""
        follower = following(settings, topic, window_seconds=None, followers=followers)
        return cls(topic, follower, write=write)

    @classmethod
    def of(cls, config: Config, followers: Followers | None = None) -> SilenceBook:
        """The configured silences topic, followed with the service's Kafka settings (by
        `followers`, the service's shared reader, when given)."""
        settings, topic = follower_settings(config), config.file.kafka.silence_topic
        return cls.following(settings, topic, writer(settings, topic), followers)

    def _read(self, message: Message) -> None:
        key, value = message.key(), message.value()
        silence_id = key.decode("utf-8", "replace") if key else ""
        if silence_id.startswith(MARK_PREFIX):
            self._read_mark(silence_id.removeprefix(MARK_PREFIX), value, message)
            return
        if value is None:  # a tombstone
            self.take(silence_id, None)
            return
        try:
            silence = Silence.from_json(json.loads(value), "silence")
            if silence.id != silence_id:  # compaction keeps it by key: a tombstone of its
                # id would never remove it, and it would come back at every restart
                raise SilenceError(f"its id {silence.id[:100]!r} is not its key")
        except (ValueError, SilenceError, RecursionError) as e:  # RecursionError: nested
            log.warning(
                "%s[%d]@%d is not a silence, skipped: %s",
                self.topic,
                message.partition() or 0,
                message.offset() or 0,
                str(e)[:500],  # a hostile record's text is not copied into the logs whole
                extra={"topic": self.topic},
            )
            return
        self.take(silence.id, silence)

    def _read_mark(self, silence_id: str, value: bytes | None, message: Message) -> None:
        try:
            at = None if value is None else read_mark(value)
        except (ValueError, KeyError, TypeError, RecursionError) as e:
            log.warning(
                "%s[%d]@%d is not a mark, skipped: %s",
                self.topic,
                message.partition() or 0,
                message.offset() or 0,
                str(e)[:500],
                extra={"topic": self.topic},
            )
            return
        with self._lock:
            self._expiry.read_mark(silence_id, at)

    def take(self, silence_id: str, silence: Silence | None) -> None:
        """The topic's latest word on `silence_id` (None: forgotten)."""
        with self._lock:
            if silence is None:
                self._silences.remove(silence_id)
                self._expiry.forget(silence_id)
            else:
                self._silences.put(silence)
                if silence.expire_if_unmatched_for is not None:
                    self._start_tending()
            self._version += 1

    def matching(self, labels: Mapping[str, Any], at: datetime) -> list[Silence]:
        """The active silences that mute `labels` (streamer.silences.labels_of) at `at`."""
        with self._lock:
            if not len(self._silences):
                return []
            found = self._silences.matching(labels, at)
            for s in found:
                if s.expire_if_unmatched_for is not None:
                    self._expiry.matched(s.id, at)
            return found

    def _start_tending(self) -> None:
        if self._write is None or self._tending is not None:
            return
        self._tending = threading.Thread(target=self._tend_loop, name="silence-expiry", daemon=True)
        self._tending.start()

    def _tend_loop(self) -> None:
        while not self._stop.wait(self._tend_seconds):
            try:
                self.tend(datetime.now(UTC))
            except Exception as e:  # the brokers: tried again at the next tick
                log.warning(
                    "the silences' marks or unmatched expiries could not be written to %s: "
                    "%s; tried again in %.0f s",
                    self.topic,
                    str(e)[:500],
                    self._tend_seconds,
                    extra={"topic": self.topic},
                )

    def tend(self, now: datetime) -> None:
        """Writes the "matched at" marks due, and, once the topic is read to `now`, the
        expiries of silences that matched nothing for their `expire_if_unmatched_for`."""
        if self._write is None:
            return
        with self._lock:
            records: Records = [
                (MARK_PREFIX + i, mark_value(at)) for i, at in self._expiry.marks_due()
            ]
        if self.read_to_now(5.0, self._stop):
            with self._lock:
                ended = self._expiry.expiries_due(list(self._silences), now)
            for s in ended:
                log.info(
                    "silence %s expires: it matched nothing for %s",
                    s.id,
                    s.expire_if_unmatched_for,
                    extra={"silence": s.id},
                )
                records.append((s.id, json.dumps(s.to_json(), ensure_ascii=False).encode()))
        if records:
            self._write(records)

    def silences(self, at: datetime | None = None) -> list[Silence]:
        """Every silence read, the long-expired ones forgotten first (`EXPIRED_KEPT`)."""
        with self._lock:
            self._silences.forget_old(at or datetime.now(UTC))
            return list(self._silences)

    def known(self) -> list[Silence]:
        """Every silence read, the long-expired ones too (the CLI's writers tombstone them)."""
        with self._lock:
            return list(self._silences)

    def active(self, at: datetime) -> list[Silence]:
        with self._lock:
            return self._silences.active(at)

    def read_to_now(self, timeout: float, stop: threading.Event | None = None) -> bool:
        """Waits until every silence written before now is read (True), or `timeout` s
        pass or `stop` is set (False)."""
        return read_to_now(self.follower, self.clock, timeout, stop)

    def wait_read(self, timeout: float, stop: threading.Event | None = None) -> bool:
        """`read_to_now`, and when it did not (unless `stop` ended the wait), a warning that
        the replica goes on with the silences read so far (fail open)."""
        if self.read_to_now(timeout, stop):
            return True
        if stop is not None and stop.is_set():
            return False  # stopping: it was not waited for the whole bound
        log.warning(
            "the silences in %s were not all read within %.0f s (%s): routing goes on with "
            "the %d read so far, so alerts a silence would mute may be delivered; silences "
            "apply as soon as the topic is read",
            self.topic,
            timeout,
            self.follower.problem(),
            len(self.silences()),
            extra={"topic": self.topic},
        )
        return False

    def readable(self) -> bool:
        return self.follower.failing_since() is None

    def close(self) -> None:
        self._stop.set()
        if self._tending is not None:
            self._tending.join(10)
        self.follower.close()


def ensure_topic(settings: Mapping[str, Any], topic: str, timeout: float = 30.0) -> bool:
    """Creates the compacted silences topic if it does not exist (True: created)."""
    admin = AdminClient(_not_consumer(settings))
    # all topics: a question about one topic may create it (auto.create.topics.enable), and
    # not compacted
    found = admin.list_topics(timeout=timeout).topics.get(topic)
    if found is not None and found.error is None:
        return False
    new = NewTopic(topic, num_partitions=1, config={"cleanup.policy": "compact"})
    try:
        admin.create_topics([new], operation_timeout=timeout)[topic].result(timeout)
    except Exception as e:
        error = e.args[0] if e.args else None
        if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
            return False
        raise
    return True


def publish(
    settings: Mapping[str, Any],
    topic: str,
    silences: Iterable[Silence],
    forget: Iterable[str] = (),
    timeout: float = 30.0,
) -> None:
    """Writes `silences` (their latest versions) and tombstones for the ids in `forget`,
    acknowledged by the brokers (acks=all) before it returns; raises on a failure."""
    producer = Producer({**_not_consumer(settings), "acks": "all", "enable.idempotence": True})
    failures: list[str] = []

    def acknowledged(error: KafkaError | None, message: Message) -> None:
        if error is not None:
            failures.append(f"{message.key()!r}: {error.str()}")

    for silence in silences:
        value = json.dumps(silence.to_json(), ensure_ascii=False).encode()
        producer.produce(topic, key=silence.id.encode(), value=value, on_delivery=acknowledged)
    for silence_id in forget:
        producer.produce(topic, key=silence_id.encode(), value=None, on_delivery=acknowledged)
    left = producer.flush(timeout)
    if left:
        failures.append(f"{left} records not acknowledged within {timeout:.0f} s")
    if failures:
        raise SilenceError(f"writing to {topic} failed: {'; '.join(failures)}")


def writer(settings: Mapping[str, Any], topic: str) -> Callable[[Records], None]:
    """Writes records to `topic`, acknowledged (acks=all) before it returns; one producer,
    made at the first write."""
    made: list[Producer] = []

    def write(records: Records) -> None:
        if not made:
            made.append(Producer({**_not_consumer(settings), "acks": "all"}))
        failures: list[str] = []

        def acknowledged(error: KafkaError | None, message: Message) -> None:
            if error is not None:
                failures.append(error.str())

        for key, value in records:
            made[0].produce(topic, key=key.encode(), value=value, on_delivery=acknowledged)
        if made[0].flush(10.0) or failures:
            raise SilenceError(f"writing to {topic} failed: {'; '.join(failures) or 'timed out'}")

    return write


def read_silences(settings: Mapping[str, Any], topic: str, timeout: float = 30.0) -> SilenceBook:
    """Every silence in `topic`, read to its end (a book whose follower is closed); raises
    SilenceError when it cannot be read within `timeout`."""
    book = SilenceBook.following(settings, topic)
    try:
        if not book.read_to_now(timeout):
            problem = book.follower.problem()
            raise SilenceError(f"{topic} could not be read within {timeout:.0f} s: {problem}")
    finally:
        book.close()
    return book


def _not_consumer(settings: Mapping[str, Any]) -> dict[str, Any]:
    """`settings` without the consumer's own (librdkafka warns of them otherwise)."""
    return {k: v for k, v in settings.items() if k != "group.id"}
