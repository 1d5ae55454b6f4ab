"""A changed configuration is applied whole, or rejected while the old one stays."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import pytest

from streamer import reload
from streamer.config import load_config
from streamer.reload import ConfigReloader
from tests.rules_helpers import HEADER, alert

ROUTE_TO_A = "routes: [{name: r, destination: a}]\n"
ROUTE_TO_B = "routes: [{name: r, destination: b}]\n"


def destinations(reloader: ConfigReloader) -> list[str]:
    return [d.destination for d in reloader.current.rules.evaluate(alert()).deliveries]


def write(path: Path, body: str) -> None:
    path.write_text(HEADER.replace("{env: TOKEN_B}", "{file: token-b}") + body)


def make(tmp_path: Path, monkeypatch) -> tuple[Path, ConfigReloader]:
    monkeypatch.setenv("TOKEN_A", "a")
    (tmp_path / "token-b").write_text("b-1")
    path = tmp_path / "streamer.yaml"
    write(path, ROUTE_TO_A)
    return path, ConfigReloader(load_config(path))


def test_an_unchanged_file_is_not_reloaded(tmp_path, monkeypatch) -> None:
    _, reloader = make(tmp_path, monkeypatch)
    assert reloader.check() is False


def reads(monkeypatch) -> list[Path]:
    """The files the reloader reads from now on (to fingerprint them)."""
    read: list[Path] = []
    real = reload.read_regular_file

    def counting(path: Path, limit: int) -> bytes:
        read.append(path)
        return real(path, limit)

    monkeypatch.setattr(reload, "read_regular_file", counting)
    return read


def test_an_unchanged_file_is_not_read_again_at_each_check(tmp_path, monkeypatch) -> None:
    """A big file read and hashed every 2 s costs CPU while nothing changes (50,000 routes:
    5 ms a check); its stat says whether it may have changed."""
    monkeypatch.setattr(reload, "SETTLED_NS", 0)  # timestamps tick finely here
    path, reloader = make(tmp_path, monkeypatch)
    read = reads(monkeypatch)
    for _ in range(5):
        assert reloader.check() is False
    assert read.count(path) == 1  # the first check's hash, then stat only
    write(path, ROUTE_TO_B)
    assert reloader.check() is True and destinations(reloader) == ["b"]


def test_a_file_changed_within_a_timestamp_tick_is_read_at_each_check(
    tmp_path, monkeypatch
) -> None:
    """An edit in the same tick as the last hash could keep size, inode and times: while
    the file's last change is that recent, its stat is not trusted."""
    path, reloader = make(tmp_path, monkeypatch)  # written just now
    read = reads(monkeypatch)
    for _ in range(3):
        assert reloader.check() is False
    assert read.count(path) == 3


def test_a_changed_file_is_applied(tmp_path, monkeypatch) -> None:
    path, reloader = make(tmp_path, monkeypatch)
    applied = []
    reloader._on_applied = applied.append
    write(path, ROUTE_TO_B)
    assert reloader.check() is True
    assert destinations(reloader) == ["b"] and applied == [reloader.current]


def test_an_invalid_change_is_rejected_and_the_old_rules_stay(
    tmp_path, monkeypatch, caplog
) -> None:
    path, reloader = make(tmp_path, monkeypatch)
    write(path, "routes: [{name: r, destination: nowhere}]\n")
    with caplog.at_level(logging.ERROR, logger="streamer.reload"):
        assert reloader.check() is False
        assert reloader.check() is False  # the same bad content is reported once
    assert destinations(reloader) == ["a"]
    [record] = caplog.records
    assert "unknown destination 'nowhere'" in record.getMessage()
    write(path, ROUTE_TO_B)  # fixed: applied
    assert reloader.check() is True and destinations(reloader) == ["b"]


def test_a_rotated_token_file_is_picked_up(tmp_path, monkeypatch) -> None:
    _, reloader = make(tmp_path, monkeypatch)
    (tmp_path / "token-b").write_text("b-2")
    assert reloader.check() is True
    assert reloader.current.tokens["b"].get_secret_value() == "b-2"


