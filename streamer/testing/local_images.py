"""A container engine and images for machines that have no Docker engine.

Where no Docker-compatible engine is reachable (this project's CI machines, for one),
Podman's Docker-compatible API service stands in for it and the two images the tests
need are built here from Apache Kafka's and Apicurio Registry's Maven Central artifacts
on a JRE base made with `jlink`. The built images take the same configuration as the
official `apache/kafka` and `apicurio/apicurio-registry` images, so one container
definition (`streamer.testing.infra`) runs either.

Invariants: images are tagged with a digest of everything that went into them, so a
warm cache never rebuilds and a changed recipe always does; downloads live under the
cache folder (`STREAMER_CACHE_DIR`, `.cache/` in this repository); nothing outside
that folder is changed except installing Debian packages when podman is missing.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from streamer.errors import StreamerError

KAFKA_VERSION = "4.1.1"
# Bump when jre_base_image() changes what goes into the base image: its tag (and so every
# image built on it) carries this, so a warm cache is never stale and never rebuilt for less.
_JRE_RECIPE = "1"
APICURIO_VERSION = "3.0.9"

_IMAGES_DIR = Path(__file__).parent / "images"

# What the notes in shared/notes/containers-without-docker.md measured: podman's default
# nofile limit exceeds what these machines allow, and crun cannot run on their mixed
# cgroup hierarchy.
_CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
"""

_DEBIAN_PACKAGES = [
    "podman",
    "runc",
    "conmon",
    "netavark",
    "aardvark-dns",
    "containernetworking-plugins",
    "iptables",
    "golang-github-containers-common",
    "catatonit",
    "busybox-static",
]


class InfrastructureUnavailable(StreamerError, RuntimeError):
    """Nothing on this machine can provide the broker or the registry; says what to install."""


def cache_dir() -> Path:
    path = Path(os.environ.get("STREAMER_CACHE_DIR", Path.home() / ".cache" / "streamer"))
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def _log(message: str) -> None:
    print(f"[streamer.testing] {message}", file=sys.stderr, flush=True)


def _podman_env() -> dict[str, str]:
    conf = cache_dir() / "podman" / "containers.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    if not conf.exists() or conf.read_text() != _CONTAINERS_CONF:
        conf.write_text(_CONTAINERS_CONF)
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def _run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        raise InfrastructureUnavailable(
            f"`{' '.join(args[:4])} …` failed (exit {result.returncode}):\n"
            f"{(result.stderr or result.stdout)[-3000:]}"
        )
    return result  # type: ignore[no-any-return]


def ensure_podman_installed() -> None:
    if shutil.which("podman") and shutil.which("busybox"):
        return
    missing = "podman" if not shutil.which("podman") else "busybox"
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise InfrastructureUnavailable(
            f"No Docker engine is reachable and {missing} is not installed. Either start Docker, "
            f"or install podman (Debian: apt-get install {' '.join(_DEBIAN_PACKAGES)}), or point "
            "the tests at running services with KAFKA_BOOTSTRAP_SERVERS and SCHEMA_REGISTRY_URL."
        )
    _log(f"installing {' '.join(_DEBIAN_PACKAGES)} (Debian packages, once per machine)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "update", "-qq"], env=env)
    _run(["apt-get", "install", "-y", "-qq", *_DEBIAN_PACKAGES], env=env)


@dataclass
class PodmanService:
    """Podman's Docker-compatible API on a unix socket under the cache folder."""

    socket: Path
    process: subprocess.Popen[bytes] | None  # None when an earlier one is reused

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def _pings(socket: Path) -> bool:
    import docker  # testcontainers' own dependency

    try:
        client = docker.DockerClient(base_url=f"unix://{socket}", timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


@contextmanager
def podman_service() -> Iterator[PodmanService]:
    """Starts podman's API service (or reuses one already answering) for the block."""
    ensure_podman_installed()
    socket = cache_dir() / "podman" / "podman.sock"
    socket.parent.mkdir(parents=True, exist_ok=True)
    if _pings(socket):
        yield PodmanService(socket, None)
        return
    socket.unlink(missing_ok=True)
    log = (cache_dir() / "podman" / "service.log").open("ab")
    process = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{socket}"],
        env=_podman_env(),
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    service = PodmanService(socket, process)
    try:
        deadline = time.monotonic() + 20
        while not _pings(socket):
            if process.poll() is not None or time.monotonic() > deadline:
                raise InfrastructureUnavailable(
                    f"podman's API service did not answer on {socket}; see {log.name}"
                )
            time.sleep(0.1)
        yield service
    finally:
        service.stop()
        log.close()


# -- images ------------------------------------------------------------------------------


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:12]


def _image_exists(tag: str) -> bool:
    return (
        subprocess.run(
            ["podman", "image", "exists", tag], env=_podman_env(), capture_output=True
        ).returncode
        == 0
    )


def _recipe(name: str) -> list[bytes]:
    folder = _IMAGES_DIR / name
    return [p.name.encode() + p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()]


def _require_tools(*tools: str) -> None:
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        raise InfrastructureUnavailable(
            f"building the local images needs {', '.join(missing)} on PATH "
            "(a JDK 17 with jlink, and Maven): install them (Debian: openjdk-17-jdk-headless "
            "maven) or start a Docker engine so the official images are used."
        )


def _copy_with_libraries(binaries: list[Path], rootfs: Path) -> None:
    """Copies into rootfs every shared library `ldd` lists for the binaries."""
    needed: set[str] = set()
    for binary in binaries:
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True).stdout
        for line in out.splitlines():
            words = line.split()
            path = words[2] if len(words) >= 3 and words[1] == "=>" else words[0] if words else ""
            if path.startswith("/"):
                needed.add(path)
    for lib in needed:
        target = rootfs / lib.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(lib), target)


