"""Silences in a running group of `streamer run` processes, with the real broker.

What an operator sees: a silence added with `streamer silence add` mutes the group (both
replicas) at once, a replica started while it is active honours it from its first message,
and once it ends the alerts flow again. Waits are generous; the time from `add` to every
replica showing the silence is printed, not asserted (bench/quiet.py measures).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import UTC, datetime

import pytest

from streamer.silence_book import ensure_topic
from tests.pipeline import TOKENS, Pipeline, ServiceProcess, check_event

pytestmark = pytest.mark.integration

SILENCE_SECONDS = 40


def metrics_url(process: ServiceProcess, pipeline: Pipeline) -> str:
    found: list[str] = []

    def printed() -> bool:
        found[:] = re.findall(r"metrics: (http://\S+)/metrics", process.log())
        return bool(found)

    pipeline.wait_for(printed, "the metrics address printed")
    return found[0]


def metric(url: str, name: str, **labels: str) -> float:
    """The sum of `name`'s samples with these labels, as Prometheus scrapes them."""
    text = urllib.request.urlopen(f"{url}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def streamer(pipeline: Pipeline, *argv: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "streamer", *argv, "--config", str(pipeline.config_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**TOKENS, **os.environ},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def events(team: str, count: int, tag: str) -> list[dict]:
    return [check_event(f"{tag}-{i}", "CRITICAL", team=team, n=i) for i in range(count)]


def delivered_hosts(pipeline: Pipeline) -> set[str]:
    return {e.payload["deduplication_key"].split("//")[0] for e in pipeline.fake.events}


def test_a_silence_mutes_the_running_group_a_restarted_replica_and_ends_on_time(
    infrastructure, fake, tmp_path, monkeypatch
) -> None:
    silences = f"silences-{uuid.uuid4().hex[:8]}"
    pipeline = Pipeline(
        infrastructure, fake, tmp_path, monkeypatch=monkeypatch, kafka={"silence_topic": silences}
    )
    # as deployed: the topic exists (the first `silence add` ever creates it, and replicas
    # that started before notice it within the follower's retry, ~2 s)
    ensure_topic({"bootstrap.servers": infrastructure.bootstrap_servers}, silences)
    replicas = [ServiceProcess(pipeline, tmp_path / f"{n}.log") for n in ("one", "two")]
    try:
        urls = [metrics_url(r, pipeline) for r in replicas]
        pipeline.wait_for(lambda: all(r.joined() for r in replicas), "both replicas joined")
        before = events("a", 6, "before")
        pipeline.produce(before)
        pipeline.wait_for(
            lambda: delivered_hosts(pipeline) >= {e["check"]["host"] for e in before}, "alerts flow"
        )

        # the operator silences team a, for SILENCE_SECONDS
        added = time.monotonic()
        silence_id = streamer(
            pipeline, "silence", "add", "--matcher", 'team="a"',
            "--duration", f"{SILENCE_SECONDS}s", "--comment", "maintenance", "--author", "test",
        ).strip()  # fmt: skip
        written = time.monotonic()
        pipeline.wait_for(
            lambda: all(
                metric(u, "streamer_silences_active", silence=silence_id) == 1 for u in urls
            ),
            "every replica shows the silence",
            limit=30,
        )
        print(
            f"the silence applied in both replicas {time.monotonic() - written:.2f} s after "
            f"`silence add` returned ({written - added:.2f} s for the command itself)"
        )
        (listed,) = json.loads(streamer(pipeline, "silence", "list", "-o", "json"))
        ends_at = datetime.fromisoformat(listed["endsAt"])

        during = events("a", 12, "during")
        other = events("b", 6, "other")
        pipeline.produce(during + other)
        pipeline.wait_for(
            lambda: delivered_hosts(pipeline) >= {e["check"]["host"] for e in other},
            "team b's alerts delivered",
        )
        pipeline.wait_committed()  # the silenced ones are terminal and committed
        assert not delivered_hosts(pipeline) & {e["check"]["host"] for e in during}
        silenced = sum(metric(u, "streamer_messages_silenced_total") for u in urls)
        assert silenced == len(during)
        by_id = sum(metric(u, "streamer_events_silenced_total", silence=silence_id) for u in urls)
        assert by_id == len(during)
        pending = json.loads(urllib.request.urlopen(f"{urls[0]}/pending", timeout=5).read())
        assert [s["id"] for s in pending["silences"]] == [silence_id]

        # the whole group restarts mid-silence; alerts wait in Kafka meanwhile
        for r in replicas:
            r.signal(signal.SIGTERM)
        for r in replicas:
            assert r.wait() == 0, r.log()[-2000:]
        while_down = events("a", 9, "restart")
        pipeline.produce(while_down)
        assert datetime.now(UTC) < ends_at, "the test ran too slowly to restart mid-silence"
        restarted = ServiceProcess(pipeline, tmp_path / "three.log")
        replicas = [restarted]
        url = metrics_url(restarted, pipeline)
        pipeline.wait_committed()
        assert not delivered_hosts(pipeline) & {e["check"]["host"] for e in while_down}
        assert metric(url, "streamer_messages_silenced_total") == len(while_down)

        # it ends on time: what comes after its end is delivered
        while datetime.now(UTC) <= ends_at:
            time.sleep(0.2)
        after = events("a", 6, "after")
        pipeline.produce(after)
        pipeline.wait_for(
            lambda: delivered_hosts(pipeline) >= {e["check"]["host"] for e in after},
            "alerts flow again after the silence ends",
        )
        assert metric(url, "streamer_silences_active", silence=silence_id) == 0
        assert metric(url, "streamer_messages_silenced_total") == len(while_down)
    finally:
        for r in replicas:
            if r.process.poll() is None:
                r.signal(signal.SIGTERM)
                r.wait()


def test_fail_open_an_unreadable_silences_topic_never_hides_an_alert(
    infrastructure, fake, tmp_path, monkeypatch, caplog
) -> None:
    # a name the broker refuses: the topic can never be read (as with an ACL that denies it)
    pipeline = Pipeline(
        infrastructure,
        fake,
        tmp_path,
        monkeypatch=monkeypatch,
        kafka={"silence_topic": "no such topic: spaces are refused"},
    )
    alerts = events("a", 6, "unreadable")
    pipeline.produce(alerts)
    caplog.set_level("WARNING")
    pipeline.start()
    try:
        pipeline.wait_for(
            lambda: delivered_hosts(pipeline) >= {e["check"]["host"] for e in alerts},
            "every alert delivered although the silences cannot be read",
        )
        pipeline.wait_committed()
        assert pipeline.engine is not None and not pipeline.engine.silences.readable()
    finally:
        pipeline.stop()
    assert "were not all read within 10 s" in caplog.text
    assert "alerts a silence would mute may be delivered" in caplog.text


def test_an_expire_from_a_host_whose_clock_runs_ahead_ends_the_silence_at_once(
    infrastructure, fake, tmp_path, monkeypatch
) -> None:
    # issue 24: `silence expire` wrote the CLI host's "now" as the end, and the replicas
    # kept muting until their clocks reached it (here: an hour)
    from datetime import timedelta

    from streamer.cli import build_parser
    from streamer.cli import silence as silence_cli

    silences = f"silences-{uuid.uuid4().hex[:8]}"
    pipeline = Pipeline(
        infrastructure, fake, tmp_path, monkeypatch=monkeypatch, kafka={"silence_topic": silences}
    )
    ensure_topic({"bootstrap.servers": infrastructure.bootstrap_servers}, silences)
    replica = ServiceProcess(pipeline, tmp_path / "one.log")
    try:
        url = metrics_url(replica, pipeline)
        pipeline.wait_for(replica.joined, "the replica joined")
        silence_id = streamer(
            pipeline, "silence", "add", "--matcher", 'team="a"', "--duration", "2h",
            "--comment", "maintenance",
        ).strip()  # fmt: skip
        pipeline.wait_for(
            lambda: metric(url, "streamer_silences_active", silence=silence_id) == 1,
            "the replica shows the silence",
            limit=30,
        )
        during = events("a", 3, "during")
        pipeline.produce(during)
        pipeline.wait_committed()
        assert metric(url, "streamer_messages_silenced_total") == len(during)

        class AnHourAhead(datetime):
            @classmethod
            def now(cls, tz=None):  # type: ignore[override]
                return datetime.now(tz) + timedelta(hours=1)

        monkeypatch.setattr(silence_cli, "datetime", AnHourAhead)
        args = build_parser().parse_args(
            ["silence", "expire", "--config", str(pipeline.config_path), silence_id]
        )
        assert args.func(args) == 0
        expired = time.monotonic()
        pipeline.wait_for(
            lambda: metric(url, "streamer_silences_active", silence=silence_id) == 0,
            "the silence no longer active in the replica",
            limit=10,
        )
        print(f"the replica let the silence go {time.monotonic() - expired:.2f} s after expire")
        after = events("a", 3, "after")
        pipeline.produce(after)
        pipeline.wait_for(
            lambda: delivered_hosts(pipeline) >= {e["check"]["host"] for e in after},
            "alerts flow again at once",
            limit=10,
        )
    finally:
        if replica.process.poll() is None:
            replica.signal(signal.SIGTERM)
            replica.wait()
