"""What `streamer silence add | expire | import` may write over what the topic holds.

The silences topic has no owner: any CLI writes it, and each decides from what it read
(streamer/cli/silence.py). These are those decisions, as pure functions of the silences
read, the silences to write and the writer's time (tests/test_silence_writes.py):

- at most `MAX_IN_FORCE` silences are active or pending once written (`refuse_past_bound`;
  every replica holds every silence in memory and matches alert events against them);
  two writers at the same moment may pass it by what each writes, no more;
- an import never writes over the topic's version of a silence when that version is
  expired (it would revive it) or was updated after the imported one (`newer_than_topic`);
- silences expired longer than `EXPIRED_KEPT` ago are tombstoned by the next writer
  (`forgettable`), so compaction removes them; writing a tombstone twice is harmless.

No Kafka and no heavy import here: the CLI's `--help` reads `MAX_IN_FORCE`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streamer.silences import Silence

__all__ = ["MAX_IN_FORCE", "forgettable", "newer_than_topic", "refuse_past_bound"]

MAX_IN_FORCE = 10_000


def forgettable(known: Iterable[Silence], written: Iterable[Silence], now: datetime) -> list[str]:
    """The keys to tombstone: the ids among `known` expired past `EXPIRED_KEPT` and not
    being written, and the keys of their "matched at" marks (streamer/silence_expiry.py)."""
    from streamer.silence_expiry import MARK_PREFIX

    ids = {s.id for s in written}
    old = [s for s in known if s.forgotten(now) and s.id not in ids]
    return [s.id for s in old] + [
        MARK_PREFIX + s.id for s in old if s.expire_if_unmatched_for is not None
    ]


def newer_than_topic(
    imported: list[Silence], known: list[Silence], now: datetime
) -> tuple[list[Silence], list[str]]:
    """Of `imported`, those to write, and a line for each kept as the topic has it: its
    version there is expired (an import never revives a silence: Alertmanager would not
    let one be updated either), or was updated later than the imported one (`updatedAt`;
    a version without one is not known to be older)."""
    by_id = {s.id: s for s in known}
    written: list[Silence] = []
    kept: list[str] = []
    for s in imported:
        there = by_id.get(s.id)
        if there is not None and there.state(now) == "expired":
            kept.append(
                f"kept {s.id} as the topic has it: expired there (ended "
                f"{there.ends_at:%Y-%m-%d %H:%M:%SZ}); an import does not revive it, add a "
                "new silence instead"
            )
        elif there and there.updated_at and s.updated_at and s.updated_at < there.updated_at:
            kept.append(
                f"kept {s.id} as the topic has it: updated there at "
                f"{there.updated_at:%Y-%m-%d %H:%M:%SZ}, after the imported version "
                f"({s.updated_at:%Y-%m-%d %H:%M:%SZ})"
            )
        else:
            written.append(s)
    return written, kept


def refuse_past_bound(
    topic: str, known: list[Silence], written: list[Silence], now: datetime
) -> None:
    """Raises SilenceError when writing `written` over `known` would leave more than
    `MAX_IN_FORCE` silences active or pending (two writers at once may pass it by their
    own few: each counts what it read)."""
    from streamer.silences import SilenceError

    in_force = {s.id for s in known if s.state(now) != "expired"}
    ending = {s.id for s in written if s.state(now) == "expired"}
    after = (in_force - ending) | {s.id for s in written if s.state(now) != "expired"}
    if len(after) > MAX_IN_FORCE:
        raise SilenceError(
            f"{topic} holds {len(in_force):,} silences active or pending, and this would make "
            f"{len(after):,}: at most {MAX_IN_FORCE:,} are kept at once (every replica "
            "matches alerts against them all); nothing written. Expire some (`streamer "
            "silence list`, `streamer silence expire ID`), or use fewer, broader matchers"
        )
