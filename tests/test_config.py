"""Loading the operator's file: every problem at once, with file:line and route; secrets safe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from streamer.config import ConfigError, is_secret_key, load_config
from tests.rules_helpers import HEADER, config_from

EXAMPLES = Path(__file__).parent.parent / "examples"
GOLDEN = Path(__file__).parent / "golden" / "example-rules-test.json"
EXAMPLE_TOKENS = {
    "INCIDENT_IO_TOKEN_SRE": "tok-sre-123",
    "INCIDENT_IO_TOKEN_PAYMENTS": "tok-pay-456",
}


def problems(tmp_path: Path, body: str, **kwargs) -> list[str]:
    with pytest.raises(ConfigError) as error:
        config_from(tmp_path, body, **kwargs)
    return error.value.problems


def header_lines() -> int:
    return HEADER.count("\n")


@pytest.mark.parametrize(
    ("body", "line", "expected"),
    [
        (
            "routes: [{name: r, destination: nowhere}]",
            1,
            "route r (destination): unknown destination 'nowhere'",
        ),
        (
            "routes: [{name: r, destination: a, match: ['alert.lables.x = y']}]",
            1,
            "route r (match.0): unknown field path alert.lables.x: alert has no field 'lables'",
        ),
        (
            "routes: [{name: r, destination: a, match: ['labels.x =~ \"(\"']}]",
            1,
            "invalid regular expression",
        ),
        (
            "routes: [{name: r, destination: a, match: ['severity.level = x']}]",
            1,
            "severity is a plain value; it has no field 'level'",
        ),
        (
            "routes: [{name: r, destination: a}, {name: r, destination: b}]",
            1,
            "duplicate route name 'r'",
        ),
        (
            "routes:\n  - name: r\n    destination: a\n    templates:\n      title: '{{ nope }}'",
            5,
            "route r (templates.title): unknown variable(s) nope",
        ),
        (
            "routes:\n  - name: r\n    destination: a\n    templates:\n      title: '{% if %}'",
            5,
            "template syntax error",
        ),
        (
            "routes:\n  - name: r\n    destination: a\n    when: 'labels =='",
            4,
            "expression syntax error",
        ),
        ("routes:\n  - name: r\n    destinaton: a", 3, "route r (destinaton): unknown setting"),
        (
            "routes:\n  - name: r\n    match: ['severity = X']",
            2,
            "a top-level route needs `destination:`",
        ),
        (
            "routes:\n  - name: r\n    destination: a\n    routes:\n      - name: c\n        continue: perhaps",
            6,
            "route r > c (continue): Input should be a valid boolean",
        ),
        ("default: {templates: {}}", 1, "default"),
        ("kafka: {group_id: 1}", 1, "kafka.group_id: Input should be a valid string"),
        ("colour: blue", 1, "colour: unknown setting"),
        (
            "delivery: {revoke_drain_seconds: 5}",
            1,
            "revoke_drain_seconds (5.0) must be at least request_timeout_seconds (10.0)",
        ),
    ],
)
def test_each_problem_names_its_line_and_route(
    tmp_path, body: str, line: int, expected: str
) -> None:
    found = problems(tmp_path, body)
    path = tmp_path / "streamer.yaml"
    assert any(expected in p for p in found), found
    assert any(p.startswith(f"{path}:{header_lines() + line}:") for p in found if expected in p), (
        found
    )


def test_every_problem_is_reported_at_once(tmp_path) -> None:
    found = problems(
        tmp_path,
        """
        routes:
          - {name: r, destination: nowhere, match: ['nope = 1', 'x']}
          - {name: r, destination: a, templates: {title: '{{ nope }}'}}
          - {name: s, destination: a, colour: red}
    """,
    )
    assert len(found) == 6, found
    assert found == sorted(found, key=lambda p: int(p.split(":")[1]))  # in file order


def test_topics_and_registry_must_agree(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(HEADER.replace("format: json", "format: confluent") + "routes: []\n")
    with pytest.raises(ConfigError, match="the confluent format needs schema_registry"):
        load_config(path, check_secrets=False)


def test_an_unreadable_or_broken_file_says_so(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("routes: [\n  {name: x\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: not valid YAML"):
        load_config(tmp_path / "bad.yaml")


# -- secrets -------------------------------------------------------------------------


def test_unset_token_variables_are_problems(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("TOKEN_A", raising=False)
    monkeypatch.setenv("TOKEN_B", "b-token")
    found = problems(tmp_path, "routes: []", check_secrets=True)
    assert found == [
        f"{tmp_path / 'streamer.yaml'}:4: destinations.a.token: "
        "the environment variable TOKEN_A is not set"
    ]


def test_tokens_come_from_env_or_file_and_never_print(tmp_path, monkeypatch) -> None:
    (tmp_path / "token-b").write_text("file-secret-b\n")
    monkeypatch.setenv("TOKEN_A", "env-secret-a")
    path = tmp_path / "streamer.yaml"
    path.write_text(HEADER.replace("{env: TOKEN_B}", "{file: token-b}") + "routes: []\n")
    config = load_config(path)
    assert config.tokens["a"].get_secret_value() == "env-secret-a"
    assert config.tokens["b"].get_secret_value() == "file-secret-b"
    for text in (str(config), repr(config), str(config.tokens)):
        assert "env-secret-a" not in text and "file-secret-b" not in text


def test_a_token_is_written_nowhere_in_the_file(tmp_path) -> None:
    path = tmp_path / "inline.yaml"
    path.write_text(
        HEADER.replace("token: {env: TOKEN_A}", "token: plain-text-token") + "routes: []\n"
    )
    with pytest.raises(ConfigError) as error:
        load_config(path, check_secrets=False)
    assert "destinations.a.token" in str(error.value)
    assert "plain-text-token" not in str(error.value)


@pytest.mark.parametrize(
    "value",
    ["fake-tok\ninner-part\n", "fake-tok inner", "fake-tok\tinner", "fake-tok\x1bx", " fake-tok"],
)
def test_a_token_with_whitespace_or_control_characters_inside_is_refused(
    tmp_path, monkeypatch, value: str
) -> None:
    (tmp_path / "token-b").write_text(value)
    monkeypatch.setenv("TOKEN_A", value)
    path = tmp_path / "streamer.yaml"
    path.write_text(HEADER.replace("{env: TOKEN_B}", "{file: token-b}") + "routes: []\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert error.value.problems == [
        f"{path}:4: destinations.a.token: the environment variable TOKEN_A holds a token with "
        "whitespace or a control character in it (a line break, space or tab?); a token is one "
        "line of printable characters",
        f"{path}:5: destinations.b.token: the token file {tmp_path / 'token-b'} holds a token "
        "with whitespace or a control character in it (a line break, space or tab?); a token "
        "is one line of printable characters",
    ]
    assert "fake-tok" not in str(error.value) and "inner" not in str(error.value)


def test_one_trailing_line_break_is_not_part_of_a_secret(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TOKEN_A", "fake-env-token\n")  # as a Kubernetes Secret often holds it
    (tmp_path / "token-b").write_text("fake-file-token\r\n")
    path = tmp_path / "streamer.yaml"
    path.write_text(HEADER.replace("{env: TOKEN_B}", "{file: token-b}") + "routes: []\n")
    tokens = load_config(path).tokens
    assert [t.get_secret_value() for t in tokens.values()] == ["fake-env-token", "fake-file-token"]


def test_secret_properties_are_validated_like_tokens(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TOKEN_A", "fake-a")
    monkeypatch.setenv("TOKEN_B", "fake-b")
    monkeypatch.setenv("KAFKA_PASSWORD", "fake-pass\nword")
    path = tmp_path / "streamer.yaml"
    path.write_text(
        HEADER
        + "kafka:\n  secret_properties:\n    sasl.password: {env: KAFKA_PASSWORD}\nroutes: []\n"
    )
    with pytest.raises(ConfigError) as error:
        load_config(path)
    [problem] = error.value.problems
    assert problem.startswith(f"{path}:8: kafka.secret_properties.sasl.password: ")
    assert "the environment variable KAFKA_PASSWORD holds a secret with whitespace" in problem
    assert "fake-pass" not in problem


def test_every_secret_is_offered_to_the_log_mask(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TOKEN_A", "fake-a-token")
    monkeypatch.setenv("TOKEN_B", "fake-b-token")
    monkeypatch.setenv("KAFKA_PASSWORD", "fake-kafka-password")
    monkeypatch.setenv("REGISTRY_USER_INFO", "fake-user:fake-registry-password")
    path = tmp_path / "streamer.yaml"
    path.write_text(
        HEADER
        + "kafka:\n  secret_properties:\n    sasl.password: {env: KAFKA_PASSWORD}\n"
        + "schema_registry:\n  url: https://registry:8081\n  secret_properties:\n"
        + "    basic.auth.user.info: {env: REGISTRY_USER_INFO}\nroutes: []\n"
    )
    assert sorted(load_config(path).secret_values()) == [
        "fake-a-token",
        "fake-b-token",
        "fake-kafka-password",
        "fake-user:fake-registry-password",
    ]


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("kafka", "sasl.password"),
        ("kafka", "ssl.key.password"),
        ("kafka", "ssl.keystore.password"),
        ("kafka", "ssl.key.pem"),
        ("kafka", "sasl.oauthbearer.client.secret"),
        ("kafka", "sasl.oauthbearer.assertion.private.key.passphrase"),
        ("schema_registry", "basic.auth.user.info"),
        ("schema_registry", "bearer.auth.token"),
        ("schema_registry", "bearer.auth.client.secret"),
        ("schema_registry", "ssl.key.password"),
        ("kafka", "some.vendor.api_credentials"),
    ],
)
def test_a_secret_property_is_refused_inline(tmp_path, section: str, key: str) -> None:
    registry = "" if section == "schema_registry" else "schema_registry: {url: https://r}\n"
    body = f"{registry}{section}:\n"
    body += "  url: https://r\n" if section == "schema_registry" else ""
    body += f"  properties:\n    {key}: fake-inline-secret\nroutes: []\n"
    found = problems(tmp_path, body)
    line = header_lines() + body.count("\n", 0, body.index(key)) + 1
    assert found == [
        f"{tmp_path / 'streamer.yaml'}:{line}: {section}.properties.{key}: {key} is a secret: "
        f"give it in {section}.secret_properties as {key}: {{env: VARIABLE}} or "
        "{file: PATH}, never in the file"
    ]


@pytest.mark.parametrize(
    "key",
    [
        "sasl.username",
        "ssl.key.location",
        "basic.auth.credentials.source",
        "bearer.auth.credentials.source",
        "sasl.oauthbearer.token.endpoint.url",
        "sasl.oauthbearer.client.id",
    ],
)
def test_settings_about_secrets_are_not_secrets(key: str) -> None:
    assert not is_secret_key(key)


@pytest.mark.parametrize(
    ("body", "where", "pointer"),
    [
        (
            "schema_registry: {url: 'https://fake-user:fake-pass@registry:8081'}",
            "schema_registry.url",
            "basic.auth.user.info (user:password) in schema_registry.secret_properties",
        ),
        (
            "kafka: {bootstrap_servers: 'fake-user:fake-pass@broker:9093'}",
            "kafka.bootstrap_servers",
            "sasl.password in kafka.secret_properties",
        ),
        (
            "kafka: {properties: {sasl.oauthbearer.token.endpoint.url: 'https://fake-user:fake-pass@idp/token'}}",
            "kafka.properties.sasl.oauthbearer.token.endpoint.url",
            "the whole property in kafka.secret_properties",
        ),
    ],
)
def test_credentials_in_a_url_are_refused(tmp_path, body: str, where: str, pointer: str) -> None:
    [problem] = problems(tmp_path, body + "\nroutes: []\n")
    assert problem.startswith(f"{tmp_path / 'streamer.yaml'}:{header_lines() + 1}: {where}: ")
    assert "credentials (user:password@) are refused" in problem.replace(" in a URL", "")
    assert pointer in problem
    assert "fake-pass" not in problem and "fake-user" not in problem


@pytest.mark.parametrize(
    "url", ["http://api.incident.io", "http://10.0.0.7:8080", "http://127.example.com"]
)
def test_a_destination_needs_https_away_from_loopback(tmp_path, url: str) -> None:
    body = f"destinations:\n  a:\n    alert_source_config_id: A\n    token: {{env: TOKEN_A}}\n    url: {url}\n"
    path = tmp_path / "streamer.yaml"
    path.write_text(HEADER.split("destinations:")[0] + body + "routes: []\n")
    with pytest.raises(ConfigError) as error:
        load_config(path, check_secrets=False)
    line = HEADER.split("destinations:")[0].count("\n") + 5
    assert error.value.problems == [
        f"{path}:{line}: destinations.a.url: http:// would send the bearer token in cleartext: "
        "use https://, or http:// only to a loopback address (127.0.0.1, ::1, localhost)"
    ]


@pytest.mark.parametrize(
    "url",
    [
        "https://api.incident.io",
        "http://127.0.0.1:8080",
        "http://127.1.2.3",
        "http://localhost:8080",
        "http://[::1]:8080",
    ],
)
def test_https_or_loopback_destinations_load(tmp_path, url: str) -> None:
    body = f"destinations:\n  a: {{alert_source_config_id: A, token: {{env: TOKEN_A}}, url: '{url}'}}\n"
    path = tmp_path / "streamer.yaml"
    path.write_text(HEADER.split("destinations:")[0] + body + "routes: []\n")
    assert load_config(path, check_secrets=False).file.destinations["a"].url == url


# -- the example ---------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamer", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **EXAMPLE_TOKENS},
        timeout=60,
        cwd=Path(__file__).parent.parent,
    )


def test_the_example_config_checks_clean() -> None:
    result = run_cli("rules", "check", "--config", "examples/streamer.yaml")
    assert result.returncode == 0, result.stderr
    assert "OK (4 destinations, 6 routes, 2 topics)" in result.stdout


def test_rules_check_exits_1_with_the_problems(tmp_path) -> None:
    (tmp_path / "bad.yaml").write_text("topics: []\n")
    result = run_cli("rules", "check", "--config", str(tmp_path / "bad.yaml"))
    assert result.returncode == 1
    assert "bad.yaml:1: topics: topics: must list at least one topic" in result.stderr


def test_the_example_events_route_as_the_golden_file_says() -> None:
    events = sorted(
        str(p.relative_to(EXAMPLES.parent)) for p in (EXAMPLES / "events").glob("*.json")
    )
    result = run_cli(
        "rules",
        "test",
        "--config",
        "examples/streamer.yaml",
        *[arg for e in events for arg in ("--event", e)],
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == json.loads(GOLDEN.read_text())


def test_rules_test_explains(tmp_path) -> None:
    result = run_cli(
        "rules",
        "test",
        "--config",
        "examples/streamer.yaml",
        "--event",
        "examples/events/no-match.json",
        "--explain",
    )
    [report] = json.loads(result.stdout)
    assert report["dropped"] is True and report["deliveries"] == []
    assert report["explain"][-1] == {
        "route": "default",
        "result": "applies: no route matched",
        "delivers_to": "drop",
    }


# -- Alertmanager's matchers and enum values (issue 14) ---------------------------------


@pytest.mark.parametrize(
    ("matcher", "said"),
    [
        (
            "severity = CRITICL",
            "severity = CRITICL can never match: severity is one of CRITICAL, ERROR, WARNING, INFO, UNKNOWN",
        ),
        ("severity != critical", "severity != critical always matches"),
        (
            'alert.status =~ "FIRE|RESOLVE"',
            'alert.status =~ "FIRE|RESOLVE" can never match: alert.status is one of FIRING, RESOLVED',
        ),
        (
            "check.state = Ok",
            "check.state = Ok can never match: check.state is one of OK, WARNING, CRITICAL, UNKNOWN",
        ),
        ("source_system !~ .*", "source_system !~ .* can never match"),
        ('severity !~ "crit.*"', 'severity !~ "crit.*" always matches'),
    ],
)
def test_a_matcher_on_an_enum_value_it_cannot_hold_is_refused(tmp_path, matcher, said) -> None:
    found = problems(tmp_path, f"routes:\n  - {{name: r, match: ['{matcher}'], destination: a}}\n")
    assert len(found) == 1
    assert said in found[0]
    assert ":" + str(header_lines() + 2) + ":" in found[0]


@pytest.mark.parametrize(
    "matcher",
    ["severity = CRITICAL", 'alert.status = ""', 'severity =~ "(?i)crit.*"', "check.state !~ OK"],
)
def test_matchers_an_enum_value_can_satisfy_load(tmp_path, matcher) -> None:
    config_from(tmp_path, f"routes:\n  - {{name: r, match: ['{matcher}'], destination: a}}\n")


def test_alertmanager_matchers_load_with_their_problems_located(tmp_path) -> None:
    body = """\
