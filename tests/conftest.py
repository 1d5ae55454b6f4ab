"""Shared fixtures: one real broker + registry per test session, a clock tests move."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from streamer.testing import AlertSource, FakeIncidentIo
from streamer.testing.infra import Infrastructure, local_infrastructure


class ManualClock:
    """Epoch seconds that move only when a test says so (no test sleeps for timing)."""

    def __init__(self, start: float = 1_790_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def fake() -> Iterator[FakeIncidentIo]:
    """The incident.io double with the two sources tests/pipeline.py configures, and limits
    far above what tests send (tests about limits make their own)."""
    from tests.pipeline import TOKENS

    with FakeIncidentIo(
        [
            AlertSource("SRC_A", TOKENS["TEST_TOKEN_A"], events_per_minute=1_000_000),
            AlertSource("SRC_B", TOKENS["TEST_TOKEN_B"], events_per_minute=1_000_000),
        ],
        requests_per_minute_per_token=10_000_000,
    ) as fake:
        yield fake


@pytest.fixture(scope="session")
def infrastructure() -> Iterator[Infrastructure]:
    """A real Kafka broker and schema registry; an error (never a skip) if none can start."""
    with local_infrastructure() as infra:
        yield infra


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # A skipped test is a test that did not run: make it fail the suite, so a missing
    # broker or dependency can never turn into a green build.
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if skipped and not os.environ.get("STREAMER_ALLOW_SKIPS"):
        if reporter:
            reporter.write_line(
                f"{skipped} test(s) skipped: skips fail this suite "
                "(set STREAMER_ALLOW_SKIPS=1 to allow them locally)",
                red=True,
            )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
