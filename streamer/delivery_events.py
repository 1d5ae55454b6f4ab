"""What goes into the delivery machine and what comes out of it (docs/design.md, "The
delivery machine").

`DeliveryMachine.handle(event, now, wall)` is the machine's one door: an event (something
that happened: messages fetched, an answer, a rebalance, a commit's answer, time passing)
goes in; effects (what the shell must do: POST, produce a dead letter, commit, pause,
resume, read notes) come out. The shell performs them and feeds their results back as
events. Nothing inside the machine blocks, sleeps, reads a clock or talks to Kafka or
HTTP, so a simulator can run a whole group of machines deterministically.

Values only: plain frozen dataclasses. A `Job` travels out in `Post`/`WriteDeadLetter` and
comes back in `Answered`/`DeadLetterWritten` as a handle the shell must not change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from streamer.config import Destination
from streamer.dead_letters import DeadLetter
from streamer.incident_io import Answer
from streamer.ledger import Job, OrderingKey, Partition

if TYPE_CHECKING:
    from streamer.held_targets import HeldTarget

Work = tuple[OrderingKey | None, Any]  # a delivery or a dead letter, with its key

# -- events: what happened ------------------------------------------------------------------


@dataclass(frozen=True)
class Incoming:
    """One fetched message. `works` are its jobs (empty: dropped by the rules), None when
    the shell did not route it (`DeliveryMachine.needs_routing` said no), and
    `registry_down` the reason when its schema registry did not answer."""

    partition: Partition
    offset: int
    size: int = 0
    works: Sequence[Work] | None = ()
    registry_down: str | None = None
    span: Any = None  # its trace span, if tracing (ended by the machine)
    muted: bool = False  # no works because a time interval keeps its routes quiet
    silenced: bool = False  # muted by a silence (outcome `silenced`; `muted` is set too)


@dataclass(frozen=True)
class Fetched:
    messages: Sequence[Incoming]


@dataclass(frozen=True)
class Answered:
    """incident.io's answer to a `Post` (or the exception the client raised)."""

    job: Job
    answer: Answer | Exception


@dataclass(frozen=True)
class DeadLetterWritten:
    job: Job


@dataclass(frozen=True)
class DeadLetterNotWritten:
    """The produce failed; write it again after `retry_in` seconds."""

    job: Job
    retry_in: float


@dataclass(frozen=True)
class Tick:
    """Time passed: timers due, what may start, caps, commits and views."""


@dataclass(frozen=True)
class Assigned:
    partitions: Sequence[Partition]
    total_partitions: int  # of every configured topic (shares are by partitions)


@dataclass(frozen=True)
class NotesRead:
    """The committed offsets and notes (commit metadata) asked for by `ReadNotes`.
    `failed` are partitions whose note could not be read (read again later)."""

    notes: Mapping[Partition, tuple[int, str | None]]
    failed: Sequence[Partition] = ()
    group: bool = False  # a view of the whole group (else: previous owners' notes)


@dataclass(frozen=True)
class Revoking:
    """A drain begins: nothing of `partitions` may start too late to end by `deadline`."""

    partitions: Sequence[Partition]
    deadline: float


@dataclass(frozen=True)
class Revoked:
    """The drain is over: commit what is terminal (`Commit(sync=True)`), then `LetGo`."""

    partitions: Sequence[Partition]


@dataclass(frozen=True)
class LetGo:
    """The partitions leave every part of the machine; `lost`: nothing was committed."""

    partitions: Sequence[Partition]
    lost: bool = False


@dataclass(frozen=True)
class CommitAnswered:
    """The broker's answer to a `Commit`, per partition: (offset, error or None)."""

    results: Mapping[Partition, tuple[int, str | None]]
    sync: bool = False


@dataclass(frozen=True)
class CommitNotSent:
    """Sending the `Commit` raised (no coordinator mid-rebalance): it is sent again."""

    offsets: Mapping[Partition, int]
    sync: bool = False


@dataclass(frozen=True)
class ConfigChanged:
    """A reloaded configuration's destinations (queues, holds, spent budget carry over)."""

    destinations: Mapping[str, Destination]
    tokens: Mapping[str, SecretStr] = field(repr=False)
    total_partitions: int


@dataclass(frozen=True)
class ReleaseHeld:
    """Held targets nothing keeps quiet any more (streamer/held_targets.py): each becomes a
    job of its key, behind what of it waits, moving no watermark (answered `HeldSent`).
    `high`: the consumer's high watermarks of their partitions as it knows them (cached, no
    request; a partition missing: not known yet); a target is released only once this
    member has fetched its partition up to the watermark known when it was first asked
    about (what the previous owner or the backlog says after it is read first). None: the
    shell knows none (tests): no such wait."""

    targets: Sequence[HeldTarget]
    high: Mapping[Partition, int] | None = None


Event = (
    Fetched
    | Answered
    | DeadLetterWritten
    | DeadLetterNotWritten
    | Tick
    | Assigned
    | NotesRead
    | Revoking
    | Revoked
    | LetGo
    | CommitAnswered
    | CommitNotSent
    | ConfigChanged
    | ReleaseHeld
)

# -- effects: what the shell must do --------------------------------------------------------


@dataclass(frozen=True)
class Post:
    """POST `payload` to the alert source; answer with `Answered(job, ...)`."""

    job: Job
    url: str
    alert_source_config_id: str
    token: SecretStr = field(repr=False)
    payload: Mapping[str, Any]


@dataclass(frozen=True)
class WriteDeadLetter:
    """Produce `letter`; answer `DeadLetterWritten` once acknowledged, or
    `DeadLetterNotWritten`."""

    job: Job
    letter: DeadLetter


@dataclass(frozen=True)
class Commit:
    """Commit these offsets with their notes (metadata); answer `CommitAnswered` (or
    `CommitNotSent` if sending raised). `sync`: wait for the answer (revoke, shutdown)."""

    offsets: Mapping[Partition, tuple[int, str]]
    sync: bool = False


@dataclass(frozen=True)
class ReadNotes:
    """Read the committed offsets and notes of `partitions`; answer `NotesRead`."""

    partitions: Sequence[Partition]
    group: bool = False


@dataclass(frozen=True)
class Pause:
    partitions: Sequence[Partition]


@dataclass(frozen=True)
class Resume:
    """Seek each partition to its offset (None: no seek), then resume it."""

    partitions: Mapping[Partition, int | None]


@dataclass(frozen=True)
class PauseAt:
    """Pause `partition` and seek back to `offset` (read it again once resumed)."""

    partition: Partition
    offset: int


@dataclass(frozen=True)
class HoldTarget:
    """A delivery inhibited at its turn with no newer job of its key behind it: write it
    as its key's held target (`HeldTargets.perform`)."""

    key: OrderingKey
    delivery: Any


@dataclass(frozen=True)
class HeldSent:
    """A held target's release ended (accepted, or dead-lettered): tombstone its record if
    it is still the one from this source message."""

    key: OrderingKey
    partition: Partition
    offset: int


Effect = (
    Post | WriteDeadLetter | Commit | ReadNotes | Pause | Resume | PauseAt | HoldTarget | HeldSent
)
