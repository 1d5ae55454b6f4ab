"""`/_fake/...`: drive a double that runs in another process (the CLI, the demo, benches).

Everything the Python API of `FakeIncidentIo` sets or reads is reachable here, with the
same meaning; a malformed control request is a 400 naming what is wrong, never a 500.

GET /_fake/events, GET /_fake/answers: what was recorded; GET /_fake/counts: how many
of each (cheap to poll);
POST /_fake/faults {"kind": "status"|"latency"|"reset"|"redirect"|"huge_body"|"trickle"|
"hang", "status", "seconds", "source_id", "count", "for_seconds", "location", "size",
"bytes_per_second", "part"} (see `Fault`; status defaults to 308 for a redirect, 500 for
a huge body, 503 otherwise); DELETE /_fake/faults;
POST /_fake/sources {"id", "token", "events_per_minute"}.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from streamer.testing.fake_incident_io.contract import AlertSource, Reply
from streamer.testing.fake_incident_io.faults import Fault

if TYPE_CHECKING:
    from streamer.testing.fake_incident_io.server import FakeIncidentIo

_DEFAULT_STATUS = {"redirect": 308, "huge_body": 500}


class ControlApi:
    def __init__(self, fake: FakeIncidentIo) -> None:
        self.fake = fake

    def handle(self, method: str, path: str, body: bytes) -> Reply:
        try:
            request = json.loads(body) if body else {}
            if (method, path) == ("GET", "/_fake/events"):
                return Reply(200, {"events": [asdict(e) for e in self.fake.events]})
            if (method, path) == ("GET", "/_fake/counts"):
                return Reply(
                    200, {"events": len(self.fake.events), "answers": len(self.fake.answers)}
                )
            if (method, path) == ("GET", "/_fake/answers"):
                return Reply(200, {"answers": [asdict(a) for a in self.fake.answers]})
            if (method, path) == ("DELETE", "/_fake/faults"):
                self.fake.clear_faults()
                return Reply(200, {})
            if (method, path) == ("POST", "/_fake/faults"):
                fault = self.fake.add_fault(self._fault(request))
                return Reply(201, asdict(fault))
            if (method, path) == ("POST", "/_fake/sources"):
                self.fake.add_source(AlertSource(**request))
                return Reply(201, {})
        except (KeyError, TypeError, ValueError) as e:
            return Reply(400, {"error": f"bad control request: {e!r}"})
        return Reply(404, {"error": f"no control endpoint {method} {path}"})

    def _fault(self, request: dict[str, Any]) -> Fault:
        kind = request["kind"]
        for_seconds = request.get("for_seconds")
        return Fault(
            kind=kind,
            status=int(request.get("status", _DEFAULT_STATUS.get(kind, 503))),
            seconds=float(request.get("seconds", 0.0)),
            source_id=request.get("source_id"),
            remaining=request.get("count"),
            until=None if for_seconds is None else self.fake.clock() + float(for_seconds),
            location=str(request.get("location", "")),
            size=int(request.get("size", 0)),
            bytes_per_second=float(request.get("bytes_per_second", 0.0)),
            part=request.get("part", "answer"),
        )
