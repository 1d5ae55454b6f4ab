"""A topic followed in full: caught up means every record acknowledged before is handled."""

from __future__ import annotations

import threading
import time
import uuid
from types import SimpleNamespace

import pytest
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer import topic_follower
from streamer.topic_follower import PENDING_LOOKS, Followers, FollowProgress, TopicFollower

# -- the rule, with plain values -----------------------------------------------------------


def test_caught_up_once_every_partition_reached_a_look_asked_after_the_question() -> None:
    progress = FollowProgress()
    progress.start(0, 10)
    progress.start(1, 0)
    assert not progress.caught_up(since=100.0)  # nothing looked at yet
    progress.look(asked_at=100.0, highs={0: 12, 1: 0})
    assert not progress.caught_up(100.0) and progress.behind() == 2
    progress.read(0, 11)
    assert not progress.caught_up(100.0)
    progress.read(0, 12)  # (an end reported by the broker counts the same as a record)
    assert progress.caught_up(100.0) and progress.caught_up(99.0)
    assert not progress.caught_up(100.5)  # a question asked later needs a later look


def test_looks_are_reached_in_order_and_an_older_question_is_answered_by_a_newer_look() -> None:
    progress = FollowProgress()
    progress.start(0, 0)
    progress.look(asked_at=1.0, highs={0: 5})
    progress.look(asked_at=2.0, highs={0: 8})
    progress.read(0, 5)
    assert progress.caught_up(1.0) and not progress.caught_up(2.0)
    progress.read(0, 9)
    assert progress.caught_up(2.0)
    progress.read(0, 3)  # never goes back
    assert progress.next(0) == 9


def test_a_partition_not_started_is_not_read() -> None:
    progress = FollowProgress()
    progress.start(0, 0)
    progress.look(asked_at=1.0, highs={0: 0, 1: 0})  # partition 1 added to the topic
    assert not progress.caught_up(1.0)
    progress.start(1, 0)
    assert progress.caught_up(1.0)


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("look"), st.lists(st.integers(0, 5), min_size=2, max_size=2)),
            st.tuples(st.just("read"), st.tuples(st.integers(0, 1), st.integers(0, 30))),
        ),
        max_size=40,
    )
)
def test_caught_up_exactly_when_a_look_at_or_after_the_question_was_read_past(steps) -> None:
    """Against a model that keeps every look: never caught up too early (no letter missed),
    and, while fewer looks wait than are kept, never later than the model either."""
    progress = FollowProgress()
    progress.start(0, 0)
    progress.start(1, 0)
    highs, read, looks, now = [0, 0], [0, 0], [], 0.0
    for kind, value in steps:
        now += 1.0
        if kind == "look":  # the topic grew by these counts; its ends looked at now
            highs = [h + grow for h, grow in zip(highs, value, strict=True)]
            looks.append((now, list(highs)))
            progress.look(now, dict(enumerate(highs)))
        else:
            partition, offset = value
            read[partition] = max(read[partition], min(offset, highs[partition]))
            progress.read(partition, read[partition])
        reached = [at for at, h in looks if all(r >= x for r, x in zip(read, h, strict=True))]
        model = max(reached, default=None)
        if model is None:
            assert progress.caught_up_at is None
        else:
            assert progress.caught_up_at is not None and progress.caught_up_at <= model
            if len(looks) <= PENDING_LOOKS:
                assert progress.caught_up_at == model


# -- the thread, with a stand-in for the client ----------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class StandInClient:
    """librdkafka's consumer as the follower uses it, for a topic of `partitions` that
    hold nothing (or no topic at all). `poll` waits, as the real one does while no record
    comes, until the test lets it return (`ticks`); it then moves the clock on by the
    timeout the follower asked for."""

    clock: Clock
    polled: threading.Semaphore  # released each time the thread waits in a poll
    ticks: threading.Semaphore
    partitions: int | None = 1  # None: no such topic
    stopping = False

    made = 0  # clients made (each one's librdkafka threads wake while idle)

    def __init__(self, settings) -> None:
        self.settings = settings
        type(self).made += 1

    def list_topics(self, topic: str, timeout: float):
        missing = KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART)
        metadata = SimpleNamespace(
            error=None if self.partitions is not None else missing,
            partitions={p: None for p in range(self.partitions or 0)},
        )
        return SimpleNamespace(topics={topic: metadata})

    def get_watermark_offsets(self, tp, timeout: float, cached: bool):
        return 0, 0  # empty

    def incremental_assign(self, partitions) -> None:
        pass

    def poll(self, timeout: float):
        type(self).waited(timeout)

    @classmethod
    def waited(cls, timeout: float) -> None:
        cls.polled.release()
        while not cls.ticks.acquire(timeout=0.05):
            if cls.stopping:
                return
        cls.clock.now += timeout

    def consume(self, n: int, timeout: float):
        return []

    def close(self) -> None:
        pass


