"""The simulated Kafka broker: a topic's partitions, committed offsets with their notes,
and the dead-letter topic.

It keeps what a broker keeps and nothing a member could not see through Kafka: each
partition's log (`SimMessage`s in offset order, growing while the producers write), each
partition's committed offset and commit metadata (the note a `Commit` writes and a
`ReadNotes` returns; `OFFSET_INVALID` before the first commit, as librdkafka answers),
and the dead-letter topic's records with the source coordinates they carry. Who may
commit is the coordinator's call (`Coordinator.may_commit`), as a generation check is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tests.simulation.workload import SimMessage

log = logging.getLogger(__name__)

OFFSET_INVALID = -1001  # librdkafka's answer for a partition never committed


@dataclass(frozen=True)
class LetterRecord:
    """A dead letter as written: where it came from, what for, who wrote it, when."""

    partition: int
    offset: int
    destination: str | None
    reason: str
    writer: str
    at: float


@dataclass(frozen=True)
class CommitRecord:
    partition: int
    offset: int
    note: str | None
    writer: str
    at: float


class Broker:
    def __init__(self, partitions: int) -> None:
        self.logs: list[list[SimMessage]] = [[] for _ in range(partitions)]
        self.committed: dict[int, tuple[int, str | None]] = {}
        self.commits: list[CommitRecord] = []
        self.dead_letters: list[LetterRecord] = []
        # (source offset, destination) -> its first letter (a letter's identity, as the
        # engine's index keys it: streamer.dead_letter_index.SourceOffset)
        self.lettered_at: dict[tuple[int, int, str | None], float] = {}

    @property
    def partitions(self) -> int:
        return len(self.logs)

    def produce(self, message: SimMessage) -> int:
        log_ = self.logs[message.partition]
        log_.append(message)
        return len(log_) - 1

    def end(self, partition: int) -> int:
        """The next offset to be written (the high watermark)."""
        return len(self.logs[partition])

    def message(self, partition: int, offset: int) -> SimMessage:
        return self.logs[partition][offset]

    def read_note(self, partition: int) -> tuple[int, str | None]:
        return self.committed.get(partition, (OFFSET_INVALID, None))

    def commit(self, partition: int, offset: int, note: str | None, writer: str, at: float) -> None:
        self.committed[partition] = (offset, note)
        self.commits.append(CommitRecord(partition, offset, note, writer, at))

    def write_dead_letter(self, record: LetterRecord) -> None:
        self.dead_letters.append(record)
        key = (record.partition, record.offset, record.destination)
        self.lettered_at.setdefault(key, record.at)