def jre_base_image() -> str:
    """A minimal image: a jlinked JRE at /opt/java, busybox, and the libraries both need."""
    _require_tools("jlink", "java")
    java_version = _run(["java", "-version"]).stderr.splitlines()[0]
    tag = f"localhost/streamer/jre:17-{_digest(java_version, _JRE_RECIPE)}"
    if _image_exists(tag):
        return tag
    _log(f"building {tag} (jlink + busybox, once)")
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        rootfs = Path(tmp) / "rootfs"
        modules = ",".join(
            line.split("@")[0] for line in _run(["java", "--list-modules"]).stdout.split()
        )
        _run(
            [
                "jlink",
                "--add-modules",
                modules,
                "--strip-debug",
                "--no-man-pages",
                "--no-header-files",
                "--output",
                str(rootfs / "opt" / "java"),
            ]
        )
        java_home = rootfs / "opt" / "java"
        busybox = Path(shutil.which("busybox") or "/bin/busybox")
        binaries = [*java_home.glob("bin/*"), *java_home.rglob("*.so"), busybox]
        _copy_with_libraries(binaries, rootfs)
        (rootfs / "bin").mkdir(parents=True, exist_ok=True)
        shutil.copy2(busybox, rootfs / "bin" / "busybox")
        for applet in _run([str(busybox), "--list"]).stdout.split():
            link = rootfs / "bin" / applet
            if not link.exists():
                link.symlink_to("busybox")
        (rootfs / "etc").mkdir(exist_ok=True)
        (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        (rootfs / "etc" / "group").write_text("root:x:0:\n")
        for folder in ("tmp", "root", "var/tmp"):
            (rootfs / folder).mkdir(parents=True, exist_ok=True)
            (rootfs / folder).chmod(0o1777)
        archive = Path(tmp) / "rootfs.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(rootfs, arcname=".")
        _run(
            [
                "podman",
                "import",
                "--change",
                "ENV PATH=/opt/java/bin:/bin",
                str(archive),
                tag,
            ],
            env=_podman_env(),
        )
    return tag


def _maven(*args: str) -> None:
    _require_tools("mvn")
    repo = cache_dir() / "m2"
    _run(["mvn", "-q", "-B", f"-Dmaven.repo.local={repo}", *args])


def _build(tag: str, context: Path, base: str) -> None:
    _run(
        [
            "podman",
            "build",
            "--quiet",
            "--build-arg",
            f"BASE={base}",
            "-t",
            tag,
            str(context),
        ],
        env=_podman_env(),
    )


def kafka_image() -> str:
    """Apache Kafka's broker (KRaft), configured like apache/kafka by KAFKA_* variables."""
    base = jre_base_image()
    tag = f"localhost/streamer/kafka:{KAFKA_VERSION}-{_digest(base, *_recipe('kafka'))}"
    if _image_exists(tag):
        return tag
    _log(f"building {tag} from Maven Central's Kafka {KAFKA_VERSION} jars (once)")
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        context = Path(tmp)
        shutil.copytree(_IMAGES_DIR / "kafka", context, dirs_exist_ok=True)
        _maven(
            "-f",
            str(context / "pom.xml"),
            f"-Dkafka.version={KAFKA_VERSION}",
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={context / 'libs'}",
        )
        _build(tag, context, base)
    return tag


def registry_image() -> str:
    """Apicurio Registry (in-memory storage), configured like apicurio/apicurio-registry."""
    base = jre_base_image()
    tag = f"localhost/streamer/apicurio-registry:{APICURIO_VERSION}-" + _digest(
        base, *_recipe("apicurio")
    )
    if _image_exists(tag):
        return tag
    _log(f"building {tag} from Maven Central's Apicurio Registry {APICURIO_VERSION} (once)")
    artifact = f"io.apicurio:apicurio-registry-app:{APICURIO_VERSION}:tar.gz:all"
    _maven("dependency:get", f"-Dartifact={artifact}", "-Dtransitive=false")
    tarball = (
        cache_dir()
        / "m2"
        / "io"
        / "apicurio"
        / "apicurio-registry-app"
        / APICURIO_VERSION
        / f"apicurio-registry-app-{APICURIO_VERSION}-all.tar.gz"
    )
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        context = Path(tmp)
        shutil.copytree(_IMAGES_DIR / "apicurio", context, dirs_exist_ok=True)
        with tarfile.open(tarball) as tar:
            tar.extractall(context / "app", filter="data")
        runner = next((context / "app").glob("*-runner.jar"))
        runner.rename(context / "app" / "registry-runner.jar")
        _build(tag, context, base)
    return tag


def main() -> None:
    """`python -m streamer.testing.local_images`: build (or confirm) both images now."""
    with podman_service():
        for image in (kafka_image(), registry_image()):
            print(image)


if __name__ == "__main__":
    main()
