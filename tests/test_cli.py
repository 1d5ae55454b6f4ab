"""What a user sees from the `streamer` command."""

from __future__ import annotations

import base64
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from streamer.cli import build_parser
from streamer.testing.infra import Infrastructure


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamer", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


COMMANDS = [
    "run",
    "demo",
    "infra",
    "fake-incident-io",
    "rules check",
    "rules test",
    "dlq replay",
    "send",
    "silence add",
    "silence list",
    "silence expire",
    "silence import",
]


def test_help_names_every_command() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("run", "demo", "infra", "rules", "dlq", "send", "silence", "fake-incident-io"):
        assert command in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_explains_itself(command: str) -> None:
    result = run(*command.split(), "--help")
    assert result.returncode == 0
    assert len(result.stdout.splitlines()) > 4


@pytest.mark.parametrize(
    "command",
    [c for c in COMMANDS if c.split()[0] in ("run", "rules", "dlq", "send", "silence")],
)
def test_commands_reading_a_configuration_require_it_alike(command: str) -> None:
    help_text = run(*command.split(), "--help").stdout
    assert "--config FILE" in help_text
    assert "the YAML configuration" in help_text


def test_the_metrics_flags_read_the_same_for_run_and_demo() -> None:
    run_help = " ".join(run("run", "--help").stdout.split())
    demo_help = " ".join(run("demo", "--help").stdout.split())
    assert (
        "--metrics-port PORT port of /metrics (Prometheus), /livez and /readyz (default: 9464"
        in run_help
    )
    assert "--metrics-host ADDRESS address to serve them on (default: 0.0.0.0" in run_help
    assert (
        "--metrics-port PORT port of /metrics (Prometheus), /livez and /readyz on 127.0.0.1"
        in demo_help
    )
    assert "--metrics-host" not in demo_help  # the demo serves on loopback only


def test_everything_the_demo_reads_ships_as_package_data() -> None:
    # `streamer demo` from an installed wheel: each file it opens must be matched by
    # pyproject's package-data (a checkout has links there; the wheel has copies).
    import tomllib
    from pathlib import Path

    import yaml

    from streamer import demo

    package = Path(demo.__file__).parent
    root = package.parent
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["streamer"]
    shipped = {p for pattern in patterns for p in package.glob(pattern) if p.is_file()}
    config = yaml.safe_load(demo.EXAMPLE.read_text())
    token_files = [
        d["token"]["file"] for d in config["destinations"].values() if "file" in d["token"]
    ]
    wanted = [
        demo.EXAMPLE,
        demo.WRITER_SCHEMA,
        Path(os.path.normpath(demo.EXAMPLE.parent / config["reader_schema"])),
        *(Path(os.path.normpath(demo.EXAMPLE.parent / f)) for f in token_files),
    ]
    assert token_files, "the example no longer reads a token file: update this test"
    for path in wanted:
        assert path in shipped, f"{path} is read by the demo but not shipped in the wheel"
    # ... and they are the repository's examples, not copies that could drift
    assert demo.EXAMPLE.read_text() == (root / "examples" / "streamer.yaml").read_text()


def test_a_malformed_source_is_rejected_with_the_expected_form() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["fake-incident-io", "--source", "only-an-id"])
    result = run("fake-incident-io", "--source", "only-an-id")
    assert result.returncode == 2
    assert "expected ID:TOKEN" in result.stderr


@pytest.mark.integration
def test_demo_says_what_runs_where(infrastructure: Infrastructure) -> None:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": infrastructure.bootstrap_servers,
        "SCHEMA_REGISTRY_URL": infrastructure.schema_registry_url,
    }
    result = run("demo", "--check", "--metrics-port", "0", env=env)
    assert result.returncode == 0, result.stderr
    assert f"kafka:            {infrastructure.bootstrap_servers}" in result.stdout
    assert infrastructure.schema_registry_url in result.stdout
    assert "/v2/alert_events/http/" in result.stdout
    assert "metrics:          http://127.0.0.1:" in result.stdout
    assert "demo-" + "token" not in result.stdout  # tokens are never printed


