"""One dead letter per source offset, across a kill (issue 22, item 5), with the real broker.

A letter is terminal once the broker acknowledged it; its offset is committed a moment
later. A replica that dies in between leaves the offset to the next owner, which reads the
message again: it must find the letter already written, not write a second one.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Producer

from streamer.config import load_config
from streamer.dead_letter_index import DeadLetterIndex
from streamer.dead_letter_writer import DeadLetterWriter
from streamer.dead_letters import DeadLetter, SourceMessage
from streamer.engine import Engine
from streamer.topic_follower import TopicFollower
from tests.pipeline import Pipeline, ServiceProcess, check_event

pytestmark = pytest.mark.integration


def writer_of(pipeline: Pipeline) -> DeadLetterWriter:
    """A replica's dead-letter writer, as the engine makes it (its own producer and
    follower of the dead-letter topic)."""
    config = load_config(pipeline.config_path)
    return DeadLetterWriter.of(
        Producer({"bootstrap.servers": pipeline.infra.bootstrap_servers}), config
    )


def write_until_terminal(writer: DeadLetterWriter, letter: DeadLetter, limit: float = 60) -> None:
    """Writes `letter` as the engine does: again when told to, until it is terminal."""
    done = threading.Event()
    again_at: list[float] = []

    def write() -> None:
        writer.write(letter, done.set, lambda s: again_at.append(time.monotonic() + s), {})

    write()
    deadline = time.monotonic() + limit
    while not done.is_set():
        assert time.monotonic() < deadline, "the letter never became terminal"
        writer.producer.poll(0.01)
        if again_at and again_at[0] <= time.monotonic():
            again_at.pop(0)
            write()


def poison(offset: int, topic: str = "events-x") -> DeadLetter:
    message = SourceMessage(topic, 0, offset, b"poison", b"not json", ())
    return DeadLetter(message, "decode:invalid-json", "not json")


def test_a_letter_written_by_one_replica_is_not_written_again_by_the_next(
    infrastructure, fake, tmp_path, monkeypatch
) -> None:
    pipeline = Pipeline(infrastructure, fake, tmp_path, monkeypatch=monkeypatch)
    first, next_owner = writer_of(pipeline), writer_of(pipeline)  # both following already
    try:
        write_until_terminal(first, poison(5))
        # the next owner asks right after the first's acknowledgement (the race): it waits
        # until its follower has read that far, finds the letter, and writes nothing
        write_until_terminal(next_owner, poison(5))
        write_until_terminal(next_owner, poison(6))  # another offset: written
        write_until_terminal(writer_of(pipeline), poison(5))  # a third, started afterwards
    finally:
        first.close()
        next_owner.close()
    letters = pipeline.dead_letters(expected=2)
    assert sorted(int(h["source_offset"]) for _, _, h in letters) == [5, 6]


def test_once_the_index_read_past_the_take_over_a_letter_is_written_without_waiting(
    infrastructure, fake, tmp_path, monkeypatch
) -> None:
    pipeline = Pipeline(infrastructure, fake, tmp_path, monkeypatch=monkeypatch)
    writer = writer_of(pipeline)
    try:
        writer.taken([("events-x", 0)])
        write_until_terminal(writer, poison(1))  # waits for one look after the take-over
        waits: list[float] = []
        done = threading.Event()
        writer.write(poison(2), done.set, waits.append, {})
        assert writer.producer.flush(30) == 0
        assert done.is_set() and not waits
    finally:
        writer.close()
    assert len(pipeline.dead_letters(expected=2)) == 2


def test_a_dead_letter_topic_that_cannot_be_read_is_written_to_after_the_patience(
    infrastructure, fake, tmp_path, monkeypatch, caplog
) -> None:
    """A topic the follower cannot read (here: its broker does not answer the follower;
    an ACL that lets the producer write but not read is the same): a duplicate is better
    than a loss."""
    pipeline = Pipeline(infrastructure, fake, tmp_path, monkeypatch=monkeypatch)
    topic = pipeline.dlq
    settings = {"bootstrap.servers": infrastructure.bootstrap_servers}
    unreachable = {"bootstrap.servers": "127.0.0.1:9", "socket.connection.setup.timeout.ms": 1000}
    index = DeadLetterIndex.following(unreachable, topic, patience=1.0)
    writer = DeadLetterWriter(Producer(settings), topic, index=index)
    try:
        with caplog.at_level(logging.WARNING, logger="streamer.dead_letter_index"):
            write_until_terminal(writer, poison(1))
            write_until_terminal(writer, poison(2))
    finally:
        writer.close()
    warnings = [r for r in caplog.records if "without checking" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    pipeline.dlq = topic
    assert len(pipeline.dead_letters(expected=2)) == 2


@pytest.mark.integration
def test_a_first_letter_to_a_topic_not_created_yet_is_checked_and_written_at_once(
    infrastructure, fake, tmp_path, monkeypatch, caplog
) -> None:
    """A topic that does not exist holds no letter: the first one is written after the
    check, without waiting out the patience (it waited 30 s: a demo's first letters)."""
    pipeline = Pipeline(infrastructure, fake, tmp_path, monkeypatch=monkeypatch)
    topic = pipeline.dlq + "-new"
    settings = {"bootstrap.servers": infrastructure.bootstrap_servers}
    index = DeadLetterIndex.following(settings, topic, patience=3600.0)
    writer = DeadLetterWriter(Producer(settings), topic, index=index)
    try:
        with caplog.at_level(logging.WARNING, logger="streamer.dead_letter_index"):
            write_until_terminal(writer, poison(1), limit=120)
    finally:
        writer.close()
    assert not [r for r in caplog.records if "without checking" in r.getMessage()]
    pipeline.dlq = topic
    assert len(pipeline.dead_letters(expected=1)) == 1


class Killed(BaseException):
    """The process died (kill -9) right after the broker acknowledged a dead letter."""


def dies_after_the_first_acknowledgement(engine: Engine) -> None:
    write: Callable[..., None] = engine.dead_letters.write

    def acknowledged_then_killed(letter: DeadLetter, written, again_in, context: Any) -> None:
        def killed() -> None:
            raise Killed  # before the letter is terminal, so before its offset is committed

        write(letter, killed, again_in, context)

    engine.dead_letters.write = acknowledged_then_killed  # type: ignore[method-assign]


def test_a_letter_acknowledged_but_not_committed_before_a_crash_is_not_written_twice(
    infrastructure, fake, tmp_path, monkeypatch
) -> None:
    pipeline = Pipeline(infrastructure, fake, tmp_path, partitions=1, monkeypatch=monkeypatch)
    pipeline.produce([check_event("host-1", "CRITICAL"), b"not json", check_event("host-2", "OK")])
    first = Engine(load_config(pipeline.config_path))
    dies_after_the_first_acknowledgement(first)
    crashed: list[BaseException] = []

    def run() -> None:
        try:
            first.run(threading.Event())
        except Killed as e:
            crashed.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(90)
    assert crashed, "the first replica never dead-lettered the poison message"
    assert pipeline.committed()[0] <= 1  # the poison's offset was left to the next owner

    pipeline.deliver_all(2)  # the next owner reads it again

    letters = pipeline.dead_letters(expected=1)
    assert [h["source_offset"] for _, _, h in letters] == ["1"], "one letter, not two"


class KillOnLetter:
    """Follows the dead-letter topic; SIGKILLs `process` as soon as the letter count reaches
    `at` (from the follower's thread: milliseconds after the broker took the letter)."""

    def __init__(self) -> None:
        self.count, self.at = 0, 0
        self.process: ServiceProcess | None = None
        self.lock = threading.Lock()

    def __call__(self, message: Any) -> None:
        with self.lock:
            self.count += 1
            if self.process is not None and self.count >= self.at:
                self.process.signal(signal.SIGKILL)
                self.process = None

    def arm(self, process: ServiceProcess, at: int) -> None:
        with self.lock:
            self.process, self.at = process, at

    def letters(self) -> int:
        with self.lock:
            return self.count


def test_kill_9_while_poison_is_dead_lettered_writes_each_letter_once(
    infrastructure, fake, tmp_path, monkeypatch
) -> None:
    """`streamer run` killed with SIGKILL as soon as each dead letter appears in the topic
    (before its offset is committed, most of the time), then started again: one letter
    per poison message in the end."""
    pipeline = Pipeline(infrastructure, fake, tmp_path, partitions=1, monkeypatch=monkeypatch)
    poison_count = 4
    killer = KillOnLetter()
    settings = {"bootstrap.servers": infrastructure.bootstrap_servers}
    follower = TopicFollower(settings, pipeline.dlq, killer, window_seconds=None).start()
    try:
        for kill in range(poison_count):  # one more poison message for each replica
            pipeline.produce([check_event(f"host-{kill}", "CRITICAL"), b"not json %d" % kill])
            process = ServiceProcess(pipeline, tmp_path / f"p{kill}.log")
            killer.arm(process, at=killer.letters() + 1)
            assert process.wait(timeout=90) == -signal.SIGKILL, process.log()[-3000:]
        last = ServiceProcess(pipeline, tmp_path / "last.log")
        try:
            pipeline.wait_committed()
        finally:
            last.signal(signal.SIGTERM)
            assert last.wait() == 0, last.log()[-3000:]
    finally:
        follower.close()
    letters = pipeline.dead_letters(expected=poison_count)
    offsets = [h["source_offset"] for _, _, h in letters]
    print(f"\nkill -9 as each letter appears: {len(letters)} letters for {poison_count} poison")
    assert len(offsets) == len(set(offsets)) == poison_count, sorted(offsets)
