"""A whole pipeline for integration tests: real broker, the incident.io double, the engine.

Each `Pipeline` gets its own topic, dead-letter topic and consumer group, so tests do
not see each other's data. The engine runs in a thread of the test process; `wait_for`
waits on a condition (with a generous limit), never on time.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streamer.config import load_config
from streamer.dead_letters import read_headers
from streamer.engine import Engine
from streamer.testing import FakeIncidentIo
from streamer.testing.infra import Infrastructure

SCHEMA = Path(__file__).parent.parent / "schemas" / "monitoring_event.v2.avsc"
TOKENS = {"TEST_TOKEN_A": "token-a-secret-1", "TEST_TOKEN_B": "token-b-secret-2"}


def check_event(host: str, state: str, *, team: str = "a", n: int = 0) -> dict[str, Any]:
    """A check result as JSON producers write it; host/check is its identity."""
    return {
        "event_id": str(uuid.uuid4()),
        "event_time": int(datetime(2026, 11, 26, tzinfo=UTC).timestamp() * 1000) + n,
        "source_system": "ICINGA",
        "severity": "CRITICAL",
        "labels": {"team": team, "n": str(n)},
        "check": {"host": host, "check": "disk", "state": state, "output": f"event {n}"},
    }


class Pipeline:
    def __init__(
        self,
        infra: Infrastructure,
        fake: FakeIncidentIo,
        tmp_path: Path,
        *,
        partitions: int = 3,
        delivery: str = "",
        tokens: dict[str, str] | None = None,
        kafka: dict[str, Any] | None = None,
        monkeypatch: Any = None,
        coalesce: str = "none",
    ) -> None:
        self.infra, self.fake = infra, fake
        suffix = uuid.uuid4().hex[:8]
        self.topic, self.dlq, self.group = f"events-{suffix}", f"dlq-{suffix}", f"streamer-{suffix}"
        admin = AdminClient({"bootstrap.servers": infra.bootstrap_servers})
        for name, count in ((self.topic, partitions), (self.dlq, 1)):
            admin.create_topics([NewTopic(name, num_partitions=count)])[name].result(30)
        for name, value in {**TOKENS, **(tokens or {})}.items():
            monkeypatch.setenv(name, value)
        self.config_path = tmp_path / "streamer.yaml"
        # Limits far above what tests send: tests that are about limits set their own.
        # Every event is sent (`coalesce: none`): tests of per-event guarantees count them;
        # tests of coalescing (the default in production) ask for `latest`.
        destination = {
            "token": {"env": "TEST_TOKEN_A"},
            "url": fake.url,
            "events_per_minute": 1_000_000,
            "coalesce": coalesce,
        }
        config = {
            "kafka": {
                "bootstrap_servers": infra.bootstrap_servers,
                "group_id": self.group,
                "dead_letter_topic": self.dlq,
                # a killed member's partitions move on after 6 s, not 45
                "properties": {"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000},
            },
            "reader_schema": str(SCHEMA),
            "topics": [{"name": self.topic, "format": "json"}],
            "destinations": {
                "a": {**destination, "alert_source_config_id": "SRC_A"},
                "b": {
                    **destination,
                    "alert_source_config_id": "SRC_B",
                    "token": {"env": "TEST_TOKEN_B"},
                },
            },
            "delivery": {
                "commit_interval_seconds": 0.2,
                "hold_retry_seconds": 0.5,
                "backoff_base_seconds": 0.05,
                "backoff_cap_seconds": 0.5,
                "revoke_drain_seconds": 5,
                "request_timeout_seconds": 5,
                "shutdown_grace_seconds": 10,
                "requests_per_minute_per_api_key": 1_000_000,
                **(yaml.safe_load(delivery) if delivery else {}),
            },
            "routes": [
                {"name": "to-b", "match": ["labels.team = b"], "destination": "b"},
                {"name": "to-a", "destination": "a"},
            ],
        }
        config["kafka"].update(kafka or {})
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.producer = Producer({"bootstrap.servers": infra.bootstrap_servers})
        self.engine: Engine | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.produced: list[tuple[bytes, bytes]] = []

    def produce(
        self, events: list[dict[str, Any] | bytes], key: Callable[[Any], str] | None = None
    ) -> None:
        for event in events:
            if isinstance(event, bytes):
                value, k = event, b"raw"
            else:
                value = json.dumps(event).encode()
                k = (key(event) if key else event["check"]["host"]).encode()
            self.producer.produce(self.topic, key=k, value=value)
            self.produced.append((k, value))
        assert self.producer.flush(30) == 0

    def start(self) -> Pipeline:
        self.engine = Engine(load_config(self.config_path))
        self._thread = threading.Thread(target=self.engine.run, args=(self._stop,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.producer.flush(10)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)
            assert not self._thread.is_alive(), "the engine did not stop within 60 s"

    def deliver_all(self, count: int) -> None:
        """Runs the engine until `count` alerts arrived and every offset is committed."""
        self.start()
        try:
            self.wait_for(lambda: len(self.fake.events) >= count, "all alerts delivered")
            self.wait_committed()
        finally:
            self.stop()

    def wait_committed(self) -> None:
        """Waits until the group's committed offsets reach the end of every partition."""
        self.wait_for(lambda: self.committed() == self.end_offsets(), "every offset committed")

    def wait_for(self, condition: Callable[[], bool], what: str, limit: float = 90) -> None:
        deadline = time.monotonic() + limit
        while not condition():
            if self._thread is not None and not self._thread.is_alive():
                raise AssertionError(f"the engine died while waiting for {what}")
            if time.monotonic() > deadline:
                if "committed" in what:
                    what += f" (committed {self.committed()}, end {self.end_offsets()})"
                raise AssertionError(
                    f"not within {limit:.0f} s: {what}; stats {self.engine and self.engine.stats}"
                )
            time.sleep(0.05)

    def delivered_statuses(self, source: str | None = None) -> dict[str, list[str]]:
        """Per deduplication key, the statuses incident.io received, in arrival order."""
        out: dict[str, list[str]] = {}
        for event in self.fake.events:
            if source is None or event.source_id == source:
                out.setdefault(event.payload["deduplication_key"], []).append(
                    event.payload["status"]
                )
        return out

    def committed(self) -> dict[int, int]:
        consumer = Consumer(
            {"bootstrap.servers": self.infra.bootstrap_servers, "group.id": self.group}
        )
        try:
            metadata = consumer.list_topics(self.topic, timeout=10)
            tps = [TopicPartition(self.topic, p) for p in metadata.topics[self.topic].partitions]
            # never committed (an empty partition has nothing to commit) reads as 0
            return {tp.partition: max(tp.offset, 0) for tp in consumer.committed(tps, timeout=10)}
        finally:
            consumer.close()

    def end_offsets(self) -> dict[int, int]:
        consumer = Consumer({"bootstrap.servers": self.infra.bootstrap_servers, "group.id": "x"})
        try:
            metadata = consumer.list_topics(self.topic, timeout=10)
            return {
                p: consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)[1]
                for p in metadata.topics[self.topic].partitions
            }
        finally:
            consumer.close()

    def dead_letters(
        self, expected: int
    ) -> list[tuple[bytes | None, bytes | None, dict[str, str]]]:
        consumer = Consumer(
            {
                "bootstrap.servers": self.infra.bootstrap_servers,
                "group.id": f"reader-{uuid.uuid4().hex[:6]}",
                "auto.offset.reset": "earliest",
            }
        )
        consumer.subscribe([self.dlq])
        letters = []
        deadline = time.monotonic() + 30
        try:
            while len(letters) < expected and time.monotonic() < deadline:
                message = consumer.poll(0.5)
                if message is not None and message.error() is None:
                    letters.append(
                        (message.key(), message.value(), read_headers(message.headers()))
                    )
            # anything more than expected is a failure too: look a little longer
            extra = consumer.poll(1.0)
            if extra is not None and extra.error() is None:
                letters.append((extra.key(), extra.value(), read_headers(extra.headers())))
        finally:
            consumer.close()
        return letters