@pytest.mark.integration
def test_demo_runs_the_pipeline_to_a_clean_finish(infrastructure: Infrastructure) -> None:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": infrastructure.bootstrap_servers,
        "SCHEMA_REGISTRY_URL": infrastructure.schema_registry_url,
    }
    result = run("demo", "--events", "80", "--rate", "200", "--metrics-port", "0", env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    final = result.stdout.split("streamer demo")[-1]
    numbers = {
        line.split()[0]: int(line.split()[1])
        for line in final.splitlines()
        if len(line.split()) >= 2 and line.split()[1].isdigit()
    }
    assert numbers["produced"] == numbers["consumed"] == 80
    # every alert event the rules made reached incident.io, or a newer state of its key did
    assert numbers["delivered"] + numbers.get("superseded", 0) == numbers["routed"] > 0
    assert numbers["delivered"] > 0 and numbers["dropped"] > 0 and numbers["lag"] == 0
    assert "nothing lost" in final


def _summary_numbers(screen: str) -> dict[str, int]:
    """The live summary's numbers by their first word (`rate-limit waits` is `rate-limit`)."""
    numbers = {}
    for line in screen.splitlines():
        match = re.match(r"\s+([a-z-]+)(?: [a-z.]+)?\s*(\d+)", line)
        if match and not line.lstrip().startswith(("incident.io", "messages", "alerts", "kafka")):
            numbers[match[1]] = int(match[2])
    return numbers


def _sum_line(screen: str, name: str) -> tuple[int, dict[str, int]]:
    """A reconciliation line `name  total T = a A + b B + ...`: (T, {a: A, b: B, ...})."""
    line = next(line for line in screen.splitlines() if line.split()[:1] == [name])
    left, right = re.sub(r"\(.*?\)", "", line).split("=")
    terms = {}
    for term in right.split("+"):
        *words, number = term.split()
        terms[" ".join(words)] = int(number)
    return int(left.split()[-1]), terms


@pytest.mark.integration
def test_a_demo_stopped_mid_way_accounts_for_every_message(infrastructure) -> None:
    # Stopped while deliveries wait on the alert sources' limits (120 a minute), some
    # delivered and some superseded already: what is left is handed to the next run, and
    # the last screen's sums add up and agree with the summary above them and with the
    # committed offsets.
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": infrastructure.bootstrap_servers,
        "SCHEMA_REGISTRY_URL": infrastructure.schema_registry_url,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "streamer", "demo", "--rate", "100", "--metrics-port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # one pipe: nothing waits on one nobody reads
        text=True,
        env=env,
    )
    assert process.stdout is not None
    screen: list[str] = []
    summaries = 0
    try:
        for line in process.stdout:  # a summary every 5 s, its last line about the double
            screen.append(line)
            if line.startswith("  incident.io double received"):
                numbers, screen, summaries = _summary_numbers("".join(screen)), [], summaries + 1
                seen = ("delivered", "superseded", "rate-limit", "lag")
                if all(numbers[name] > 0 for name in seen) or summaries > 40:
                    break  # alerts delivered and superseded, others waiting: stop mid-way
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, rest[-3000:]
    final = rest.split("streamer demo")[-1]
    summary = _summary_numbers(final.split("final reconciliation")[0])

    consumed, messages = _sum_line(final, "messages")
    assert consumed == summary["consumed"] == sum(messages.values()), final
    assert messages["dropped"] == summary["dropped"] > 0, final
    assert messages["delivered"] > 0 and messages["not finished"] > 0, final  # mid-way

    routed, alerts = _sum_line(final, "alerts")
    assert routed == summary["routed"] == sum(alerts.values()), final
    assert alerts["delivered"] == summary["delivered"], final
    assert alerts["superseded"] == summary["superseded"], final
    assert min(alerts.values()) >= 0, final

    lag, kafka = _sum_line(final, "kafka")
    assert lag == summary["lag"] == sum(kafka.values()) > 0, final
    assert kafka["not finished"] == messages["not finished"], final
    assert "done, read again" not in kafka, final  # the offset map held every finished one
    assert kafka["not read yet"] == summary["produced"] - summary["consumed"], final
    assert "nothing lost" in final and "NOT ADD UP" not in final, final