@pytest.fixture
def stand_in(monkeypatch):
    class Client(StandInClient):
        clock = Clock()
        polled = threading.Semaphore(0)
        ticks = threading.Semaphore(0)

    monkeypatch.setattr(topic_follower, "Consumer", Client)
    yield Client
    Client.stopping = True


class StandInStop(threading.Event):
    """The follower's stop, whose waits (between looks at a topic that does not exist) are
    the stand-in's polls."""

    def __init__(self, client) -> None:
        super().__init__()
        self.client = client

    def wait(self, timeout: float | None = None) -> bool:
        if not self.is_set():
            self.client.waited(timeout)
        return self.is_set()


def answered_at(stand_in, follower: TopicFollower, since: float) -> float:
    """The clock when `follower` is caught up with `since`: polls end one at a time."""
    for _ in range(100):
        if follower.caught_up(since):
            return stand_in.clock.now
        stand_in.ticks.release()
        assert stand_in.polled.acquire(timeout=10), "the follower's thread stopped polling"
    raise AssertionError("never caught up")


@pytest.mark.parametrize("partitions", [1, 3, None], ids=["empty", "empty-3", "missing"])
def test_an_empty_or_missing_topic_is_caught_up_within_a_brief_poll_of_the_question(
    stand_in, partitions
) -> None:
    """The start-up wait for the silences and the firing sources: the follower's first
    look was asked before the service's question (the follower started first), so the
    question waits for the next look, and the thread looks only between polls. With 1 s
    polls the question waited up to 1 s per topic; it must wait about one round trip."""
    stand_in.partitions = partitions
    follower = TopicFollower({}, "t", lambda m: None, window_seconds=None, clock=stand_in.clock)
    follower.own._stop = StandInStop(stand_in)
    follower.start()
    try:
        assert stand_in.polled.acquire(timeout=10)  # first look done, waiting for a record
        assert follower.caught_up(stand_in.clock.now)  # the first look answers up to it
        since = stand_in.clock.now + 0.001  # the service's question, just after
        assert answered_at(stand_in, follower, since) - since <= 0.1
    finally:
        stand_in.stopping = True
        follower.close()


def test_a_question_long_after_the_start_is_answered_briefly_after_the_next_poll(
    stand_in,
) -> None:
    """Past the start-up, polls are long (an idle follower wakes rarely): a question then
    waits for the poll under way, and the thread polls briefly for the next ones."""
    follower = TopicFollower({}, "t", lambda m: None, window_seconds=None, clock=stand_in.clock)
    follower.start()
    try:
        assert stand_in.polled.acquire(timeout=10)
        stand_in.clock.now += 60.0  # long idle
        for _ in range(2):  # a long poll under way
            stand_in.ticks.release()
            assert stand_in.polled.acquire(timeout=10)
        since = stand_in.clock.now
        assert answered_at(stand_in, follower, since) - since <= 1.0 + 0.01
        since = stand_in.clock.now + 0.001
        assert answered_at(stand_in, follower, since) - since <= 0.1
    finally:
        stand_in.stopping = True
        follower.close()


# -- with the real broker ------------------------------------------------------------------


def new_topic(infrastructure, partitions: int = 2) -> str:
    name = f"followed-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": infrastructure.bootstrap_servers})
    admin.create_topics([NewTopic(name, num_partitions=partitions)])[name].result(30)
    return name


