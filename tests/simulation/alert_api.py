"""The simulated incident.io: the real contract's answers, at simulated arrival times.

Answers come from the double's own `Contract` (streamer/testing/fake_incident_io), so the
bodies are the real ones: 202 `{status, message, deduplication_key}`, 422 with field
errors, 429 with `rate_limit.retry_after` (an HTTP date by incident.io's clock) and a
`Retry-After` header. On top of it, faults that hold for a time: 5xx bursts and 401 holds
replace the answer (the event is not processed, as the double's replacing faults), slow
periods stretch latency past the client's deadline (the event may be processed while the
client gives up), and hostile answers (a 202 whose body nests 60,000 levels deep, bytes
that are not UTF-8, a 429 whose `Retry-After` has 4,000 digits).

Every request that reaches it is recorded as an `Arrival`, whatever it was answered:
the checker counts arrivals, the strictest reading of a rate limit.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass

from streamer.failure_policy import MAX_RETRY_AFTER
from streamer.incident_io import Answer
from streamer.testing.fake_incident_io.contract import AlertSource as SourceSpec
from streamer.testing.fake_incident_io.contract import Contract
from tests.simulation.scheduler import EPOCH

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Arrival:
    at: float
    source: str  # alert source config id
    sender: str  # member incarnation
    partition: int
    offset: int
    key: str  # deduplication key
    status: int
    accepted: bool  # incident.io processed the event (it may be answered otherwise)


@dataclass(frozen=True)
class ApiFault:
    kind: str  # "5xx" | "401" | "slow" | "hostile"
    start: float
    end: float
    source: str | None = None  # None: every source
    probability: float = 1.0

    def applies(self, source: str, at: float, rng: random.Random) -> bool:
        if not (self.start <= at < self.end):
            return False
        if self.source is not None and self.source != source:
            return False
        return rng.random() < self.probability


HOSTILE_202 = [b"[" * 60_000 + b"]" * 60_000, b"\xff\xfe not utf-8", b"", b'{"status": 1e999999}']


class SimIncidentIo:
    def __init__(
        self,
        sources: dict[str, tuple[str, int]],  # source id -> (token, limit per window)
        *,
        window: float,
        requests_per_window_per_token: int,
        rng: random.Random,
        retry_after_header: str = "seconds",
    ) -> None:
        self.contract = Contract(
            requests_per_minute_per_token=requests_per_window_per_token,
            window_seconds=window,
            retry_after_header=retry_after_header,  # type: ignore[arg-type]
        )
        for source_id, (token, limit) in sources.items():
            self.contract.add_source(SourceSpec(source_id, token, events_per_minute=limit))
        self.rng = rng
        self.faults: list[ApiFault] = []
        self.arrivals: list[Arrival] = []
        self._requests = 0
        # the latest end of a pause a 429 asked for (failure_policy believes 600 s at most):
        # liveness is owed only once incident.io no longer asks to wait
        self.paused_until = 0.0

    def latency(self, source: str, at: float) -> tuple[float, float]:
        """(to arrive, to answer) for a request sent at `at`."""
        slow = any(f.kind == "slow" and f.applies(source, at, self.rng) for f in self.faults)
        if slow and self.rng.random() < 0.5:
            return self.rng.uniform(0.5, 6.0), self.rng.uniform(0.1, 6.0)
        return self.rng.uniform(0.005, 0.2), self.rng.uniform(0.005, 0.2)

    def arrive(
        self,
        at: float,
        source: str,
        token: str,
        payload: dict,
        sender: str,
        partition: int,
        offset: int,
    ) -> Answer:
        self._requests += 1
        request_id = f"req-{self._requests}"
        replaced = self._replacement(source, at, request_id)
        if replaced is not None:
            status, body, headers = replaced
            accepted = False
        else:
            reply = self.contract.decide(
                source,
                f"Bearer {token}",
                None,
                json.dumps(payload).encode(),
                request_id,
                EPOCH + at,
            )
            status, headers = reply.status, dict(reply.headers)
            body = json.dumps(reply.body).encode()
            accepted = status == 202
            if status == 429:
                self.paused_until = max(self.paused_until, at + self.contract._window)
            if accepted and self._hostile(source, at):
                body = self.rng.choice(HOSTILE_202)
        self.arrivals.append(
            Arrival(
                at,
                source,
                sender,
                partition,
                offset,
                str(payload.get("deduplication_key")),
                status,
                accepted,
            )
        )
        return Answer(status, headers, body)

    def _hostile(self, source: str, at: float) -> bool:
        return any(f.kind == "hostile" and f.applies(source, at, self.rng) for f in self.faults)

    def _replacement(
        self, source: str, at: float, request_id: str
    ) -> tuple[int, bytes, dict[str, str]] | None:
        for fault in self.faults:
            if fault.kind == "401" and fault.applies(source, at, self.rng):
                body = {
                    "type": "authentication_error",
                    "status": 401,
                    "request_id": request_id,
                    "errors": [
                        {
                            "code": "invalid_authorization_material",
                            "message": "The provided token is not valid",
                        }
                    ],
                }
                return 401, json.dumps(body).encode(), {}
            if fault.kind == "5xx" and fault.applies(source, at, self.rng):
                status = self.rng.choice([500, 502, 503, 504])
                return status, b"<html>upstream unavailable</html>", {}
            hostile = fault.kind == "hostile" and fault.applies(source, at, self.rng)
            if hostile and self.rng.random() < 0.3:  # a 429 whose wait is past believing
                self.paused_until = max(self.paused_until, at + MAX_RETRY_AFTER)
                return 429, b"{}", {"Retry-After": "9" * 4000}
        return None
