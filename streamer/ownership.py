"""What owning a partition means to the cores: taken on assignment, let go on revoke or
loss.

Invariants: a partition taken starts nothing until this member's note for it is on the
broker (`HandOver.take`, claimed by `Committer`), and it inherits the previous owner's
note (budget spent, offsets done: `Committer.take_over`). A partition let go leaves every
core at once: its messages are no longer ours (the ledger fences their answers), its
waiting jobs free their keys (released, never dropped: the next owner delivers them),
and the shares of every limit are computed again for the partitions that stay (a cut at
once, a raise once the others can have heard of it).
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from confluent_kafka import TopicPartition

from streamer.backpressure import Backpressure
from streamer.commits import CommitSchedule
from streamer.committer import Committer
from streamer.destinations import Destinations
from streamer.group_budget import GroupBudget
from streamer.handover import HandOver
from streamer.ledger import DeliveryLedger, Job, Partition


class Ownership:
    def __init__(
        self,
        *,
        ledger: DeliveryLedger,
        destinations: Destinations,
        handover: HandOver,
        commits: CommitSchedule,
        committer: Committer,
        budget: GroupBudget,
        backpressure: Backpressure,
        release: Callable[[Job], None],
    ) -> None:
        self.ledger, self.destinations, self.handover = ledger, destinations, handover
        self.commits, self.committer, self.budget = commits, committer, budget
        self.backpressure, self.release = backpressure, release

    def take(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.ledger.assign((tp.topic, tp.partition))
        self.update_shares()
        self.handover.take((tp.topic, tp.partition) for tp in partitions)  # until claimed
        self.committer.take_over(partitions)

    def let_go(self, partitions: Collection[Partition]) -> None:
        for p in partitions:
            self.ledger.revoke(p)
        self.commits.forget(partitions)
        self.committer.let_go(partitions)
        self.budget.let_go(partitions)
        self.backpressure.forget(partitions)
        for job in self.destinations.drop(partitions):
            self.release(job)
        self.handover.end(partitions)
        self.update_shares()

    def update_shares(self) -> None:
        """Shares by partitions owned: a cut at once, a raise announced first (others keep
        room for it) and taken `raise_after` later, as raises by demand are."""
        total = self.committer.total_partitions() or max(1, len(self.ledger.partitions))
        self.destinations.share(
            len(self.ledger.partitions),
            total,
            now=self.committer.clock(),
            raise_after=self.budget.raise_after,
        )
        self.budget.promise_tails()
