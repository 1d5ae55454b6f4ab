"""The configuration file's shape: pydantic models of each section, validated values.

Every model is frozen and forbids unknown keys, so a misspelt setting is a load error, never
a silently ignored one. A destination's `url` is https (it carries the token), except on
loopback, where the test double runs. `Config` is the loaded result: the validated file,
the compiled rules, the reader schema and the secrets read for it (as `SecretStr`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    SecretStr,
    field_validator,
    model_validator,
)

from streamer.decoding import WireFormat
from streamer.matcher_modes import DEFAULT_MODE, MatcherMode
from streamer.routing import OnTemplateError, Rules

TEMPLATE_FIELDS = ("title", "description", "deduplication_key", "source_url", "status")
DROP = "drop"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TokenSource(_Model):
    """Where a secret (a token, a secret property) comes from: exactly one of env and file."""

    env: str | None = None
    file: Path | None = None

    @field_validator("env")
    @classmethod
    def _a_variable_name(cls, env: str | None) -> str | None:
        if env is not None and not is_env_name(env):
            raise ValueError(NOT_AN_ENV_NAME)
        return env


# Never quotes the value: an operator may have pasted the secret itself into env:.
NOT_AN_ENV_NAME = (
    "env: must name an environment variable (letters, digits and _, not starting with a "
    "digit), and this is not a name; it is not shown, in case it is the secret itself: give "
    "the variable's name (env: MY_TOKEN) or a file (file: PATH), never the secret"
)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def is_env_name(name: str) -> bool:
    return _ENV_NAME.fullmatch(name) is not None


class Destination(_Model):
    """An incident.io HTTP alert source."""

    alert_source_config_id: str = Field(min_length=1)
    token: TokenSource
    url: str = "https://api.incident.io"
    events_per_minute: PositiveInt = 120
    # Alert storms (streamer/coalescing.py): while a key waits, send only its newest event
    # (`latest`; the older ones end `superseded`), or every one of them (`none`).
    coalesce: Literal["latest", "none"] = "latest"
    # Which waiting key starts when a slot frees: firing critical ones first, then the
    # longest-waiting (`critical-first`), or only the longest-waiting (`oldest-first`).
    priority: Literal["critical-first", "oldest-first"] = "critical-first"

    @field_validator("url")
    @classmethod
    def _https_unless_loopback(cls, url: str) -> str:
        # The token travels in a header: in cleartext, only to this machine (a test double).
        try:
            parts = urlsplit(url)
            host = parts.hostname or ""
        except ValueError:
            host = ""
        if not host or parts.scheme not in ("https", "http"):
            raise ValueError("expected https://host (the default is https://api.incident.io)")
        if "@" in parts.netloc:
            raise ValueError(
                "credentials in the URL (user:password@) are refused; "
                "the token comes from token: {env: ...} or {file: ...}"
            )
        if parts.scheme == "http" and not is_loopback(host):
            raise ValueError(
                "http:// would send the bearer token in cleartext: use https://, or http:// "
                "only to a loopback address (127.0.0.1, ::1, localhost)"
            )
        return url


class Topic(_Model):
    name: str = Field(min_length=1)
    format: WireFormat = "confluent"
    writer_schema: str | None = None  # `raw` only: the schema producers write with


class KafkaSettings(_Model):
    bootstrap_servers: str = "localhost:9092"
    group_id: str = "streamer"
    dead_letter_topic: str = "streamer.dead-letters"
    # Silences every replica reads in full (compacted; `streamer silence` creates it)
    silence_topic: str = Field("streamer.silences", min_length=1)
    # The firing state of inhibit rules' sources, every replica reads it in full (compacted;
    # created by `streamer run` when missing)
    firing_topic: str = Field("streamer.firing", min_length=1)
    # Any librdkafka property (TLS, mTLS, SASL mechanism and username, OAUTHBEARER/OIDC
    # settings, timeouts), for the consumer and the dead-letter producer alike ...
    properties: dict[str, str | int | float | bool] = {}
    # ... and those that are secrets (sasl.password, ssl.key.password,
    # sasl.oauthbearer.client.secret), read from an environment variable or a file.
    # A key `is_secret_key` calls secret is refused in properties.
    secret_properties: dict[str, TokenSource] = {}
    # The environment variable holding this member's stable name (POD_NAME from the
    # downward API): set, it is the consumer's `group.instance.id` (static membership), so
    # a container restarted after a kill -9 gets its partitions back without a rebalance.
    group_instance_id_env: str | None = None


class SchemaRegistrySettings(_Model):
    url: str
    # confluent-kafka's SchemaRegistryClient settings: ssl.ca.location,
    # ssl.certificate.location, ssl.key.location, basic.auth.credentials.source ...
    properties: dict[str, str] = {}
    # ... and secret ones (basic.auth.user.info as "user:password", ssl.key.password),
    # from env or a file; refused in properties, as credentials in the url are.
    secret_properties: dict[str, TokenSource] = {}


class DeliverySettings(_Model):
    """How events are delivered; the defaults suit incident.io's documented limits."""

    max_unfinished: PositiveInt = 10_000  # fetched but not terminal; past it, partitions pause
    # The same cap in bytes (keys and values of unfinished messages): large events fill
    # memory long before 10,000 of them are fetched.
    max_unfinished_bytes: PositiveInt = 32 * 1024 * 1024
    # Concurrent requests to incident.io. Its limits (20 requests/s per API key) need few:
    # 8 covers a 400 ms round trip; more only adds contention (bench/delivery.py).
    workers: PositiveInt = 8
    request_timeout_seconds: float = Field(10.0, gt=0)
    backoff_base_seconds: float = Field(0.5, gt=0)
    backoff_cap_seconds: float = Field(30.0, gt=0)
    max_retry_seconds: float | None = Field(None, gt=0)  # None: retry 5xx/timeouts forever
    hold_retry_seconds: float = Field(30.0, gt=0)  # a held destination is probed this often
    requests_per_minute_per_api_key: PositiveInt = 1200
    rate_limit_margin_seconds: float = Field(0.5, ge=0)
    rate_limit_share: Literal["partitions"] | float = "partitions"
    # The length of the rate-limit window: incident.io counts per minute. Shorter only
    # against the double (`FakeIncidentIo(window_seconds=...)`), for quick tests.
    rate_limit_window_seconds: float = Field(60.0, gt=0)
    commit_interval_seconds: float = Field(1.0, gt=0)
    commit_every_messages: PositiveInt = 1000
    revoke_drain_seconds: float = Field(10.0, gt=0)
    shutdown_grace_seconds: float = Field(25.0, gt=0)
    reload_interval_seconds: float = Field(2.0, gt=0)
    # One key holding a partition's commit watermark this long is logged (once, then when
    # the key or the reason changes).
    watermark_hold_log_seconds: float = Field(60.0, gt=0)
    # A destination whose keys wait this long with nothing started and neither a hold nor
    # a 429 to explain it is stalled: one warning, a gauge, StreamerDeliveryStalled.
    # None: two rate-limit windows (a limit alone never holds a start back that long).
    stall_warning_seconds: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _drains_outlast_a_request(self) -> DeliverySettings:
        # A request still in flight when a partition is handed over could arrive after the
        # next owner's deliveries of the same key: the drains must outlast one request.
        for name in ("revoke_drain_seconds", "shutdown_grace_seconds"):
            if getattr(self, name) < self.request_timeout_seconds:
                raise ValueError(
                    f"{name} ({getattr(self, name)}) must be at least request_timeout_seconds "
                    f"({self.request_timeout_seconds}), or a hand-over could reorder alerts"
                )
        return self


