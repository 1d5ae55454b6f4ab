"""Shared fixtures: one real broker + registry per test session, a clock tests move.

Under pytest-xdist (`make test` runs `pytest -n 2`) the broker and registry are still one
pair for the whole run: the controller builds the images (if missing) before the workers
start, then starts both containers on a thread of its own while the workers collect and run
the tests that need no broker; it writes their addresses (or why they could not start) to a
state file the workers' `infrastructure` fixture waits for. Every test makes its own
topics, groups and subjects, so the workers never share one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from streamer.testing import AlertSource, FakeIncidentIo
from streamer.testing.infra import Infrastructure, InfrastructureUnavailable, local_infrastructure

# How long a worker waits for the controller's broker and registry (their start and
# readiness: ~30 s warm; the images are built before the workers start).
_INFRA_WAIT_S = 240.0
_STATE_KEY = "streamer_infra_state"
_SHARED = pytest.StashKey[tuple[Path, threading.Event, threading.Thread]]()


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
def infrastructure(request: pytest.FixtureRequest) -> Iterator[Infrastructure]:
    """A real Kafka broker and schema registry; an error (never a skip) if none can start."""
    workerinput: dict[str, Any] | None = getattr(request.config, "workerinput", None)
    if workerinput and workerinput.get(_STATE_KEY):
        yield _shared_infrastructure(Path(workerinput[_STATE_KEY]))
        return
    with local_infrastructure() as infra:
        yield infra


# -- one broker for all xdist workers ----------------------------------------------------


def _shared_infrastructure(state: Path) -> Infrastructure:
    """The controller's broker and registry, once its state file says they are ready."""
    deadline = time.monotonic() + _INFRA_WAIT_S
    while not state.exists():
        if time.monotonic() > deadline:
            raise InfrastructureUnavailable(
                f"the test run's broker and registry were not ready within {_INFRA_WAIT_S:.0f} s"
            )
        time.sleep(0.2)
    content = json.loads(state.read_text())
    if "error" in content:
        raise InfrastructureUnavailable(
            f"the test run's broker and registry could not start:\n{content['error']}"
        )
    return Infrastructure(**content)


def _write_state(state: Path, content: dict[str, Any]) -> None:
    partial = state.with_suffix(".partial")
    partial.write_text(json.dumps(content))
    partial.rename(state)  # atomic: a worker never reads half a file


def _serve_infrastructure(state: Path, done: threading.Event) -> None:
    try:
        with local_infrastructure() as infra:
            _write_state(state, asdict(infra))
            done.wait()
    except BaseException:  # the workers' tests error with the reason, never skip
        if not state.exists():
            _write_state(state, {"error": traceback.format_exc()[-4000:]})


def prebuild_images() -> None:
    """Builds the local images where they are needed and missing (no external services, no
    Docker engine), before any test's timeout runs: `make test-images` and the controller."""
    from streamer.testing import infra, local_images

    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") and os.environ.get("SCHEMA_REGISTRY_URL"):
        return
    if infra._docker_engine_reachable():
        return
    local_images.ensure_podman_installed()
    local_images.kafka_image()
    local_images.registry_image()


def _runs_integration_tests(config: pytest.Config) -> bool:
    return "not integration" not in (config.getoption("markexpr", "") or "")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_setupnodes(config: pytest.Config, specs: list[Any]) -> None:
    """On the controller, before the workers start: one broker and registry for all."""
    if not specs or not _runs_integration_tests(config):
        return
    # An error here is met again by the thread below, which hands it to the workers' tests.
    with contextlib.suppress(InfrastructureUnavailable):
        prebuild_images()
    state = Path(tempfile.mkdtemp(prefix="streamer-test-infra-")) / "state.json"
    done = threading.Event()
    thread = threading.Thread(
        target=_serve_infrastructure, args=(state, done), name="test-infrastructure"
    )
    thread.daemon = True
    config.stash[_SHARED] = (state, done, thread)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    shared = node.config.stash.get(_SHARED, None)
    if shared is not None:
        node.workerinput[_STATE_KEY] = str(shared[0])


@pytest.hookimpl(optionalhook=True)
def pytest_testnodeready(node: Any) -> None:
    # Started once every worker process exists: the podman set-up changes the controller's
    # environment (DOCKER_HOST), which no worker should inherit.
    shared = node.config.stash.get(_SHARED, None)
    if shared is not None and shared[2].ident is None:
        shared[2].start()


def pytest_unconfigure(config: pytest.Config) -> None:
    shared = config.stash.get(_SHARED, None)
    if shared is not None:
        state, done, thread = shared
        done.set()
        if thread.ident is not None:
            thread.join(timeout=60)  # the containers stop (they are removed next run if not)
        for path in (state, state.with_suffix(".partial")):
            path.unlink(missing_ok=True)
        state.parent.rmdir()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # A skipped test is a test that did not run: make it fail the suite, so a missing
    # broker or dependency can never turn into a green build. Under xdist the controller's
    # reporter holds every worker's reports, so the check is the same.
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