def wait_until(condition, what: str, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"not within {limit:.0f} s: {what}"
        time.sleep(0.02)


class Handled:
    def __init__(self) -> None:
        self.values: list[bytes] = []
        self.lock = threading.Lock()

    def __call__(self, message: Message) -> None:
        with self.lock:
            self.values.append(message.value())


@pytest.mark.integration
def test_every_record_acknowledged_before_a_question_is_handled_once_caught_up(
    infrastructure,
) -> None:
    topic = new_topic(infrastructure)
    producer = Producer({"bootstrap.servers": infrastructure.bootstrap_servers})
    for i in range(20):
        producer.produce(topic, value=b"before-%d" % i, partition=i % 2)
    assert producer.flush(30) == 0
    handled = Handled()
    settings = {"bootstrap.servers": infrastructure.bootstrap_servers}
    started = time.monotonic()
    follower = TopicFollower(settings, topic, handled, window_seconds=600).start()
    try:
        wait_until(lambda: follower.caught_up(started), "caught up at start")
        assert sorted(handled.values) == sorted(b"before-%d" % i for i in range(20))
        for i in range(5):
            producer.produce(topic, value=b"after-%d" % i, partition=i % 2)
        assert producer.flush(30) == 0
        asked = time.monotonic()  # everything above was acknowledged before this
        wait_until(lambda: follower.caught_up(asked), "caught up with the new records")
        assert {b"after-%d" % i for i in range(5)} <= set(handled.values)
        assert follower.failing_since() is None
    finally:
        follower.close()


@pytest.mark.integration
def test_a_window_skips_older_records(infrastructure) -> None:
    topic = new_topic(infrastructure, partitions=1)
    producer = Producer({"bootstrap.servers": infrastructure.bootstrap_servers})
    old_ms = int((time.time() - 3600) * 1000)
    producer.produce(topic, value=b"an hour ago", timestamp=old_ms)
    producer.produce(topic, value=b"now")
    assert producer.flush(30) == 0
    handled = Handled()
    settings = {"bootstrap.servers": infrastructure.bootstrap_servers}
    follower = TopicFollower(settings, topic, handled, window_seconds=900).start()
    try:
        asked = time.monotonic()
        wait_until(lambda: follower.caught_up(asked), "caught up")
        assert handled.values == [b"now"]
    finally:
        follower.close()


@pytest.mark.integration
def test_a_topic_that_does_not_exist_holds_nothing_and_is_followed_once_created(
    infrastructure,
) -> None:
    """No such topic (a dead-letter topic before its first letter): it holds nothing, so
    the follower is caught up with it at once (a first letter does not wait), and follows
    it once it exists."""
    topic = f"not-yet-{uuid.uuid4().hex[:8]}"
    handled = Handled()
    settings = {"bootstrap.servers": infrastructure.bootstrap_servers}
    follower = TopicFollower(settings, topic, handled, window_seconds=900).start()
    try:
        before = time.monotonic()
        wait_until(lambda: follower.caught_up(before), "caught up with a topic that is not")
        assert follower.failing_since() is None
        admin = AdminClient({"bootstrap.servers": infrastructure.bootstrap_servers})
        admin.create_topics([NewTopic(topic, num_partitions=1)])[topic].result(30)
        producer = Producer({"bootstrap.servers": infrastructure.bootstrap_servers})
        producer.produce(topic, value=b"first")
        assert producer.flush(30) == 0
        asked = time.monotonic()
        wait_until(lambda: follower.caught_up(asked), "caught up once created")
        assert handled.values == [b"first"] and follower.failing_since() is None
    finally:
        follower.close()


@pytest.mark.parametrize("partitions", [1, None], ids=["empty", "missing"])
def test_several_topics_are_read_by_one_client_while_nothing_is_asked(stand_in, partitions) -> None:
    """The service follows three topics (dead letters, silences, firing sources); each
    librdkafka client's threads wake several times a second while nothing happens, so
    they share one reader, which also asks the broker its questions while it has nothing
    assigned (a missing topic's look every few seconds included)."""
    stand_in.partitions = partitions
    followers = Followers({}, clock=stand_in.clock)
    followers._stop = StandInStop(stand_in)
    topics = [followers.follow(t, lambda m: None, window_seconds=None) for t in "abc"]
    try:
        for _ in range(10):  # the first looks, then 9 polls (RETRY_SECONDS looks between)
            assert stand_in.polled.acquire(timeout=10)
            stand_in.ticks.release()
        since = stand_in.clock.now
        assert all(answered_at(stand_in, t, since) - since <= 1.0 + 0.01 for t in topics)
        assert stand_in.made == (1 if partitions is None else 2)  # and an asker, while reading
    finally:
        stand_in.stopping = True
        followers.close()


@pytest.mark.integration
def test_topics_followed_together_are_each_read_in_full_and_left_alone(infrastructure) -> None:
    """One reader, three topics: each handler gets its own topic's records; a topic that
    does not exist yet is caught up at once and read once created; a topic left is no
    longer handed over while the others still are."""
    present, later, left = (
        new_topic(infrastructure),
        f"later-{uuid.uuid4().hex[:8]}",
        new_topic(infrastructure),
    )
    producer = Producer({"bootstrap.servers": infrastructure.bootstrap_servers})
    for topic in (present, left):
        for i in range(4):
            producer.produce(topic, value=f"{topic}-{i}".encode(), partition=i % 2)
    assert producer.flush(30) == 0
    handled = {t: Handled() for t in (present, later, left)}
    followers = Followers({"bootstrap.servers": infrastructure.bootstrap_servers})
    followed = {t: followers.follow(t, handled[t], window_seconds=None) for t in handled}
    try:
        started = time.monotonic()
        wait_until(lambda: all(f.caught_up(started) for f in followed.values()), "caught up")
        for topic in (present, left):
            assert sorted(handled[topic].values) == [f"{topic}-{i}".encode() for i in range(4)]
        assert handled[later].values == []
        followed[left].close()
        admin = AdminClient({"bootstrap.servers": infrastructure.bootstrap_servers})
        admin.create_topics([NewTopic(later, num_partitions=1)])[later].result(30)
        for topic in (present, later, left):
            producer.produce(topic, value=b"after")
        assert producer.flush(30) == 0
        asked = time.monotonic()
        wait_until(lambda: followed[present].caught_up(asked), "caught up with the present topic")
        wait_until(lambda: followed[later].caught_up(asked), "caught up with the later topic")
        assert handled[present].values[-1] == b"after" and handled[later].values == [b"after"]
        assert b"after" not in handled[left].values
        assert all(f.failing_since() is None for t, f in followed.items() if t != left)
    finally:
        followers.close()


def looks_over(stand_in, followers, seconds: float) -> None:
    """Lets the followers' thread run `seconds` of the stand-in's clock, poll by poll."""
    end = stand_in.clock.now + seconds
    while stand_in.clock.now < end:
        stand_in.ticks.release()
        assert stand_in.polled.acquire(timeout=10), "the followers' thread stopped polling"


@pytest.fixture
def asked(stand_in):
    """The topics each metadata question asked about; `missing` topics do not exist,
    `refusing` ones fail (as a broker that times out would)."""
    questions: list[str] = []
    stand_in.missing, stand_in.refusing = set(), set()
    real = stand_in.list_topics

    def list_topics(self, topic: str, timeout: float):
        questions.append(topic)
        if topic in stand_in.refusing:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT))
        if topic in stand_in.missing:
            missing = KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART)
            return SimpleNamespace(topics={topic: SimpleNamespace(error=missing, partitions={})})
        return real(self, topic, timeout)

    stand_in.list_topics = list_topics
    return questions


