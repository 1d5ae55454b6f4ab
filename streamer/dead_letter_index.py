"""Which source offsets already have a dead letter: one letter per offset across a kill.

A dead letter is terminal once the broker acknowledged it, and its offset is committed
within ~0.1 s after. A replica killed between the two leaves the offset uncommitted, so
the partition's next owner reads the message again and, without this index, writes its
letter a second time (issue 22: 23 and 26 letters for 22 poison messages in kill loops).

Every replica therefore follows the dead-letter topic (`TopicFollower`, the last
`WINDOW_SECONDS` of it) and keeps the source coordinates its letters carry
(`streamer.source_topic`, `.source_partition`, `.source_offset`). Before writing a letter
the writer asks `verdict`:

- `WRITTEN`: a letter for that offset is in the topic: terminal without writing again.
- `WRITE`: the follower has read every letter acknowledged before a moment the writer
  names (when this replica took the partition over, or when the letter first asked), and
  none is for this offset: write it.
- `WAIT`: not read that far yet (ask again soon; the letter is not terminal meanwhile).
  This closes the race where the killed replica's letter was acknowledged just before
  this one took the partition over: every letter of a previous owner was acknowledged
  before the take-over, so the topic's ends, looked at after it, lie beyond that letter.
- `WRITE_UNCHECKED`: the topic could not be read for `PATIENCE_SECONDS`, or the letter
  waited that long: it is written anyway. A duplicate is better than a loss; a warning
  says so, once per episode.

Limits, on purpose: a letter older than the window (a group down for longer than
`WINDOW_SECONDS` before its offset is read again) or evicted from a full index
(`MAX_ENTRIES`, the oldest go first) can be written again; so can a letter whose
writer's clock ran more than the window behind (the window starts by record
timestamps), and one that a replica which lost its partition without knowing it
(not killed: fenced) still writes after the next owner looked.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from confluent_kafka import Message

from streamer.dead_letters import PREFIX
from streamer.topic_follower import Followers, Follows, following

log = logging.getLogger(__name__)

__all__ = ["DeadLetterIndex", "SeenLetters", "SourceOffset", "Verdict", "decide"]

WINDOW_SECONDS = 15 * 60.0  # letters this recent are read at start
PATIENCE_SECONDS = 30.0  # a letter waits at most this long for the index
MAX_ENTRIES = 50_000  # ~7.5 MB; what matters are the last seconds before a kill
SOURCE = PREFIX + "source_"  # streamer.source_topic, _partition, _offset


class SourceOffset(NamedTuple):
    """One letter's identity: its message's coordinates, and where the event was going (a
    message that fans out can have a letter per route and destination: two refusals of one
    message are two letters, never one taken for the other)."""

    topic: str
    partition: int
    offset: int
    route: str = ""
    destination: str = ""


class Verdict(enum.Enum):
    WRITE = "write"
    WRITTEN = "written"
    WAIT = "wait"
    WRITE_UNCHECKED = "write-unchecked"


def decide(
    *, seen: bool, caught_up: bool, waited: float, failing_for: float | None, patience: float
) -> Verdict:
    """The verdict on one letter. `waited`: since the question was first asked for it;
    `failing_for`: how long the topic has not been readable (None: it reads)."""
    if seen:  # proof enough, however far the follower has read
        return Verdict.WRITTEN
    if caught_up:
        return Verdict.WRITE
    if waited >= patience or (failing_for is not None and failing_for >= patience):
        return Verdict.WRITE_UNCHECKED
    return Verdict.WAIT


class SeenLetters:
    """The source offsets of letters seen, at most `limit` of them (the oldest go).

    Each is kept as one integer (topic number, partition, offset): ~150 bytes apiece with
    the dict's and the queue's share, half of what tuples in an OrderedDict cost."""

    MAX_TOPICS = 10_000

    def __init__(self, limit: int = MAX_ENTRIES) -> None:
        self.limit = limit
        self._seen: dict[int, None] = {}
        self._order: deque[int] = deque()
        self._topics: dict[str, int] = {}

    def _key(self, source: SourceOffset, *, adding: bool) -> int | None:
        number = self._topics.get(source.topic)
        if number is None:
            if not adding:
                return None
            if len(self._topics) >= self.MAX_TOPICS:  # a flood of names: start over
                self._topics.clear()
                self._seen.clear()
                self._order.clear()
            number = self._topics[source.topic] = len(self._topics)
        if not (0 <= source.partition < 1 << 31 and 0 <= source.offset < 1 << 63):
            return None
        where = f"{source.route}\0{source.destination}".encode()
        target = int.from_bytes(hashlib.blake2b(where, digest_size=8).digest(), "big")
        return (target << 125) | (number << 94) | (source.partition << 63) | source.offset

    def add(self, source: SourceOffset) -> None:
        key = self._key(source, adding=True)
        if key is None or key in self._seen:
            return
        self._seen[key] = None
        self._order.append(key)
        while len(self._order) > self.limit:
            del self._seen[self._order.popleft()]

    def __contains__(self, source: object) -> bool:
        if not isinstance(source, SourceOffset):
            return False
        key = self._key(source, adding=False)
        return key is not None and key in self._seen

    def __len__(self) -> int:
        return len(self._seen)


HeaderValue = str | bytes | None


def source_of(
    headers: Mapping[str, HeaderValue] | Sequence[tuple[str, HeaderValue]] | None,
) -> SourceOffset | None:
    """The source coordinates a dead letter's headers carry (None: not one of ours)."""
    fields: dict[str, str] = {}
    pairs = headers.items() if isinstance(headers, Mapping) else headers or ()
    for name, value in pairs:
        if name.startswith(PREFIX) and value is not None:
            text = value if isinstance(value, str) else value.decode("utf-8", "replace")
            fields[name[len(PREFIX) :]] = text
    try:
        return SourceOffset(
            fields["source_topic"],
            int(fields["source_partition"]),
            int(fields["source_offset"]),
            fields.get("route", ""),
            fields.get("destination", ""),
        )
    except (KeyError, ValueError):
        return None