def test_a_configmap_style_symlink_swap_is_noticed(tmp_path, monkeypatch) -> None:
    # Kubernetes mounts a ConfigMap as name -> ..data/name, ..data -> ..<timestamp>/, and
    # updates it by pointing ..data at a new folder with one atomic rename.
    monkeypatch.setenv("TOKEN_A", "a")
    monkeypatch.setenv("TOKEN_B", "b")
    mount = tmp_path / "config"
    (mount / "..2026_11_26_1").mkdir(parents=True)
    (mount / "..2026_11_26_1" / "streamer.yaml").write_text(HEADER + ROUTE_TO_A)
    (mount / "..data").symlink_to("..2026_11_26_1")
    (mount / "streamer.yaml").symlink_to("..data/streamer.yaml")
    reloader = ConfigReloader(load_config(mount / "streamer.yaml"))

    (mount / "..2026_11_26_2").mkdir()
    (mount / "..2026_11_26_2" / "streamer.yaml").write_text(HEADER + ROUTE_TO_B)
    (mount / "..data_tmp").symlink_to("..2026_11_26_2")
    os.rename(mount / "..data_tmp", mount / "..data")

    assert reloader.check() is True
    assert destinations(reloader) == ["b"]


def test_the_watcher_stops_when_told(tmp_path, monkeypatch) -> None:
    _, reloader = make(tmp_path, monkeypatch)
    stop = threading.Event()
    stop.set()
    reloader.run(stop, interval=3600)  # returns at once: the stop was already set


def test_a_load_slower_than_the_bound_is_refused_and_the_old_rules_stay(
    tmp_path, monkeypatch, caplog
) -> None:
    path, _ = make(tmp_path, monkeypatch)
    ticks = iter([0.0, 61.0])  # the load (its start, its end) took 61 s
    results: list[str] = []
    reloader = ConfigReloader(
        load_config(path), count=results.append, max_seconds=60.0, clock=lambda: next(ticks)
    )
    write(path, ROUTE_TO_B)
    with caplog.at_level(logging.ERROR):
        assert reloader.check() is False
    assert destinations(reloader) == ["a"] and results == ["rejected"]
    assert "took 61.0 s to load and compile, more than the 60 s allowed" in caplog.text


@pytest.mark.integration
def test_a_big_reload_is_compiled_off_the_poll_thread_while_events_flow(
    infrastructure, fake, tmp_path, monkeypatch, caplog
) -> None:
    """Issue 26: a reload of a 10,000-route file is loaded and compiled on the watcher's
    thread. Shown without timing: the load is held open until the poll thread has
    delivered events fetched after it began; then it is applied between events, and the
    group never rebalanced."""
    from streamer.config import load_config as real_load
    from tests.pipeline import Pipeline, check_event

    pipeline = Pipeline(
        infrastructure,
        fake,
        tmp_path,
        monkeypatch=monkeypatch,
        delivery="reload_interval_seconds: 0.2",
    )
    pipeline.produce([check_event("before", "CRITICAL")])
    pipeline.start()
    loading, release = threading.Event(), threading.Event()
    threads: list[str] = []

    def held_load(path: Path):
        threads.append(threading.current_thread().name)
        loading.set()
        assert release.wait(120), "the test never released the load"
        return real_load(path)

    try:
        pipeline.wait_for(lambda: len(fake.events) == 1, "the first event delivered")
        assert pipeline.engine is not None
        pipeline.engine.reloader._load = held_load
        text = pipeline.config_path.read_text()
        many = "".join(
            f"- {{name: r{i}, match: ['labels.team = t{i}'], destination: a}}\n"
            for i in range(10_000)
        )
        pipeline.config_path.write_text(text.replace("routes:\n", "routes:\n" + many, 1))
        with caplog.at_level(logging.INFO, logger="streamer"):
            assert loading.wait(60), "the watcher never began the load"
            pipeline.produce([check_event(f"during-{n}", "CRITICAL", n=n) for n in range(5)])
            pipeline.wait_for(lambda: len(fake.events) == 6, "events delivered during the load")
            release.set()
            pipeline.wait_for(
                lambda: (
                    pipeline.engine is not None and len(pipeline.engine.config.file.routes) > 10_000
                ),
                "the new rules applied",
            )
            pipeline.produce([check_event("after", "CRITICAL", n=99)])
            pipeline.wait_for(lambda: len(fake.events) == 7, "an event after the reload")
    finally:
        release.set()
        pipeline.stop()
    assert threads == ["config-reload"]  # never the poll thread
    assert "configuration reloaded" in caplog.text
    assert "revoked" not in caplog.text  # no rebalance: the member never left its group


def test_a_change_that_names_a_new_token_file_is_applied_once(tmp_path, monkeypatch) -> None:
    path, reloader = make(tmp_path, monkeypatch)
    (tmp_path / "token-a").write_text("a-file")
    text = path.read_text().replace("{env: TOKEN_A}", "{file: token-a}")
    path.write_text(text)
    applied: list[str] = []
    reloader._count = applied.append
    assert reloader.check() is True
    assert reloader.check() is False  # the new token file is no second change
    assert applied == ["applied"]
