"""Several topics read by one `Followers`: what one topic does (a question answered while
its partitions grow, a follower left and followed again, an error) never makes another
topic, or a later follower of the same topic, look read when it was not."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import SimpleNamespace

import pytest
from confluent_kafka import KafkaError, KafkaException

from streamer import topic_follower
from streamer.topic_follower import Followers


class Record:
    """What the followers use of a `confluent_kafka.Message`."""

    def __init__(self, topic, partition, offset, value=None, error=None) -> None:
        self._at = (topic, partition, offset)
        self._value, self._error = value, error

    def topic(self):
        return self._at[0]

    def partition(self):
        return self._at[1]

    def offset(self):
        return self._at[2]

    def value(self):
        return self._value

    def error(self):
        return self._error


class Broker:
    """Topics in memory, and the consumers the followers make of them: `poll` hands the
    assigned partitions' records in order, then each partition's end once."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.topics: dict[str, list[list[bytes]]] = {}
        self.errors: list[Record] = []  # handed by the next poll
        self.during_metadata: Callable[[str], None] = lambda topic: None
        self.refused: list[str] = []  # what a consumer refused to do
        self.polling = threading.Event()  # set by a poll under way, once `hold` is
        self.hold = False  # the next poll waits for `fail`...
        self.fail = threading.Event()  # ...then raises (the reader itself fails)

    def consumer(self, settings) -> Broker.Consumer:
        return Broker.Consumer(self)

    class Consumer:
        def __init__(self, broker: Broker) -> None:
            self.broker, self.positions, self.ended = broker, {}, set()

        def list_topics(self, topic: str, timeout: float):
            with self.broker.lock:
                partitions = self.broker.topics.get(topic)
                count = None if partitions is None else len(partitions)
            self.broker.during_metadata(topic)  # the answer is as old as the question
            missing = KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART)
            metadata = SimpleNamespace(
                error=None if count is not None else missing,
                partitions=dict.fromkeys(range(count or 0)),
            )
            return SimpleNamespace(topics={topic: metadata})

        def get_watermark_offsets(self, tp, timeout: float, cached: bool):
            with self.broker.lock:
                return 0, len(self.broker.topics[tp.topic][tp.partition])

        def incremental_assign(self, partitions) -> None:
            with self.broker.lock:
                for tp in partitions:
                    self.positions[tp.topic, tp.partition] = tp.offset
                    self.ended.discard((tp.topic, tp.partition))

        def incremental_unassign(self, partitions) -> None:
            with self.broker.lock:
                for tp in partitions:  # (librdkafka's: never assigned is an error)
                    if self.positions.pop((tp.topic, tp.partition), None) is None:
                        self.broker.refused.append(f"unassign {tp.topic}[{tp.partition}]")
                        raise KafkaException(KafkaError(KafkaError._INVALID_ARG))

        def _next(self) -> Record | None:
            with self.broker.lock:
                if self.broker.errors:
                    return self.broker.errors.pop(0)
                for (topic, partition), at in sorted(self.positions.items()):
                    records = self.broker.topics[topic][partition]
                    if at < len(records):
                        self.positions[topic, partition] = at + 1
                        return Record(topic, partition, at, records[at])
                    if (topic, partition) not in self.ended:
                        self.ended.add((topic, partition))
                        end = KafkaError(KafkaError._PARTITION_EOF)
                        return Record(topic, partition, at, error=end)
            return None

        def poll(self, timeout: float) -> Record | None:
            if self.broker.hold:
                self.broker.hold = False
                self.broker.polling.set()
                self.broker.fail.wait(10)
                raise KafkaException(KafkaError(KafkaError._FATAL))
            deadline = time.monotonic() + timeout
            while (record := self._next()) is None and time.monotonic() < deadline:
                time.sleep(0.001)
            return record

        def consume(self, n: int, timeout: float) -> list[Record]:
            batch = []
            while len(batch) < n and (record := self._next()) is not None:
                batch.append(record)
            return batch

        def close(self) -> None:
            pass


@pytest.fixture
def broker(monkeypatch):
    broker = Broker()
    monkeypatch.setattr(topic_follower, "Consumer", broker.consumer)
    return broker


