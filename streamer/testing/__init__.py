"""Test helpers shipped with streamer, for its own tests and for its users'.

`FakeIncidentIo` is a contract-faithful incident.io Alert Events V2 double on loopback;
`local_infrastructure` provides a real Kafka broker and schema registry (testcontainers,
or external services named by environment variables).
"""

from streamer.testing.fake_incident_io import (
    AlertSource,
    FakeIncidentIo,
    Fault,
    ReceivedEvent,
    RecordedAnswer,
    http_date,
)

__all__ = [
    "AlertSource",
    "FakeIncidentIo",
    "Fault",
    "ReceivedEvent",
    "RecordedAnswer",
    "http_date",
]
