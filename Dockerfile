# streamer's container image: `streamer run` as a non-root user on a slim Python base.
# Build: docker build -t streamer:0.1.0 .   (podman build works the same)
# The build stage needs no compiler: confluent-kafka (with librdkafka) and fastavro ship
# manylinux wheels for x86_64 and aarch64. Pin the base by digest where you mirror it.

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ONLY_BINARY=:all:
WORKDIR /src
COPY pyproject.toml README.md ./
COPY streamer ./streamer
# A venv at its final path; bytecode compiled now, since the root filesystem is read-only.
RUN python -m venv /opt/streamer \
    && /opt/streamer/bin/pip install --no-compile . \
    && /opt/streamer/bin/python -m compileall -q /opt/streamer/lib \
    && /opt/streamer/bin/pip uninstall --yes pip

FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="streamer" \
      org.opencontainers.image.description="Kafka monitoring events to incident.io alert events"
COPY --from=build /opt/streamer /opt/streamer
# The reader schemas; the ConfigMap's streamer.yaml names ../schemas/… from /etc/streamer/config.
COPY schemas/*.avsc /etc/streamer/schemas/
ENV PATH=/opt/streamer/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# A numeric non-root user (no entry in /etc/passwd needed), so runAsNonRoot can verify it.
USER 10001:10001
WORKDIR /tmp
EXPOSE 9464
# Kubernetes uses its own probes (/livez, /readyz); this serves plain `docker run`.
HEALTHCHECK --interval=30s --timeout=3s --start-period=60s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/livez', timeout=2)"]
ENTRYPOINT ["streamer", "run"]
CMD ["--config", "/etc/streamer/config/streamer.yaml"]