class Templates(_Model):
    title: str | None = None
    description: str | None = None
    deduplication_key: str | None = None
    source_url: str | None = None
    status: str | None = None
    metadata: dict[str, Any] | None = None


# A label value as YAML may write it (`code: 500`). The loader keeps such scalars' text, as
# Go's yaml.v2 does (streamer/config/yaml_text.py), so only data built in code holds the others.
LabelValue = str | bool | int | float


class RouteSpec(_Model):
    name: str = Field(min_length=1)
    # `field.path OP value` matchers, or Alertmanager's `match:` map (label: value) ...
    match: list[str] | dict[str, LabelValue] = []
    match_re: dict[str, LabelValue] = {}  # ... its `match_re:` map (label: regex) ...
    matchers: list[str] = []  # ... and its matcher language on the alert's labels
    when: str | None = None
    destination: str | None = None  # inherited from the parent route; "drop" drops
    continue_: bool = Field(False, alias="continue")
    templates: Templates = Templates()
    on_template_error: OnTemplateError | None = None
    # Names of `time_intervals:`, as Alertmanager's routes name them; a route's own only
    # (its children do not inherit them).
    mute_time_intervals: list[str] = []
    active_time_intervals: list[str] = []
    routes: list[RouteSpec] = []


class NamedTimeInterval(_Model):
    """Alertmanager's `time_intervals:` entry: a name and its specs (each checked when the
    rules are compiled, streamer/time_intervals.py, so each problem names its line)."""

    name: str = Field(min_length=1)
    time_intervals: list[Any] = []


