"""Admission: which fetched messages become jobs (docs/design.md, "The delivery machine").

A fetched message enters the ledger at most once, and only while its partition is ours
and readable (guarantees 1, 2): one fetched twice (a prefetch around a seek) or after its
partition was let go is skipped; one whose partition's previous note is unread, or whose
schema registry is down, blocks its partition at its offset (a seek brings it back); one
the previous owner's offset map names as terminal is terminal at once (no second POST);
one partly done before a hand-over gets only the jobs that did not end (`budget.not_done`).
A part of the `DeliveryMachine`, reached only through its door.
"""

from __future__ import annotations

from collections.abc import Callable

from opentelemetry.trace import INVALID_SPAN

from streamer.backpressure import Backpressure
from streamer.budget import not_done
from streamer.commit_conversation import CommitConversation
from streamer.commits import CommitSchedule
from streamer.delivery_events import Effect, Fetched
from streamer.dispatch import Dispatcher
from streamer.group_budget import GroupBudget
from streamer.instrumentation import MessageSpans
from streamer.ledger import DeliveryLedger, Job, Partition
from streamer.telemetry import Telemetry

__all__ = ["Admission"]


class Admission:
    def __init__(
        self,
        *,
        ledger: DeliveryLedger,
        backpressure: Backpressure,
        budget: GroupBudget,
        commit: CommitConversation,
        commits: CommitSchedule,
        out: Dispatcher,
        spans: MessageSpans,
        telemetry: Telemetry,
        activate: Callable[[Job], None],
    ) -> None:
        self._ledger, self._backpressure, self._budget = ledger, backpressure, budget
        self._commit, self._commits, self._out = commit, commits, out
        self._spans, self._telemetry = spans, telemetry
        self._activate = activate  # a job whose key is free: queued, or its letter written

    def needs_routing(self, partition: Partition, offset: int) -> bool:
        """Whether a fetched message is worth decoding and routing (else the shell passes
        it with `works=None`: not ours, blocked, fetched twice, or known to be done)."""
        if not self._ledger.holds(partition) or self._backpressure.blocked(partition):
            return False
        seen_up_to = self._ledger.next_offset(partition)
        if seen_up_to is not None and offset < seen_up_to:
            return False
        return partition not in self._commit.unread and not self._budget.already_done(
            partition, offset
        )

    def fetched(self, event: Fetched, now: float, effects: list[Effect]) -> None:
        """Most messages are dropped by the rules and terminal at once: per message only the
        ledger's offset; counters are added once per batch. Blocks go to `effects`."""
        ledger, spans, dropped, muted, silenced = self._ledger, self._spans, 0, 0, 0
        for m in event.messages:
            p = m.partition
            if not ledger.holds(p) or self._backpressure.blocked(p):
                continue  # no longer ours / re-fetched after the seek that unblocks it
            seen_up_to = ledger.next_offset(p)
            if seen_up_to is not None and m.offset < seen_up_to:
                continue  # fetched twice (a prefetch around a seek): already accounted for
            if p in self._commit.unread:  # its offset map is not known yet
                why = "no coordinator: the previous owner's note is not read yet"
                effects.append(self._backpressure.block(p, m.offset, now, why))
                continue
            if self._budget.already_done(p, m.offset):
                ledger.add(p, m.offset, ())  # terminal before a hand-over
                continue
            if m.registry_down is not None:
                why = f"schema registry unavailable: {m.registry_down}"
                effects.append(self._backpressure.block(p, m.offset, now, why))
                continue
            if m.works is None:
                continue  # the shell did not route it: read again (a seek brings it back)
            self._backpressure.registry_answered(p)
            works = m.works
            if done := self._budget.jobs_done(p, m.offset):  # partly done before a hand-over
                works = not_done(works, done)
                if not works:  # every job ended before: terminal, as an offset map says
                    ledger.add(p, m.offset, ())
                    if m.span is not None:
                        m.span.end()
                    continue
            if works:
                # timed whether traced or not (the process-duration histogram)
                spans.routed(p, m.offset, m.span or INVALID_SPAN, len(works))
                for job in ledger.add(p, m.offset, works, m.size):
                    self._activate(job)
                self._out.coalesce(works)  # a newer event supersedes its key's waiting one
            else:  # dropped (or muted) on purpose: terminal now
                ledger.add(p, m.offset, (), m.size)
                muted += m.muted
                silenced += m.silenced
                dropped += not m.muted
                if m.span is not None:
                    spans.routed(p, m.offset, m.span, 0)
        if dropped:
            self._telemetry.dropped.add(dropped)
        if silenced:  # (and each alert event by silence and route at routing)
            self._telemetry.silenced_messages.add(silenced)
        if dropped or muted:  # (muted events are counted by route and interval at routing)
            self._commits.terminal(dropped + muted)
