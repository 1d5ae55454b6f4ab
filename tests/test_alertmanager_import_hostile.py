"""`streamer rules import` fed hostile or broken Alertmanager files (streamer/alertmanager.py,
streamer/alertmanager_receivers.py): it never misroutes, never sends a secret or an alert
where the operator did not agree to, never writes a file that does not load, and ends every
malformed input in `file:line: what`, never a traceback."""

from __future__ import annotations

import contextlib
import io
import os
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamer.alertmanager import Imported, ImportProblems, import_alertmanager
from streamer.cli import build_parser
from streamer.config import load_config
from tests.rules_helpers import SCHEMA

URL = "https://api.incident.io/v2/alert_events/http/01NEWSOURCE"


def base_file(tmp_path: Path) -> Path:
    secrets = tmp_path / "secrets"
    secrets.mkdir(exist_ok=True)
    (secrets / "kafka-password").write_text("kafka-pass-123\n")
    (secrets / "database-token").write_text("db-token-123\n")
    path = tmp_path / "base.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            reader_schema: {SCHEMA}
            kafka:
              secret_properties:
                sasl.password: {{file: secrets/kafka-password}}
            topics: [{{name: events, format: json}}]
            destinations:
              database:
                alert_source_config_id: 01DATABASE
                token: {{file: secrets/database-token}}
            """
        )
    )
    return path


def run_import(tmp_path: Path, alertmanager: str, *extra: str) -> tuple[int, str, str, Path]:
    """Runs the command in-process; (exit status, stdout, stderr, output path)."""
    am = tmp_path / "alertmanager.yml"
    am.write_text(textwrap.dedent(alertmanager))
    output = tmp_path / "imported.yaml"
    args = build_parser().parse_args(
        [
            "rules",
            "import",
            str(am),
            "--config",
            str(base_file(tmp_path)),
            "--output",
            str(output),
            *extra,
        ]
    )
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = args.func(args)
    return status, out.getvalue(), err.getvalue(), output


def webhook(name: str, url: str = URL, **http: Any) -> str:
    config = {"name": name, "webhook_configs": [{"url": url}]}
    if http:
        config["webhook_configs"][0]["http_config"] = http  # type: ignore[index]
    return yaml.safe_dump([config])


def tree(receivers: str, routes: str = "") -> str:
    return (
        "route:\n  receiver: first\n" + routes + "receivers:\n" + textwrap.indent(receivers, "  ")
    )


def test_a_receiver_named_drop_is_not_taken_for_dropping(tmp_path: Path) -> None:
    am = tree(webhook("drop") + "- name: first\n")
    am = am.replace("receiver: first", "receiver: drop")
    status, _, err, output = run_import(tmp_path, am)
    assert status == 1
    assert "alertmanager.yml:6: receiver drop: it would become a new destination named drop" in err
    assert "means drop (on purpose)" in err and "--receiver drop=DESTINATION" in err
    assert not output.exists()


def test_a_receiver_named_like_a_base_destination_does_not_replace_it(tmp_path: Path) -> None:
    hook = webhook(
        "database",
        "https://api.incident.io/v2/alert_events/http/01OTHER",
        authorization={"credentials_file": "elsewhere"},
    )
    status, _, err, output = run_import(tmp_path, tree(hook).replace("first", "database"))
    assert status == 1
    assert "would become a new destination named database" in err
    assert (
        "already a destination of the base (https://api.incident.io, alert source 01DATABASE)"
        in err
    )
    assert not output.exists()
    # mapped explicitly, it is the base's destination, untouched
    status, _, err, output = run_import(
        tmp_path, tree(hook).replace("first", "database"), "--receiver", "database=database"
    )
    assert status == 0, err
    written = yaml.safe_load(output.read_text())
    assert written["destinations"]["database"]["alert_source_config_id"] == "01DATABASE"


def test_a_token_file_the_base_reads_a_kafka_secret_from_is_refused(tmp_path: Path) -> None:
    hook = webhook("pager", authorization={"credentials_file": "secrets/kafka-password"})
    status, _, err, _ = run_import(tmp_path, tree(hook).replace("first", "pager"))
    assert status == 1
    assert "where the base reads kafka.secret_properties.sasl.password" in err
    assert "kafka-pass-123" not in err


def test_a_host_other_than_incident_io_is_an_error_unless_allowed(tmp_path: Path) -> None:
    hook = webhook("pager", "https://evil.example/v2/alert_events/http/01NEWSOURCE")
    am = tree(hook).replace("first", "pager")
    status, _, err, output = run_import(tmp_path, am)
    assert status == 1
    assert "its URL's host evil.example is not incident.io's API (api.incident.io)" in err
    assert "--allow-host evil.example" in err
    assert not output.exists()
    status, _, err, output = run_import(tmp_path, am, "--allow-host", "evil.example")
    assert status == 0, err
    written = yaml.safe_load(output.read_text())["destinations"]["pager"]
    assert written["url"] == "https://evil.example"
    assert "new destination pager: host evil.example, alert source 01NEWSOURCE" in err
    assert "token from env INCIDENT_IO_TOKEN_PAGER" in err


def test_a_new_destination_is_shown_with_its_host_and_token_file(tmp_path: Path) -> None:
    hook = webhook("pager", authorization={"credentials_file": "/etc/am/pager-token"})
    status, _, err, output = run_import(tmp_path, tree(hook).replace("first", "pager"))
    assert status == 0, err
    assert (
        "note: Receiver pager is a new destination pager: host api.incident.io, alert source "
        "01NEWSOURCE, token from file /etc/am/pager-token." in err
    )
    assert "token from file /etc/am/pager-token" in output.read_text()  # and in the header


def test_an_incidentio_configs_receiver_is_imported(tmp_path: Path) -> None:
    (tmp_path / "io-token").write_text("t0ken\n")
    am = tree(
        yaml.safe_dump(
            [
                {
                    "name": "io",
                    "incidentio_configs": [
                        {
                            "url": "https://api.incident.io/v2/alert_events/alertmanager/01AMSRC",
                            "alert_source_token_file": "io-token",
                            "max_alerts": 5,
                        }
                    ],
                },
                {
                    "name": "inline",
                    "incidentio_configs": [{"url": URL, "alert_source_token": "s3cret-inline"}],
                },
            ]
        ),
        "  routes:\n    - {receiver: inline, matchers: [team=a]}\n",
    ).replace("receiver: first", "receiver: io")
    status, _, err, output = run_import(tmp_path, am)
    assert status == 0, err
    destinations = yaml.safe_load(output.read_text())["destinations"]
    assert destinations["io"] == {
        "alert_source_config_id": "01AMSRC",
        "token": {"file": "io-token"},
    }
    assert destinations["inline"] == {
        "alert_source_config_id": "01NEWSOURCE",
        "token": {"env": "INCIDENT_IO_TOKEN_INLINE"},
    }
    assert "an incident.io alert source of type Alertmanager" in err
    assert "create an HTTP alert source" in err
    assert "incidentio_configs max_alerts: 5" in err
    assert "s3cret-inline" not in err and "s3cret-inline" not in output.read_text()


def test_an_incidentio_url_file_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "url-fifo"
    os.mkfifo(fifo)
    am = tree(yaml.safe_dump([{"name": "io", "incidentio_configs": [{"url_file": str(fifo)}]}]))
    status, _, err, _ = run_import(tmp_path, am.replace("first", "io"))  # returns: no hang
    assert status == 1
    assert "is not a regular file" in err


def test_values_cannot_inject_configuration_through_the_header(tmp_path: Path) -> None:
    am = tree(
        "- name: first\n",
        '  group_wait: "30s\\ndelivery:\\n  workers: 1\\n#"\n'
        '  routes:\n    - {receiver: first, matchers: [team=a], "x\\ndefault: drop": 1}\n',
    )
    status, _, err, output = run_import(tmp_path, am)
    assert status == 0, err
    text = output.read_text()
    header = text.split("\nreader_schema:")[0]
    assert all(line.startswith("#") for line in header.splitlines())
    assert "30s\\ndelivery:\\n  workers: 1" in header  # escaped, on one comment line
    config = load_config(output, check_secrets=False)
    assert config.file.delivery.workers == 8
    assert "\x1b" not in err and "30s\ndelivery" not in err


def test_a_failing_import_leaves_an_existing_output_alone(tmp_path: Path) -> None:
    output = tmp_path / "imported.yaml"
    output.write_text("# the previous, good import\n")
    hook = webhook("pager", "http://10.0.0.1/v2/alert_events/http/01NEW")
    am = tree(hook).replace("first", "pager")
    status, _, err, _ = run_import(tmp_path, am, "--allow-host", "10.0.0.1")
    assert status == 1
    assert "does not load" in err and "http:// would send the bearer token in cleartext" in err
    assert output.read_text() == "# the previous, good import\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".streamer-import")] == []


def test_a_key_given_twice_is_refused(tmp_path: Path) -> None:
    am = (
        "route: {receiver: pager}\nreceivers:\n  - name: pager\n    webhook_configs:\n"
        f"      - url: {URL}\n        url: https://evil.example/v2/alert_events/http/01NEW\n"
    )
    status, _, err, _ = run_import(tmp_path, am)
    assert status == 1
    assert "alertmanager.yml:6: 'url' appears twice in this mapping" in err


MALFORMED = [
    ("[]", 1, "an Alertmanager file is a mapping"),
    ("just text", 1, "an Alertmanager file is a mapping"),
    ("route: []\n", 1, "route: (the routing tree) must be a mapping"),
    ("route: {receiver: r}\nreceivers: {r: 1}\n", 2, "receivers: must be a list"),
    ("route: {receiver: r}\nreceivers: [r]\n", 2, "each receiver is a mapping"),
    ("route: {receiver: r}\nreceivers:\n  - name: [r]\n", 3, "a receiver needs a name"),
    ("route: {receiver: r, routes: {a: b}}\nreceivers: [{name: r}]\n", 1, "routes: must be a list"),
    ("route:\n  receiver: r\n  routes: [x]\nreceivers: [{name: r}]\n", 3, "a route is a mapping"),
    (
        "route:\n  receiver: r\n  routes:\n    - matchers: a=b\nreceivers: [{name: r}]\n",
        4,
        "matchers: must be a list",
    ),
    (
        "route:\n  receiver: r\n  routes:\n    - matchers: [{a: b}]\nreceivers: [{name: r}]\n",
        4,
        "each of matchers: is a text",
    ),
    (
        "route:\n  receiver: r\n  routes:\n    - matchers: ['a!b']\nreceivers: [{name: r}]\n",
        4,
        "'!' must be followed by = or ~",
    ),
    (
        "route:\n  receiver: r\n  routes:\n    - match: [a]\nreceivers: [{name: r}]\n",
        4,
        "match: must be a mapping",
    ),
    (
        "route:\n  receiver: r\n  routes:\n    - match:\n        a: {b: c}\n"
        "receivers: [{name: r}]\n",
        5,
        "label names and values are texts",
    ),
    (
        "route:\n  receiver: r\n  routes:\n    - continue: maybe\nreceivers: [{name: r}]\n",
        4,
        "continue: must be true or false",
    ),
    (
        "route:\n  receiver: r\n  routes:\n    - receiver: nobody\nreceivers: [{name: r}]\n",
        4,
        "receiver 'nobody' is not defined",
    ),
    (
        "route: {receiver: r}\nreceivers:\n  - name: r\n    webhook_configs: {url: x}\n",
        4,
        "webhook_configs: must be a list",
    ),
    (
        "route: {receiver: r}\nreceivers:\n  - name: r\n    webhook_configs: [x]\n",
        4,
        "each of webhook_configs must be a mapping",
    ),
    (
        f"route: {{receiver: r}}\nreceivers:\n  - name: r\n    webhook_configs:\n"
        f"      - url: {URL}\n        http_config: [x]\n",
        6,
        "http_config: must be a mapping",
    ),
    (
        "route: {receiver: r}\nreceivers:\n  - name: r\n    incidentio_configs: [{url: 5}]\n",
        4,
        "is not an incident.io alert-events URL",
    ),
    ("route: {receiver: r}\nreceivers:\n  - {name: r}\n  - {name: r}\n", 4, "defined twice"),
    ("route:\n  receiver: r\n  match: {a: b}\nreceivers: [{name: r}]\n", 3, "must not have match"),
    ("route: {receiver: r\n", 2, "not valid YAML"),
    ("a: &a [*a]\n", 1, ""),
    ("? [a]\n: b\n", 1, "a key must be a plain value"),
    ("route: !!binary 'eA=='\n", 1, ""),
    ("route: !!python/object:os.system {}\n", 1, "not valid YAML"),
]


@pytest.mark.parametrize(("text", "line", "what"), MALFORMED)
def test_malformed_input_ends_in_file_line_what(
    tmp_path: Path, text: str, line: int, what: str
) -> None:
    status, _, err, output = run_import(tmp_path, text)
    assert status == 1
    assert "Traceback" not in err
    assert re.search(rf"alertmanager\.yml:{line}: .*{re.escape(what)}", err), err
    assert not output.exists()


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(max_size=8), st.sampled_from(["r", URL])
)
keys = st.sampled_from(
    [
        "route", "receivers", "receiver", "routes", "matchers", "match", "match_re",
        "continue", "name", "webhook_configs", "incidentio_configs", "url", "http_config",
        "authorization", "credentials_file", "group_wait", "x",
    ]
)  # fmt: skip
documents = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_any_document_imports_or_says_why(document: Any) -> None:
    try:
        result = import_alertmanager(document, {"destinations": {}})
    except ImportProblems as e:
        assert e.problems and all(isinstance(p, str) for p in e.problems)
    else:
        assert isinstance(result, Imported)
        result.to_yaml("am.yml")


@pytest.mark.parametrize(
    "url",
    [
        "https://api.incident.io@evil.example/v2/alert_events/http/01NEW",
        "https://api.incident.io.evil.example/v2/alert_events/http/01NEW",
        "https://evil.example/api.incident.io/v2/alert_events/http/01NEW",
    ],
)
def test_a_url_that_only_looks_like_incident_io_is_not_taken_for_it(
    tmp_path: Path, url: str
) -> None:
    status, _, err, output = run_import(
        tmp_path, tree(webhook("pager", url)).replace("first", "pager")
    )
    assert status == 1
    # refused as another host, or as a webhook streamer cannot send to (its path differs)
    assert "is not incident.io's API" in err or "has no equivalent in streamer" in err
    assert not output.exists()


def test_credentials_in_a_webhook_url_are_not_copied(tmp_path: Path) -> None:
    hook = webhook("pager", "https://user:s3cret-pass@api.incident.io/v2/alert_events/http/01NEW")
    status, _, err, output = run_import(tmp_path, tree(hook).replace("first", "pager"))
    assert status == 0, err
    assert "its inline token was not copied; set INCIDENT_IO_TOKEN_PAGER" in err
    assert "s3cret-pass" not in output.read_text() and "s3cret-pass" not in err
    assert "url" not in yaml.safe_load(output.read_text())["destinations"]["pager"]


def test_terminal_escapes_in_names_are_escaped_on_stderr_and_in_the_header(tmp_path: Path) -> None:
    name = "pager\x1b[2J\x1b]0;owned\x07"
    am = tree(yaml.safe_dump([{"name": name, "slack_configs": [{"channel": "#x"}]}]))
    status, _, err, _ = run_import(
        tmp_path, am.replace("receiver: first", f"receiver: {json_quoted(name)}")
    )
    assert status == 1
    assert "\x1b" not in err and "\x07" not in err
    assert "pager\\x1b[2J" in err


def json_quoted(text: str) -> str:
    import json

    return json.dumps(text)


def test_a_broken_base_ends_in_problems_not_a_traceback(tmp_path: Path) -> None:
    base = tmp_path / "base.yaml"
    am = tmp_path / "alertmanager.yml"
    am.write_text("route: {receiver: r}\nreceivers: [{name: r}]\n")
    for text in ("topics: 5\ndestinations: [a]\n", "[1, 2]\n", "destinations: {a: 5}\n"):
        base.write_text(text)
        args = build_parser().parse_args(
            ["rules", "import", str(am), "--config", str(base), "--output", str(tmp_path / "o")]
        )
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            assert args.func(args) == 1
        assert "Traceback" not in err.getvalue()
        assert ".streamer-import" not in err.getvalue()  # problems name the output, not a temp file
        assert not (tmp_path / "o").exists()


base_keys = st.sampled_from(
    [
        "destinations", "topics", "kafka", "schema_registry", "secret_properties", "token",
        "file", "env", "reader_schema", "writer_schema", "routes", "matcher_mode",
        "alert_source_config_id", "url",
    ]
)  # fmt: skip
bases = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(base_keys, children, max_size=4)
    ),
    max_leaves=25,
)
ALERTMANAGER = {
    "route": {"receiver": "pager"},
    "receivers": [{"name": "pager", "webhook_configs": [{"url": URL}]}],
}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bases)
def test_any_base_imports_or_says_why(base: Any) -> None:
    try:
        result = import_alertmanager(ALERTMANAGER, base, base_dir=Path("/a"), output_dir=Path("/b"))
    except ImportProblems as e:
        assert e.problems and all(isinstance(p, str) for p in e.problems)
    else:
        result.to_yaml("am.yml")