class InhibitRuleSpec(_Model):
    """Alertmanager's `inhibit_rules:` entry (streamer/inhibition.py): while an alert matching
    the source side fires, alerts matching the target side with the same `equal` labels are
    quiet. Each side's matchers are ANDed: the older maps, then the matcher language."""

    name: str | None = None
    source_matchers: list[str] = []
    target_matchers: list[str] = []
    source_match: dict[str, LabelValue] = {}
    source_match_re: dict[str, LabelValue] = {}
    target_match: dict[str, LabelValue] = {}
    target_match_re: dict[str, LabelValue] = {}
    equal: list[str] = []


class InhibitionSettings(_Model):
    """How long a firing source of an inhibit rule, without `ends_at` and without a newer
    event, counts as firing (Alertmanager's `resolve_timeout`, 5 minutes by default); its
    state is shared in `kafka.firing_topic` (streamer/firing_state.py)."""

    resolve_timeout_seconds: float = Field(300.0, gt=0, allow_inf_nan=False)
    # At start, consuming waits at most this long for the topic to be read to its end.
    startup_read_seconds: float = Field(10.0, ge=0, allow_inf_nan=False)


class DefaultRoute(_Model):
    destination: str
    templates: Templates = Templates()
    on_template_error: OnTemplateError | None = None


class ConfigFile(_Model):
    kafka: KafkaSettings = KafkaSettings()
    schema_registry: SchemaRegistrySettings | None = None
    delivery: DeliverySettings = DeliverySettings()
    reader_schema: str = "schemas/monitoring_event.v2.avsc"
    # How `matchers:` texts are read: as Alertmanager (0.27+) does by default (`fallback`),
    # or as with its `utf8-strict-mode` or `classic-mode` feature (streamer/matcher_modes.py).
    matcher_mode: MatcherMode = DEFAULT_MODE
    topics: list[Topic] = Field(min_length=1)
    destinations: dict[str, Destination] = Field(min_length=1)
    default: Literal["drop"] | DefaultRoute = "drop"
    time_intervals: list[NamedTimeInterval] = []
    routes: list[RouteSpec] = []
    inhibit_rules: list[InhibitRuleSpec] = []
    inhibition: InhibitionSettings = InhibitionSettings()


@dataclass(frozen=True)
class Config:
    path: Path
    file: ConfigFile
    rules: Rules
    reader_schema: dict[str, Any]
    tokens: Mapping[str, SecretStr]  # destination name -> token
    kafka_secrets: Mapping[str, SecretStr] = field(default_factory=dict)
    registry_secrets: Mapping[str, SecretStr] = field(default_factory=dict)
    # What loads but deserves a look (`file:line: where: what`): matchers the classic and
    # UTF-8 parsers read differently. Printed by the CLI, logged by `run` and reloads.
    warnings: tuple[str, ...] = ()

    def secret_values(self) -> list[str]:
        """Every secret this configuration loaded, for `logs.MASK`."""
        secrets = (*self.tokens.values(), *self.kafka_secrets.values())
        return [s.get_secret_value() for s in (*secrets, *self.registry_secrets.values())]


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