def test_a_missing_topic_no_one_waits_for_is_looked_for_rarely_and_keeps_no_client(
    stand_in, asked
) -> None:
    """The firing topic does not exist where no inhibit rule is used, while the others are
    read: looking for it every 2 s kept a second client awake for good."""
    stand_in.missing = {"missing"}
    followers = Followers({}, clock=stand_in.clock)
    followers._stop = StandInStop(stand_in)
    for topic in ("read", "missing"):
        followers.follow(topic, lambda m: None, window_seconds=None)
    try:
        assert stand_in.polled.acquire(timeout=10)
        looks_over(stand_in, followers, 35.0)  # the start's asking client idles out
        made, before = stand_in.made, len(asked)
        looks_over(stand_in, followers, 60.0)
        assert 5 <= asked[before:].count("missing") <= 7  # every 10 s, not every 2 s (30)
        assert stand_in.made == made and followers._asker is None  # the reader asked
        followed = followers._topics["missing"]
        since = stand_in.clock.now + 0.001
        assert answered_at(stand_in, followed, since) - since <= 1.0 + 0.01  # asked: at once
    finally:
        stand_in.stopping = True
        followers.close()


def test_a_topic_that_fails_is_tried_again_less_often_the_longer_it_fails(stand_in, asked) -> None:
    """A topic whose questions time out blocks the one thread for each of them: tried every
    2 s, it held the other topics' records back most of the time."""
    stand_in.refusing = {"failing"}
    followers = Followers({}, clock=stand_in.clock)
    followers._stop = StandInStop(stand_in)
    failing = followers.follow("failing", lambda m: None, window_seconds=None)
    try:
        assert stand_in.polled.acquire(timeout=10)
        looks_over(stand_in, followers, 60.0)
        assert 5 <= asked.count("failing") <= 7  # 2, 4, 8, 16, 16 s apart (not 30 looks)
        assert failing.failing_since() is not None
        stand_in.refusing = set()
        looks_over(stand_in, followers, 17.0)
        assert failing.failing_since() is None  # read again within the longest wait
    finally:
        stand_in.stopping = True
        followers.close()
