"""The message path: whatever a message's bytes, it becomes jobs and never an exception."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamer.dead_letters import DeadLetter, SourceMessage
from streamer.decoding import EventDecoder, load_schema
from streamer.dispatch import Delivery
from streamer.intake import works_of
from streamer.ledger import OrderingKey
from streamer.telemetry import Telemetry
from streamer.testing.events import as_json
from tests.rules_helpers import SCHEMA, config_from
from tests.strategies import events

REASONS = ("decode:", "template", "route:", "internal:")
ROUTES = """
routes:
  - name: careless-regex
    match: ['labels.instance =~ "([a-z0-9]+-?)+prod"']
    destination: b
  - name: bomb
    match: ["labels.bomb = x"]
    templates: {title: "{{ 'a'.ljust(10**8) }}"}
    destination: a
  - name: when
    when: "labels.get('w', '') * 100000 == 'x'"
    destination: b
  - name: everything
    destination: a
"""

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
# Objects shaped like events, with any values: past the decoder's checks more often.
event_like = st.fixed_dictionaries(
    {},
    optional={
        "event_id": json_values,
        "event_time": json_values,
        "source_system": st.sampled_from(["ICINGA", "ALERTMANAGER"]) | json_values,
        "severity": st.sampled_from(["CRITICAL", "INFO"]) | json_values,
        "labels": st.dictionaries(
            st.sampled_from(["instance", "bomb", "w", "team"]), st.text(max_size=60)
        ),
        "check": json_values,
        "alert": json_values,
    },
)


@pytest.fixture(scope="module")
def rules(tmp_path_factory):
    return config_from(tmp_path_factory.mktemp("intake"), ROUTES).rules


def through(rules, decoder: EventDecoder, value: bytes | None):
    source = SourceMessage("events", 0, 7, b"k", value, ())
    works = works_of(source, {"events": decoder}, rules, Telemetry())
    for key, work in works:
        if isinstance(work, DeadLetter):
            assert key is None and work.reason.startswith(REASONS), work.reason
            assert work.message is source
        else:
            assert isinstance(key, OrderingKey) and isinstance(work, Delivery)
    return works


SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@SETTINGS
@given(value=st.none() | st.binary(max_size=300))
def test_arbitrary_bytes_become_jobs_never_an_exception(rules, value) -> None:
    reader = load_schema(SCHEMA)
    for decoder in (
        EventDecoder("json", reader),
        EventDecoder("raw", reader, writer_schema=reader),
        EventDecoder("single-object", reader),
    ):
        through(rules, decoder, value)


@SETTINGS
@given(value=json_values | event_like)
def test_arbitrary_json_becomes_jobs_never_an_exception(rules, value) -> None:
    try:
        encoded = json.dumps(value).encode()
    except ValueError:  # nan and infinities encode; nothing else should fail
        return
    through(rules, EventDecoder("json", load_schema(Path(SCHEMA))), encoded)


@SETTINGS
@given(
    event=events,
    labels=st.dictionaries(
        st.sampled_from(["instance", "bomb", "w"]),
        st.sampled_from(["x", "a" * 40 + "!", "prod", ""]) | st.text(max_size=50),
    ),
)
def test_valid_events_meeting_careless_rules_become_jobs(rules, event, labels) -> None:
    event = {**event, "labels": {**event["labels"], **labels}}
    works = through(rules, EventDecoder("json", load_schema(SCHEMA)), as_json(event))
    assert works, "the last route takes everything: delivered or dead-lettered, never dropped"
