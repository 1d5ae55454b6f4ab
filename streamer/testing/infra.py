"""A real Kafka broker and schema registry for tests, the demo and benchmarks.

One entry point, `local_infrastructure()`, gives a `Infrastructure` (bootstrap servers
and a Confluent-compatible registry URL), chosen in this order:

1. `KAFKA_BOOTSTRAP_SERVERS` / `SCHEMA_REGISTRY_URL` set: those external services;
2. a Docker-compatible engine reachable: testcontainers runs the official images
   (`apache/kafka`, `apicurio/apicurio-registry`);
3. neither: Podman's API service is started and the same testcontainers code runs
   images built locally from Maven Central (`streamer.testing.local_images`).

Readiness is proven by a real admin call (Kafka) and a real API call (registry), never
by a sleep. Containers are removed on exit; containers left behind by a process that
was killed are removed the next time.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from streamer.testing.local_images import (
    APICURIO_VERSION,
    KAFKA_VERSION,
    InfrastructureUnavailable,
    kafka_image,
    podman_service,
    registry_image,
)

OFFICIAL_KAFKA_IMAGE = f"apache/kafka:{KAFKA_VERSION}"
OFFICIAL_REGISTRY_IMAGE = f"apicurio/apicurio-registry:{APICURIO_VERSION}"
CCOMPAT_PATH = "/apis/ccompat/v7"
_LABEL = "streamer.testing.owner-pid"
_READY_TIMEOUT_S = 90.0

__all__ = [
    "Infrastructure",
    "InfrastructureUnavailable",
    "KafkaBroker",
    "SchemaRegistry",
    "local_infrastructure",
]


@dataclass(frozen=True)
class Infrastructure:
    bootstrap_servers: str
    schema_registry_url: str  # Confluent-compatible base URL (Apicurio's /apis/ccompat/v7)
    provided_by: str  # "external", "docker" or "podman (local images)"
    # A SASL_PLAINTEXT (SCRAM) listener of the same broker; None for an external broker
    # unless KAFKA_SASL_BOOTSTRAP_SERVERS names one.
    sasl_bootstrap_servers: str | None = None

    def add_scram_user(self, user: str, password: str, mechanism: str = "SCRAM-SHA-256") -> None:
        """Creates (or updates) SCRAM credentials through the admin API."""
        from confluent_kafka.admin import AdminClient
        from confluent_kafka.admin._scram import (
            ScramCredentialInfo,
            ScramMechanism,
            UserScramCredentialUpsertion,
        )

        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers})
        info = ScramCredentialInfo(ScramMechanism[mechanism.replace("-", "_")], 4096)
        upsert = UserScramCredentialUpsertion(user, info, password.encode())
        for future in admin.alter_user_scram_credentials([upsert]).values():
            future.result(30)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _container_class() -> Any:
    try:
        from testcontainers.core.container import DockerContainer
    except ImportError as e:  # pragma: no cover - depends on the install
        raise InfrastructureUnavailable(
            "testcontainers is not installed: pip install 'streamer[dev]' (make does this)"
        ) from e
    return DockerContainer


def _wait(what: str, container: Any, ready: Any) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT_S
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except Exception as e:  # the service is not up yet; keep the reason for the error
            last_error = e
        container.get_wrapped_container().reload()
        if container.get_wrapped_container().status == "exited":
            break
        time.sleep(0.2)
    out, err = container.get_logs()
    tail = (out + err).decode(errors="replace")[-3000:]
    raise InfrastructureUnavailable(
        f"{what} did not become ready within {_READY_TIMEOUT_S:.0f} s "
        f"(last error: {last_error}); container log tail:\n{tail}"
    )


class KafkaBroker:
    """A single-node Apache Kafka in KRaft mode, configured as the official image is.

    The client listener uses the same port inside and outside the container, so the
    advertised address is right before the container starts (no restart, no script).
    """

    def __init__(self, image: str, host: str = "127.0.0.1", partitions: int = 4) -> None:
        self.port, self.sasl_port = _free_port(), _free_port()
        self.host = host
        self.container = _container_class()(image)
        self.container.with_bind_ports(self.port, self.port)
        self.container.with_bind_ports(self.sasl_port, self.sasl_port)
        self.container.with_kwargs(labels={_LABEL: str(os.getpid())})
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        self.container.with_envs(
            KAFKA_NODE_ID="1",
            KAFKA_PROCESS_ROLES="broker,controller",
            KAFKA_LISTENERS=(
                f"PLAINTEXT://0.0.0.0:{self.port},"
                f"SASL_PLAINTEXT://0.0.0.0:{self.sasl_port},CONTROLLER://localhost:9093"
            ),
            KAFKA_ADVERTISED_LISTENERS=(
                f"PLAINTEXT://{host}:{self.port},SASL_PLAINTEXT://{host}:{self.sasl_port}"
            ),
            KAFKA_CONTROLLER_LISTENER_NAMES="CONTROLLER",
            KAFKA_LISTENER_SECURITY_PROTOCOL_MAP=(
                "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT"
            ),
            KAFKA_INTER_BROKER_LISTENER_NAME="PLAINTEXT",
            KAFKA_CONTROLLER_QUORUM_VOTERS="1@localhost:9093",
            # A second listener authenticating with SCRAM, for the clients' SASL settings;
            # users are added with `add_scram_user` (the admin API works on every image).
            KAFKA_SASL_ENABLED_MECHANISMS="SCRAM-SHA-256,SCRAM-SHA-512",
            KAFKA_LISTENER_NAME_SASL__PLAINTEXT_SCRAM___SHA___256_SASL_JAAS_CONFIG=scram,
            KAFKA_LISTENER_NAME_SASL__PLAINTEXT_SCRAM___SHA___512_SASL_JAAS_CONFIG=scram,
            KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR="1",
            KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR="1",
            KAFKA_TRANSACTION_STATE_LOG_MIN_ISR="1",
            KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS="0",
            KAFKA_NUM_PARTITIONS=str(partitions),
            KAFKA_LOG_DIRS="/tmp/kraft-combined-logs",
        )

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        self.container.start()

    def wait_ready(self) -> None:
        from confluent_kafka.admin import AdminClient

        # log_level 0: "connection refused" while the broker boots is expected, not news.
        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers, "log_level": 0})

        def ready() -> bool:
            metadata = admin.list_topics(timeout=2)
            return len(metadata.brokers) > 0

        _wait(f"Kafka broker at {self.bootstrap_servers}", self.container, ready)

    def stop(self) -> None:
        self.container.stop()


class SchemaRegistry:
    """Apicurio Registry 3.x, in-memory storage, Confluent-compatible API."""

    def __init__(self, image: str, host: str = "127.0.0.1") -> None:
        self.port = _free_port()
        self.host = host
        self.container = _container_class()(image)
        self.container.with_bind_ports(8080, self.port)
        self.container.with_kwargs(labels={_LABEL: str(os.getpid())})

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{CCOMPAT_PATH}"

    def start(self) -> None:
        self.container.start()

    def wait_ready(self) -> None:
        def ready() -> bool:
            return httpx.get(f"{self.url}/subjects", timeout=2).status_code == 200

        _wait(f"schema registry at {self.url}", self.container, ready)

    def stop(self) -> None:
        self.container.stop()


def _docker_engine_reachable() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def _remove_orphans() -> None:
    """Removes containers whose owning process is gone (killed before it could clean up)."""
    import docker

    client = docker.from_env(timeout=10)
    try:
        for container in client.containers.list(all=True, filters={"label": _LABEL}):
            pid = int(container.labels.get(_LABEL, "0"))
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                container.remove(force=True)
            except PermissionError:
                pass
    finally:
        client.close()


@contextmanager
def _podman_engine() -> Iterator[None]:
    """Points testcontainers at podman's API for the block; ryuk cannot be pulled here."""
    from testcontainers.core.config import ConnectionMode
    from testcontainers.core.config import testcontainers_config as config

    saved = (
        os.environ.get("DOCKER_HOST"),
        config.ryuk_disabled,
        config.connection_mode_override,
        config.tc_host_override,
    )
    with podman_service() as service:
        os.environ["DOCKER_HOST"] = service.docker_host
        config.ryuk_disabled = True
        # Because of /.dockerenv testcontainers would otherwise look for a gateway IP and
        # read a HostConfig key podman 4.3's container list lacks; ports publish on loopback.
        config.connection_mode_override = ConnectionMode.docker_host
        config.tc_host_override = "127.0.0.1"
        try:
            yield
        finally:
            if saved[0] is None:
                os.environ.pop("DOCKER_HOST", None)
            else:
                os.environ["DOCKER_HOST"] = saved[0]
            (config.ryuk_disabled, config.connection_mode_override, config.tc_host_override) = (
                saved[1:]
            )


