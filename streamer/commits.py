"""When to commit, and which offsets the broker has really taken.

Invariant: an offset counts as committed only once the broker confirmed it. A commit can
fail (mid-rebalance the group's generation changes under it, or there is no coordinator):
an offset that was refused, or whose sending failed, is sent again at the next commit,
even if nothing new became terminal meanwhile. Which offsets may be committed at all is
the ledger's business (its watermarks never pass a message that is not terminal); this
core only decides when to send them and what is still unconfirmed.

Asynchronous commits are the steady state (every `interval` seconds, or after `every`
terminal messages); a forced commit (revoke, shutdown) sends everything not yet
confirmed, even what an asynchronous commit already has on its way.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from streamer.ledger import Partition


class CommitSchedule:
    def __init__(self, *, interval: float, every: int, now: float) -> None:
        self.interval, self.every = interval, every
        self.confirmed: dict[Partition, int] = {}  # the broker said yes
        self._sending: dict[Partition, int] = {}  # sent asynchronously, no answer yet
        self._last = now
        self._terminal = 0

    def terminal(self, count: int = 1) -> None:
        """`count` more messages reached a terminal state."""
        self._terminal += count

    def offsets_to_send(
        self,
        watermarks: Mapping[Partition, int],
        now: float,
        *,
        force: bool = False,
        only: Collection[Partition] | None = None,
    ) -> dict[Partition, int]:
        """What to commit now: nothing unless due (or forced); never what is confirmed."""
        due = now - self._last >= self.interval or self._terminal >= self.every
        if not (force or due):
            return {}
        self._last, self._terminal = now, 0
        return {
            p: offset
            for p, offset in watermarks.items()
            if (only is None or p in only)
            and offset != self.confirmed.get(p)
            and (force or offset != self._sending.get(p))
        }

    def sending(self, offsets: Mapping[Partition, int]) -> None:
        """These went out asynchronously; the answer comes through `answered`."""
        self._sending.update(offsets)

    def not_sent(self, offsets: Mapping[Partition, int]) -> None:
        """Sending raised: nothing is on its way, the next commit sends them again."""
        for p in offsets:
            self._sending.pop(p, None)

    def answered(self, partition: Partition, offset: int, *, ok: bool, owned: bool) -> None:
        """The broker's answer for one partition. A refusal leaves it unconfirmed, so it is
        sent again; an answer for a partition no longer ours is not remembered."""
        if self._sending.get(partition) == offset:
            del self._sending[partition]
        if ok and owned:
            self.confirmed[partition] = offset

    def forget(self, partitions: Collection[Partition]) -> None:
        """Revoked or lost: the next owner commits from here on."""
        for p in partitions:
            self.confirmed.pop(p, None)
            self._sending.pop(p, None)