@pytest.mark.integration
@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM])
def test_demo_stops_cleanly_on_a_signal_even_from_a_script(infrastructure, signal_number) -> None:
    # Started from a script, SIGINT arrives ignored unless the command sets it itself.
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": infrastructure.bootstrap_servers,
        "SCHEMA_REGISTRY_URL": infrastructure.schema_registry_url,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "streamer", "demo", "--metrics-port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("service log:"):
            break
    process.send_signal(signal_number)
    assert process.wait(timeout=30) == 0


def test_run_with_an_unreachable_broker_fails_clearly_after_a_bounded_wait(tmp_path) -> None:
    from tests.rules_helpers import HEADER

    config = tmp_path / "streamer.yaml"
    config.write_text("kafka: {bootstrap_servers: '127.0.0.1:1'}\n" + HEADER + "routes: []\n")
    env = {**os.environ, "TOKEN_A": "a", "TOKEN_B": "b"}
    result = run("run", "--config", str(config), "--startup-timeout", "2", env=env)
    assert result.returncode == 2
    assert "the Kafka brokers at 127.0.0.1:1 did not answer within 2 s" in result.stderr


def test_run_refuses_an_invalid_configuration_before_consuming(tmp_path) -> None:
    config = tmp_path / "streamer.yaml"
    config.write_text("topics: []\n")
    result = run("run", "--config", str(config))
    assert result.returncode == 1
    assert "topics: must list at least one topic" in result.stderr


# -- the start-up registry probe ----------------------------------------------------------

FAKE_USER_INFO = "fake-user:fake-registry-password"


class _RegistryNeedingAuth(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        allowed = "Basic " + base64.b64encode(FAKE_USER_INFO.encode()).decode()
        if self.headers.get("Authorization") == allowed:
            status, body = 200, b"[]"
        else:
            status, body = 401, b'{"error_code": 401, "message": "Unauthorized"}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def registry_needing_auth():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RegistryNeedingAuth)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def registry_config(tmp_path, monkeypatch, url: str, user_info: str):
    from streamer.config import load_config
    from tests.rules_helpers import HEADER

    monkeypatch.setenv("TOKEN_A", "fake-a")
    monkeypatch.setenv("TOKEN_B", "fake-b")
    monkeypatch.setenv("REGISTRY_USER_INFO", user_info)
    path = tmp_path / "streamer.yaml"
    path.write_text(
        HEADER.replace("format: json", "format: confluent")
        + f"schema_registry:\n  url: {url}\n"
        + "  secret_properties:\n    basic.auth.user.info: {env: REGISTRY_USER_INFO}\n"
        + "routes: []\n"
    )
    return load_config(path)


def test_the_registry_probe_uses_the_configured_credentials(
    tmp_path, monkeypatch, registry_needing_auth
) -> None:
    from streamer.cli.run import registry_problem

    config = registry_config(tmp_path, monkeypatch, registry_needing_auth, FAKE_USER_INFO)
    assert registry_problem(config, timeout=10) is None


def test_a_refused_registry_probe_says_so_without_the_credentials(
    tmp_path, monkeypatch, registry_needing_auth
) -> None:
    from streamer import logs
    from streamer.cli.run import registry_problem

    wrong = "fake-user:fake-wrong-password"
    config = registry_config(tmp_path, monkeypatch, registry_needing_auth, wrong)
    monkeypatch.setattr(logs, "MASK", logs.SecretMask(config.secret_values()))
    problem = registry_problem(config, timeout=10)
    assert problem == (
        f"the schema registry at {registry_needing_auth} refused the configured credentials "
        "(HTTP 401); check basic.auth.user.info (or bearer.auth.*) in "
        "schema_registry.secret_properties"
    )


def test_a_silent_registry_fails_the_probe_within_the_start_up_timeout(
    tmp_path, monkeypatch
) -> None:
    from streamer.cli.run import registry_problem

    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        config = registry_config(tmp_path, monkeypatch, url, FAKE_USER_INFO)
        problem = registry_problem(config, timeout=1)
    assert problem is not None and problem.startswith(
        f"the schema registry at {url} did not answer within 1 s"
    )