class DeadLetterIndex:
    """The dead-letter topic's source offsets, as read by a follower (see the module
    docstring). `verdict` is asked on the poll thread; the follower adds on its own."""

    def __init__(
        self,
        topic: str,
        follower: Callable[[Callable[[Message], None]], Follows],
        *,
        clock: Callable[[], float] = time.monotonic,
        patience: float = PATIENCE_SECONDS,
        limit: int = MAX_ENTRIES,
    ) -> None:
        self.topic, self.clock, self.patience = topic, clock, patience
        self._lock = threading.Lock()
        self._seen = SeenLetters(limit)
        self._unchecked = False  # a warning said letters are written unchecked
        self.follower = follower(self._read)  # it calls back from its own thread

    @classmethod
    def following(
        cls,
        settings: Mapping[str, Any],
        topic: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        patience: float = PATIENCE_SECONDS,
        followers: Followers | None = None,
    ) -> DeadLetterIndex:
        """An index fed by a follower of `topic` started now: one of `followers`, else
        with a reader of its own (librdkafka `settings`)."""
        follower = following(
            settings, topic, window_seconds=WINDOW_SECONDS, followers=followers, clock=clock
        )
        return cls(topic, follower, clock=clock, patience=patience)

    def _read(self, message: Message) -> None:
        source = source_of(message.headers())
        if source is not None:
            self.add(source)

    def add(self, source: SourceOffset) -> None:
        """A letter for `source` is in the topic (read there, or just acknowledged)."""
        with self._lock:
            self._seen.add(source)

    def verdict(self, source: SourceOffset, asked_since: float) -> Verdict:
        """May a letter for `source`, first asked about at `asked_since`, be written?"""
        now = self.clock()
        with self._lock:
            seen = source in self._seen
        caught_up = not seen and self.follower.caught_up(asked_since)
        failing = None if seen or caught_up else self.follower.failing_since()
        verdict = decide(
            seen=seen,
            caught_up=caught_up,
            waited=now - asked_since,
            failing_for=None if failing is None else now - failing,
            patience=self.patience,
        )
        if verdict is Verdict.WRITE_UNCHECKED and not self._unchecked:
            self._unchecked = True
            log.warning(
                "dead letters are written without checking %s for an earlier copy (%s): "
                "a replica killed just after writing one may see its letter written twice",
                self.topic,
                self.follower.problem(),
                extra={"topic": self.topic},
            )
        elif verdict is Verdict.WRITE and self._unchecked:
            self._unchecked = False
            log.info("dead letters are checked against %s again", self.topic)
        return verdict

    def close(self) -> None:
        self.follower.close()
