"""The consumer's settings: what the group protocol needs for no loss and fast take-over."""

from __future__ import annotations

from streamer.kafka_clients import consumer_settings
from tests.rules_helpers import config_from

ROUTES = "routes: [{name: all, destination: a}]\n"


def test_dynamic_members_rebalance_cooperatively(tmp_path) -> None:
    settings = consumer_settings(config_from(tmp_path, ROUTES))
    assert settings["partition.assignment.strategy"] == "cooperative-sticky"
    assert "group.instance.id" not in settings


def test_static_members_use_an_eager_assignor(tmp_path, monkeypatch) -> None:
    """A static member killed between the two rounds of a cooperative rebalance rejoins with
    its old assignment, and the partition revoked in the first round is owned by nobody
    (seen in the kill -9 process test): static members get every partition in one round."""
    monkeypatch.setenv("POD_NAME", "streamer-1")
    config = config_from(tmp_path, "kafka: {group_instance_id_env: POD_NAME}\n" + ROUTES)
    settings = consumer_settings(config)
    assert settings["group.instance.id"] == "streamer-1"
    assert settings["partition.assignment.strategy"] == "roundrobin"


def test_the_assignor_follows_the_file_not_the_variable(tmp_path, monkeypatch, caplog) -> None:
    """Eager and cooperative members cannot share a group: a member whose variable is unset
    still uses the group's assignor, and says it joins without an instance id."""
    monkeypatch.delenv("POD_NAME", raising=False)
    config = config_from(tmp_path, "kafka: {group_instance_id_env: POD_NAME}\n" + ROUTES)
    settings = consumer_settings(config)
    assert "group.instance.id" not in settings
    assert settings["partition.assignment.strategy"] == "roundrobin"
    assert "POD_NAME, which is not set" in caplog.text