class ServiceProcess:
    """`streamer run` as its own process, as it runs in production (signals, exit codes)."""

    def __init__(self, pipeline: Pipeline, log_path: Path, *args: str) -> None:
        import os
        import subprocess
        import sys

        self.log_path = log_path
        self._log = log_path.open("ab")
        env = {**TOKENS, **os.environ}  # a test's own tokens (monkeypatched) win
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamer",
                "run",
                "--config",
                str(pipeline.config_path),
                "--metrics-port",
                "0",
                *args,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def signal(self, number: int) -> None:
        self.process.send_signal(number)

    def joined(self) -> bool:
        """It has its signal handlers and took part in a rebalance (it logs "assigned")."""
        return "assigned" in self.log()

    def wait(self, timeout: float = 60) -> int:
        code = self.process.wait(timeout)
        self._log.close()
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class TcpForwarder:
    """A switchable network path to a real service: refused until `open()`.

    Used to make the real schema registry unreachable and then reachable again, without
    mocking it: the bytes that flow are the registry's own.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        import socket

        self.target = (target_host, target_port)
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()  # nothing listens: connections are refused until open()
        self._server: Any = None

    def open(self) -> None:
        import contextlib
        import socket
        import socketserver

        target = self.target

        class Pipe(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                upstream = socket.create_connection(target)

                def pump(src: Any, dst: Any) -> None:
                    try:
                        while data := src.recv(65536):
                            dst.sendall(data)
                    except OSError:
                        pass
                    finally:
                        for s in (src, dst):
                            with contextlib.suppress(OSError):
                                s.shutdown(socket.SHUT_RDWR)

                back = threading.Thread(target=pump, args=(upstream, self.request), daemon=True)
                back.start()
                pump(self.request, upstream)
                back.join(5)

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", self.port), Pipe)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