@contextmanager
def local_infrastructure(*, partitions: int = 4) -> Iterator[Infrastructure]:
    """Yields a ready broker and registry; see the module docstring for which ones."""
    external_kafka = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    external_registry = os.environ.get("SCHEMA_REGISTRY_URL")
    external_sasl = os.environ.get("KAFKA_SASL_BOOTSTRAP_SERVERS")
    if external_kafka and external_registry:
        yield Infrastructure(
            external_kafka, external_registry.rstrip("/"), "external", external_sasl
        )
        return
    with ExitStack() as stack:
        if _docker_engine_reachable():
            provided_by = "docker"
            images = (OFFICIAL_KAFKA_IMAGE, OFFICIAL_REGISTRY_IMAGE)
        else:
            provided_by = "podman (local images)"
            stack.enter_context(_podman_engine())
            images = (kafka_image(), registry_image())
        _remove_orphans()
        services: list[KafkaBroker | SchemaRegistry] = []
        if not external_kafka:
            services.append(KafkaBroker(images[0], partitions=partitions))
        if not external_registry:
            services.append(SchemaRegistry(images[1]))
        for service in services:  # start all, then wait: the JVMs boot in parallel
            stack.callback(service.stop)
            service.start()
        for service in services:
            service.wait_ready()
        broker = next((s for s in services if isinstance(s, KafkaBroker)), None)
        registry = next((s for s in services if isinstance(s, SchemaRegistry)), None)
        yield Infrastructure(
            external_kafka or (broker.bootstrap_servers if broker else ""),
            (external_registry or (registry.url if registry else "")).rstrip("/"),
            provided_by,
            external_sasl or (f"{broker.host}:{broker.sasl_port}" if broker else None),
        )
