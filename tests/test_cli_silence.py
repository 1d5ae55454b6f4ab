"""`streamer silence add | list | expire | import` against the real broker, as a user runs
them: what they print, what they refuse, and what the topic holds after."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import yaml
from confluent_kafka.admin import AdminClient, ConfigResource

from streamer.cli import build_parser
from streamer.silence_book import read_silences

pytestmark = pytest.mark.integration


def run(capsys, *argv: str) -> tuple[int, str, str]:
    args = build_parser().parse_args(list(argv))
    code = args.func(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def config(infrastructure, tmp_path):
    topic = f"silences-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "streamer.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "kafka": {
                    "bootstrap_servers": infrastructure.bootstrap_servers,
                    "silence_topic": topic,
                },
                "reader_schema": "../schemas/monitoring_event.v2.avsc",
                "topics": [{"name": "events", "format": "json"}],
                "destinations": {
                    # the CLI never needs incident.io's token: this variable is not set
                    "a": {"alert_source_config_id": "A", "token": {"env": "NOT_SET_ANYWHERE"}}
                },
                "routes": [{"name": "all", "destination": "a"}],
            }
        )
    )
    from pathlib import Path

    schema = Path(__file__).parent.parent / "schemas" / "monitoring_event.v2.avsc"
    text = path.read_text().replace("../schemas/monitoring_event.v2.avsc", str(schema))
    path.write_text(text)
    return str(path), topic, infrastructure.bootstrap_servers


def listed(capsys, path: str, *extra: str) -> list[dict]:
    code, out, err = run(capsys, "silence", "list", "--config", path, "-o", "json", *extra)
    assert code == 0, err
    return json.loads(out)


def test_add_then_list_then_expire(capsys, config) -> None:
    path, topic, servers = config
    code, out, err = run(
        capsys,
        "silence", "add", "--config", path,
        "--matcher", 'alertname="DiskFull"', "--matcher", '{env=~"prod|staging"}',
        "--duration", "2h", "--comment", "db-1 maintenance", "--author", "alice",
    )  # fmt: skip
    assert code == 0, err
    silence_id = out.strip()
    assert f"created the compacted topic {topic}" in err
    admin = AdminClient({"bootstrap.servers": servers})
    resource = ConfigResource("topic", topic)
    settings = admin.describe_configs([resource])[resource].result(30)
    assert settings["cleanup.policy"].value == "compact"

    (shown,) = listed(capsys, path)
    assert shown["id"] == silence_id and shown["status"] == {"state": "active"}
    assert shown["createdBy"] == "alice" and shown["comment"] == "db-1 maintenance"
    assert {m["name"]: m["isRegex"] for m in shown["matchers"]} == {"alertname": False, "env": True}
    ends = datetime.fromisoformat(shown["endsAt"]) - datetime.fromisoformat(shown["startsAt"])
    assert ends == timedelta(hours=2)

    code, out, _ = run(capsys, "silence", "list", "--config", path)
    assert code == 0 and silence_id in out and 'alertname="DiskFull"' in out and "alice" in out

    code, out, err = run(capsys, "silence", "expire", "--config", path, silence_id)
    assert code == 0 and f"expired {silence_id}" in out, err
    assert listed(capsys, path) == []  # by default: active and pending
    (expired,) = listed(capsys, path, "--state", "expired")
    assert expired["id"] == silence_id and expired["status"] == {"state": "expired"}


def test_a_pending_silence_is_listed_as_pending(capsys, config) -> None:
    path, _, _ = config
    start = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    code, _, err = run(
        capsys, "silence", "add", "--config", path, "--matcher", "team=db",
        "--duration", "30m", "--start", start, "--comment", "tonight",
    )  # fmt: skip
    assert code == 0, err
    assert [s["status"]["state"] for s in listed(capsys, path)] == ["pending"]


def test_import_reads_what_amtool_prints_and_skips_expired_ones(capsys, config, tmp_path) -> None:
    path, topic, servers = config
    now = datetime.now(UTC)
    amtool = [
        {
            "id": "0f0b8d8e-1111-4000-8000-000000000001",
            "matchers": [
                {"name": "alertname", "value": "Watchdog", "isRegex": False, "isEqual": True}
            ],
            "startsAt": (now - timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
            "endsAt": (now + timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
            "createdBy": "bob",
            "comment": "always firing",
            "status": {"state": "active"},
            "updatedAt": now.isoformat(),
        },
        {
            "id": "0f0b8d8e-1111-4000-8000-000000000002",
            "matchers": [{"name": "job", "value": "old.*", "isRegex": True, "isEqual": True}],
            "startsAt": (now - timedelta(days=2)).isoformat(),
            "endsAt": (now - timedelta(days=1)).isoformat(),
            "createdBy": "bob",
            "comment": "done",
            "status": {"state": "expired"},
        },
    ]
    file = tmp_path / "silences.json"
    file.write_text(json.dumps(amtool))
    code, out, err = run(capsys, "silence", "import", "--config", path, str(file))
    assert code == 0, err
    assert "imported 1 silences" in out and "1 expired ones skipped" in out
    code, _, err = run(capsys, "silence", "import", "--config", path, str(file))  # again
    assert code == 0, err
    book = read_silences({"bootstrap.servers": servers}, topic)
    assert [s.id for s in book.silences()] == [amtool[0]["id"]]
    # what `list -o json` prints imports again as it is
    listing = tmp_path / "listed.json"
    listing.write_text(json.dumps(listed(capsys, path)))
    code, out, err = run(capsys, "silence", "import", "--config", path, str(listing))
    assert code == 0 and "imported 1 silences" in out, err


def test_a_bad_import_names_the_silence_and_the_field_and_writes_nothing(
    capsys, config, tmp_path
) -> None:
    path, topic, servers = config
    file = tmp_path / "silences.json"
    file.write_text(
        json.dumps(
            [
                {
                    "id": "ok",
                    "matchers": [{"name": "a", "value": "b"}],
                    "startsAt": "2026-01-01T00:00:00Z",
                    "endsAt": "2999-01-01T00:00:00Z",
                },
                {
                    "id": "bad",
                    "matchers": [{"name": "a", "value": "b", "isRegex": "no"}],
                    "startsAt": "2026-01-01T00:00:00Z",
                    "endsAt": "2999-01-01T00:00:00Z",
                },
            ]
        )
    )
    code, _, err = run(capsys, "silence", "import", "--config", path, str(file))
    assert code == 1 and "[1].matchers[0].isRegex" in err
    file.write_text("[{")
    code, _, err = run(capsys, "silence", "import", "--config", path, str(file))
    assert code == 1 and "not JSON" in err
    assert read_silences({"bootstrap.servers": servers}, topic).silences() == []


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--matcher", 'alertname=~"("', "--duration", "1h"], "--matcher 'alertname=~\"(\"'"),
        (["--matcher", 'team=""', "--duration", "1h"], "empty label set"),
        (["--matcher", "team=a", "--duration", "2 hours"], "is not a duration"),
        (
            ["--matcher", "team=a", "--duration", "1h", "--start", "2020-01-01T00:00:00Z"],
            "end it in the past",
        ),
    ],
)
def test_add_refuses_what_is_wrong_and_says_which_option(capsys, config, argv, says) -> None:
    path, _, _ = config
    try:
        code, _, err = run(capsys, "silence", "add", "--config", path, "--comment", "x", *argv)
    except SystemExit as e:  # argparse refuses a bad --duration itself
        code, err = int(e.code or 0), capsys.readouterr().err
    assert code != 0 and says in err


def test_expiring_an_unknown_id_says_so(capsys, config) -> None:
    path, _, _ = config
    code, _, err = run(capsys, "silence", "expire", "--config", path, "no-such-id")
    assert code == 1 and "no silence with id no-such-id" in err


def test_rules_test_reads_the_silences_from_the_topic(capsys, config) -> None:
    path, _, _ = config
    code, out, err = run(
        capsys, "silence", "add", "--config", path, "--matcher", 'alertname="HighErrorRate"',
        "--duration", "1h", "--comment", "known incident",
    )  # fmt: skip
    assert code == 0, err
    silence_id = out.strip()
    from pathlib import Path

    event = Path(__file__).parent.parent / "examples" / "events" / "alert-firing.json"
    code, out, err = run(
        capsys, "rules", "test", "--config", path, "--event", str(event), "--silences-from-topic"
    )
    assert code == 0, err
    (result,) = json.loads(out)
    assert result["deliveries"] == []
    assert [s["silence"] for s in result["silenced"]] == [silence_id]


def amtool_silence(silence_id: str, updated: datetime, comment: str) -> dict:
    now = datetime.now(UTC)
    return {
        "id": silence_id,
        "matchers": [{"name": "alertname", "value": "Watchdog", "isRegex": False, "isEqual": True}],
        "startsAt": (now - timedelta(hours=1)).isoformat(),
        "endsAt": (now + timedelta(hours=1)).isoformat(),
        "createdBy": "bob",
        "comment": comment,
        "status": {"state": "active"},
        "updatedAt": updated.isoformat(),
    }


def test_reimporting_an_old_version_neither_revives_nor_rolls_back_a_silence(
    capsys, config, tmp_path
) -> None:
    # issue 24: importing an old amtool file again brought back a silence expired since
    path, _, _ = config
    now = datetime.now(UTC)
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    old = tmp_path / "old.json"
    old.write_text(
        json.dumps([amtool_silence(first, now, "v1"), amtool_silence(second, now, "v1")])
    )
    code, out, err = run(capsys, "silence", "import", "--config", path, str(old))
    assert code == 0 and "imported 2 silences" in out, err
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps([amtool_silence(second, now + timedelta(minutes=1), "v2")]))
    code, out, err = run(capsys, "silence", "import", "--config", path, str(newer))
    assert code == 0 and "imported 1 silences" in out, err
    code, _, err = run(capsys, "silence", "expire", "--config", path, first)
    assert code == 0, err

    code, out, err = run(capsys, "silence", "import", "--config", path, str(old))
    assert code == 0, err
    assert "imported 0 silences" in out
    assert f"kept {first} as the topic has it: expired there" in out
    assert f"kept {second} as the topic has it: updated there at" in out
    shown = {s["id"]: s for s in listed(capsys, path, "--all")}
    assert shown[first]["status"] == {"state": "expired"} and shown[first]["expired"] is True
    assert shown[second]["comment"] == "v2"


def test_add_and_import_refuse_past_the_bound_on_silences_in_force(
    capsys, config, tmp_path, monkeypatch
) -> None:
    import streamer.silence_writes

    monkeypatch.setattr(streamer.silence_writes, "MAX_IN_FORCE", 2)  # 10,000 in earnest
    path, _, _ = config
    add = ("silence", "add", "--config", path, "--duration", "1h", "--comment", "x")
    for team in ("a", "b"):
        code, _, err = run(capsys, *add, "--matcher", f"team={team}")
        assert code == 0, err
    code, out, err = run(capsys, *add, "--matcher", "team=c")
    assert code == 1 and out == ""
    assert "holds 2 silences active or pending" in err and "at most 2 are kept" in err
    file = tmp_path / "more.json"
    file.write_text(json.dumps([amtool_silence(str(uuid.uuid4()), datetime.now(UTC), "y")]))
    code, _, err = run(capsys, "silence", "import", "--config", path, str(file))
    assert code == 1 and "nothing written" in err
    assert len(listed(capsys, path)) == 2
    (one, _) = listed(capsys, path)
    code, _, err = run(capsys, "silence", "expire", "--config", path, one["id"])
    assert code == 0, err
    code, _, err = run(capsys, *add, "--matcher", "team=c")  # room again
    assert code == 0, err


def last_records(servers: str, topic: str) -> dict[str, bytes | None]:
    """The latest value of each key in `topic`, as compaction will keep it (None: a
    tombstone)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": servers, "group.id": "t", "enable.auto.commit": False}
    )
    try:
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=30)
        consumer.assign([TopicPartition(topic, 0, 0)])
        latest: dict[str, bytes | None] = {}
        next_offset = 0
        while next_offset < high:
            message = consumer.poll(10)
            assert message is not None, "the topic did not read to its end"
            if message.error():
                continue
            latest[message.key().decode()] = message.value()
            next_offset = message.offset() + 1
        return latest
    finally:
        consumer.close()


def test_silences_expired_past_the_retention_are_tombstoned_by_the_next_writer(
    capsys, config
) -> None:
    # issue 24: the writers were to tombstone them, but never saw them (the read forgot
    # them first), so compaction kept every silence ever written
    from streamer.silence_book import ensure_topic, publish
    from streamer.silences import EXPIRED_KEPT, Silence, parse_matchers

    path, topic, servers = config
    settings = {"bootstrap.servers": servers}
    ensure_topic(settings, topic)
    matchers, _ = parse_matchers(["team=old"])
    long_ago = datetime.now(UTC) - EXPIRED_KEPT - timedelta(hours=2)
    old = Silence.new(matchers, duration=timedelta(hours=1), at=long_ago)
    publish(settings, topic, [old])
    assert listed(capsys, path, "--all") == []  # past the retention: not listed
    assert last_records(servers, topic)[old.id] is not None

    code, out, err = run(
        capsys, "silence", "add", "--config", path, "--matcher", "team=new",
        "--duration", "1h", "--comment", "x",
    )  # fmt: skip
    assert code == 0, err
    latest = last_records(servers, topic)
    assert latest[old.id] is None and latest[out.strip()] is not None
