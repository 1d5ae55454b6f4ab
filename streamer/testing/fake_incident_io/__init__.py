"""A contract-faithful stand-in for incident.io's Alert Events V2 HTTP API.

A real HTTP/1.1 server on loopback for `POST /v2/alert_events/http/{alert_source_config_id}`
that answers as shared/reference/incident-io-alert-events-v2.md documents (`contract`:
202, 400, 401, 404, 422 and 429 with their documented bodies, rolling-window rate limits
per alert source and per token), records what it accepted, and injects faults switched
at runtime (`faults`: 5xx answers, latency, resets, redirects, huge bodies, trickled
answers, requests left hanging). Driven in-process (`server.FakeIncidentIo`) or over
HTTP (`/_fake/...`, `control`) when it runs as `streamer fake-incident-io`.
"""

from streamer.testing.fake_incident_io.contract import (
    AlertSource,
    ReceivedEvent,
    RecordedAnswer,
    http_date,
)
from streamer.testing.fake_incident_io.faults import Fault
from streamer.testing.fake_incident_io.server import Clock, FakeIncidentIo, standalone

__all__ = [
    "AlertSource",
    "Clock",
    "FakeIncidentIo",
    "Fault",
    "ReceivedEvent",
    "RecordedAnswer",
    "http_date",
    "standalone",
]