routes:
  - name: am
    destination: a
    matchers: ['{"service.name"=~"api|web"}', 'team=payments,,']
    match: {alertname: Watchdog, code: 500}
    match_re: {instance: "[a"}
"""
    found = problems(tmp_path, body)
    first = header_lines() + 1
    assert len(found) == 2
    # refused by both of Alertmanager's parsers (fallback mode, the default)
    assert f":{first + 3}: route am (matchers.1): matchers 'team=payments,,', column 15" in found[0]
    assert f":{first + 5}: route am (match_re.instance): " in found[1]
    assert "missing ]" in found[1]


def test_match_maps_read_yaml_scalars_as_alertmanager_does(tmp_path) -> None:
    config = config_from(
        tmp_path, "routes:\n  - {name: r, match: {code: 500, up: true}, destination: a}\n"
    )
    (route,) = config.rules.routes
    assert [(m.path, m.value) for m in route.matchers] == [
        (("alert", "labels", "code"), "500"),
        (("alert", "labels", "up"), "true"),
    ]


def _alias_bomb(levels: int) -> str:
    """Routes whose children are aliases of the level below: 2**levels route paths."""
    lines = ["routes:", "  - &l0 {name: leaf, destination: a}"]
    for n in range(1, levels + 1):
        lines.append(f"  - &l{n} {{name: r{n}, destination: a, routes: [*l{n - 1}, *l{n - 1}]}}")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_before_anything_walks_it(tmp_path) -> None:
    with pytest.raises(ConfigError) as refused:
        config_from(tmp_path, _alias_bomb(24))
    assert "alias" in str(refused.value) and "streamer.yaml:" in str(refused.value)


def test_shared_blocks_by_anchor_and_alias_still_load(tmp_path) -> None:
    config = config_from(
        tmp_path,
        """
        routes:
          - name: first
            match: ["labels.team = a"]
            templates: &shared {title: "{{ severity }}"}
            destination: a
          - name: second
            templates: *shared
            destination: b
        """,
    )
    assert [r.name for r in config.rules.routes] == ["first", "second"]


def test_an_env_that_is_not_a_variable_name_is_refused_without_quoting_it(tmp_path) -> None:
    pasted = "tok3n with spaces-and-$ymbols"
    path = tmp_path / "streamer.yaml"
    path.write_text(HEADER.replace("{env: TOKEN_B}", f"{{env: '{pasted}'}}") + "routes: []\n")
    with pytest.raises(ConfigError) as refused:
        load_config(path, check_secrets=False)
    assert "must name an environment variable" in str(refused.value)
    assert pasted not in str(refused.value)


@pytest.mark.parametrize("key", ["sasl.jaas.config", "sasl.oauthbearer.config"])
def test_a_jaas_or_oauthbearer_config_is_a_secret_key(key) -> None:
    assert is_secret_key(key)