def eventually(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, f"not within 10 s: {what}"
        time.sleep(0.005)


def test_a_look_is_as_old_as_its_first_question_not_its_answer(broker) -> None:
    """A partition added to a topic, and written to, while its metadata is asked: the
    look's partitions do not have it, so the look proves nothing after the question
    went out. Dated at its answer, the look said a record acknowledged before was read."""
    broker.topics["t"] = [[]]
    acknowledged: list[float] = []

    def grown_meanwhile(topic: str) -> None:
        if not acknowledged:
            with broker.lock:
                broker.topics["t"].append([b"in a new partition"])
            acknowledged.append(time.monotonic())
            time.sleep(0.05)  # the answer comes back after

    broker.during_metadata = grown_meanwhile
    handled: list[bytes] = []
    followers = Followers({})
    followed = followers.follow("t", lambda m: handled.append(m.value()), window_seconds=None)
    try:
        eventually(lambda: bool(acknowledged), "the first look")
        since = acknowledged[0] + 1e-6
        eventually(lambda: followed.caught_up(since), "caught up")
        assert handled == [b"in a new partition"]
    finally:
        followers.close()


def test_a_topic_followed_again_is_handed_every_record_from_its_own_start(broker) -> None:
    """A follower left while its records are handed over, and its topic followed again
    at once: the rest of the batch fetched for the one that left is not the new one's
    (handed to it, it moved the new follower's start past the records before)."""
    broker.topics["t"] = [list(range(100))]
    followers = Followers({})
    again: list[int] = []
    followed: dict[str, topic_follower.FollowedTopic] = {}

    def first(message) -> None:
        if message.value() == 50 and "again" not in followed:  # (another thread, at once)
            followed["first"].close()
            followed["again"] = followers.follow(
                "t", lambda m: again.append(m.value()), window_seconds=None
            )

    followed["first"] = followers.follow("t", first, window_seconds=None)
    try:
        eventually(lambda: "again" in followed, "followed again")
        since = time.monotonic()
        eventually(lambda: followed["again"].caught_up(since), "caught up")
        assert sorted(set(again)) == list(range(100))
    finally:
        followers.close()


def test_an_error_of_a_topic_left_is_no_other_topics_failure(broker) -> None:
    """Only an error of the client itself (no topic) is every topic's."""
    broker.topics.update({"left": [[]], "kept": [[]]})
    followers = Followers({})
    left = followers.follow("left", lambda m: None, window_seconds=None)
    handled: list[bytes] = []
    kept = followers.follow("kept", lambda m: handled.append(m.value()), window_seconds=None)
    try:
        since = time.monotonic()
        eventually(lambda: left.caught_up(since) and kept.caught_up(since), "caught up")
        left.close()
        refused = KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)
        with broker.lock:  # the error first, then a record: no look clears a failure
            broker.errors.append(Record("left", 0, -1, error=refused))
            broker.topics["kept"][0].append(b"after")
        eventually(lambda: handled == [b"after"], "the record after the error")
        assert kept.failing_since() is None
        with broker.lock:
            broker.errors.append(Record(None, None, None, error=KafkaError(KafkaError._TRANSPORT)))
        eventually(lambda: kept.failing_since() is not None, "a client error is every topic's")
    finally:
        followers.close()


def test_closed_followers_refuse_a_topic_they_would_never_read(broker) -> None:
    """Else its readers wait: never caught up, and never failing either."""
    broker.topics["t"] = [[]]
    followers = Followers({})
    followers.follow("t", lambda m: None, window_seconds=None)
    followers.close()
    with pytest.raises(RuntimeError, match="closed"):
        followers.follow("u", lambda m: None, window_seconds=None)


def test_a_topic_whose_ends_cannot_be_asked_is_failing_alone(broker) -> None:
    broker.topics.update({"good": [[]], "bad": [[]]})

    def refused(topic: str) -> None:
        if topic == "bad":
            raise KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))

    broker.during_metadata = refused
    followers = Followers({})
    good = followers.follow("good", lambda m: None, window_seconds=None)
    bad = followers.follow("bad", lambda m: None, window_seconds=None)
    try:
        eventually(lambda: bad.failing_since() is not None, "bad failing")
        with broker.lock:
            broker.topics["good"][0].append(b"record")
        since = time.monotonic()
        eventually(lambda: good.caught_up(since), "good read")
        assert good.failing_since() is None and "AUTHORIZATION" in bad.problem()
    finally:
        followers.close()


def test_a_topic_left_just_before_the_reader_fails_is_not_unassigned_from_the_next_one(
    broker, monkeypatch
) -> None:
    """The next reader has nothing assigned: unassigning the left topic from it raised,
    and every topic was failing again, a reader later."""
    monkeypatch.setattr(topic_follower, "RETRY_SECONDS", 0.01)
    broker.topics.update({"left": [[]], "kept": [[]]})
    followers = Followers({})
    left = followers.follow("left", lambda m: None, window_seconds=None)
    kept = followers.follow("kept", lambda m: None, window_seconds=None)
    try:
        since = time.monotonic()
        eventually(lambda: left.caught_up(since) and kept.caught_up(since), "caught up")
        broker.hold = True
        assert broker.polling.wait(10)
        left.close()  # while the reader polls, and then fails
        broker.fail.set()
        since = time.monotonic()
        eventually(lambda: kept.caught_up(since), "read by a new reader")
        assert broker.refused == [] and kept.failing_since() is None
    finally:
        followers.close()


def test_a_topic_deleted_and_created_again_is_read_again_from_its_start(broker) -> None:
    """The new log ends below what was read of the old one: its records are not read yet
    (librdkafka finds its position out of range, later), so it is not caught up."""
    broker.topics["t"] = [[b"old %d" % i for i in range(20)]]
    handled: list[bytes] = []
    followers = Followers({})
    followed = followers.follow("t", lambda m: handled.append(m.value()), window_seconds=None)
    try:
        since = time.monotonic()
        eventually(lambda: followed.caught_up(since), "caught up with the old log")
        with broker.lock:
            broker.topics["t"] = [[b"new 0", b"new 1"]]
        since = time.monotonic()
        eventually(lambda: followed.caught_up(since), "caught up with the new log")
        assert handled[20:] == [b"new 0", b"new 1"] and followed.failing_since() is None
    finally:
        followers.close()
