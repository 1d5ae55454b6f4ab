"""The operator's configuration file: Kafka, topics, destinations and the routing tree.

`load_config(path)` reads one YAML file, validates all of it and compiles the rules
once. Every problem is collected and reported together as a `ConfigError`, each line
naming `file:line`, the route path where there is one, and what is wrong, so an operator
fixes a file in one pass. Nothing is consumed before a file loads cleanly.

Secrets: every secret (a destination's token, a Kafka or registry secret property) is read
from an environment variable or a file, never written in the file: a property whose key
looks secret (`is_secret_key`) and a URL with `user:password@` are refused inline. Each
is validated at load as one line of printable characters (one trailing line break, as
files and Kubernetes Secrets usually have, is removed), so no HTTP or Kafka library ever
quotes a malformed one back in an error; problems name the variable or file, never the
value. Values are held as `SecretStr`, so they print as `**********`. A destination's
`url` is https (it carries the token), except on loopback, where the test double runs.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from jinja2 import TemplateSyntaxError
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from streamer.decoding import WireFormat, load_schema
from streamer.routing import Matcher, OnTemplateError, Route, Rules
from streamer.templates import (
    DEFAULT_METADATA,
    CompiledExpression,
    CompiledTemplate,
    undeclared_variables,
)

TEMPLATE_FIELDS = ("title", "description", "deduplication_key", "source_url", "status")
DROP = "drop"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TokenSource(_Model):
    """Where a secret (a token, a secret property) comes from: exactly one of env and file."""

    env: str | None = None
    file: Path | None = None


class Destination(_Model):
    """An incident.io HTTP alert source."""

    alert_source_config_id: str = Field(min_length=1)
    token: TokenSource
    url: str = "https://api.incident.io"
    events_per_minute: PositiveInt = 120

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
        if parts.scheme == "http" and not _is_loopback(host):
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
    # Any librdkafka property (TLS, mTLS, SASL mechanism and username, OAUTHBEARER/OIDC
    # settings, timeouts), for the consumer and the dead-letter producer alike ...
    properties: dict[str, str | int | float | bool] = {}
    # ... and those that are secrets (sasl.password, ssl.key.password,
    # sasl.oauthbearer.client.secret), read from an environment variable or a file.
    # A key `is_secret_key` calls secret is refused in properties.
    secret_properties: dict[str, TokenSource] = {}


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
    commit_interval_seconds: float = Field(1.0, gt=0)
    commit_every_messages: PositiveInt = 1000
    revoke_drain_seconds: float = Field(10.0, gt=0)
    shutdown_grace_seconds: float = Field(25.0, gt=0)
    reload_interval_seconds: float = Field(2.0, gt=0)

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


class RouteSpec(_Model):
    name: str = Field(min_length=1)
    match: list[str] = []
    when: str | None = None
    destination: str | None = None  # inherited from the parent route; "drop" drops
    continue_: bool = Field(False, alias="continue")
    templates: Templates = Templates()
    on_template_error: OnTemplateError | None = None
    routes: list[RouteSpec] = []


class DefaultRoute(_Model):
    destination: str
    templates: Templates = Templates()
    on_template_error: OnTemplateError | None = None


class ConfigFile(_Model):
    kafka: KafkaSettings = KafkaSettings()
    schema_registry: SchemaRegistrySettings | None = None
    delivery: DeliverySettings = DeliverySettings()
    reader_schema: str = "schemas/monitoring_event.v2.avsc"
    topics: list[Topic] = Field(min_length=1)
    destinations: dict[str, Destination] = Field(min_length=1)
    default: Literal["drop"] | DefaultRoute = "drop"
    routes: list[RouteSpec] = []


class ConfigError(Exception):
    """Everything wrong with a configuration file, one problem per line."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(f"{path}: {count}:\n" + "\n".join(f"  {p}" for p in problems))


@dataclass(frozen=True)
class Config:
    path: Path
    file: ConfigFile
    rules: Rules
    reader_schema: dict[str, Any]
    tokens: Mapping[str, SecretStr]  # destination name -> token
    kafka_secrets: Mapping[str, SecretStr] = field(default_factory=dict)
    registry_secrets: Mapping[str, SecretStr] = field(default_factory=dict)

    def secret_values(self) -> list[str]:
        """Every secret this configuration loaded, for `logs.MASK`."""
        secrets = (*self.tokens.values(), *self.kafka_secrets.values())
        return [s.get_secret_value() for s in (*secrets, *self.registry_secrets.values())]


Loc = tuple[str | int, ...]


class _Problems:
    """Collects problems with the line each came from in the YAML file."""

    def __init__(self, path: Path, root: yaml.Node | None, data: Any) -> None:
        self.path, self.root, self.data = path, root, data
        self.items: list[tuple[int, str]] = []

    def add(self, loc: Loc, message: str) -> None:
        where = _route_path(self.data, loc) or ".".join(map(str, loc)) or "(file)"
        line = _line_of(self.root, loc)
        self.items.append((line, f"{self.path}:{line}: {where}: {message}"))

    def raise_if_any(self) -> None:
        if self.items:
            raise ConfigError(self.path, [text for _, text in sorted(self.items)])


def _line_of(node: yaml.Node | None, loc: Loc) -> int:
    """The 1-based line of the deepest YAML node along `loc` that exists."""
    if node is None:
        return 1
    line = node.start_mark.line + 1
    for key in loc:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == key or (key == "continue_" and k.value == "continue"):
                    child = v
                    line = k.start_mark.line + 1
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            child = node.value[key]
        if child is None:
            return line
        node = child
        line = node.start_mark.line + 1
    return line


def _route_path(data: Any, loc: Loc) -> str:
    """ "route a > b" for a location inside the routing tree, "" elsewhere."""
    names: list[str] = []
    node = data
    keys = list(loc)
    while len(keys) >= 2 and keys[0] == "routes" and isinstance(keys[1], int):
        routes = node.get("routes") if isinstance(node, dict) else None
        if not isinstance(routes, list) or keys[1] >= len(routes):
            break
        node = routes[keys[1]]
        names.append(
            str(node.get("name", f"#{keys[1]}")) if isinstance(node, dict) else f"#{keys[1]}"
        )
        keys = keys[2:]
    if not names:
        return "default route" if loc[:1] == ("default",) else ""
    rest = ".".join(map(str, keys))
    return f"route {' > '.join(names)}" + (f" ({rest})" if rest else "")


class _SchemaPaths:
    """Which dotted paths exist in the reader schema (for matchers and templates)."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.schema = schema
        self.names: dict[str, Any] = {}
        self._collect(schema)

    def _collect(self, schema: Any) -> None:
        if isinstance(schema, list):
            for branch in schema:
                self._collect(branch)
        elif isinstance(schema, dict):
            if "name" in schema and schema.get("type") in ("record", "enum", "fixed"):
                self.names[schema["name"]] = schema
                namespace = schema.get("namespace")
                if namespace:
                    self.names[f"{namespace}.{schema['name']}"] = schema
            for f in schema.get("fields", []):
                self._collect(f["type"])
            for key in ("items", "values"):
                if key in schema:
                    self._collect(schema[key])

    def top_level(self) -> set[str]:
        return {f["name"] for f in self.schema["fields"]}

    def problem(self, path: tuple[str, ...]) -> str | None:
        """None if `path` can address a value, else why not."""
        return self._walk(self.schema, path, [])

    def _walk(self, schema: Any, path: tuple[str, ...], seen: list[str]) -> str | None:
        if isinstance(schema, str) and schema in self.names:
            schema = self.names[schema]
        if isinstance(schema, list):  # a union: any branch will do
            reasons = [self._walk(b, path, seen) for b in schema if b != "null"]
            return (
                None
                if any(r is None for r in reasons)
                else next((r for r in reasons if r), "only null")
            )
        if not path:
            return None
        here = ".".join(seen) or "the event"
        if isinstance(schema, dict) and schema.get("type") == "record":
            fields = {f["name"]: f["type"] for f in schema["fields"]}
            if path[0] not in fields:
                return f"{here} has no field {path[0]!r} (fields: {', '.join(sorted(fields))})"
            return self._walk(fields[path[0]], path[1:], [*seen, path[0]])
        if isinstance(schema, dict) and schema.get("type") == "map":
            return self._walk(schema["values"], path[1:], [*seen, path[0]])
        return f"{here} is a plain value; it has no field {path[0]!r}"


def _read_secret(source: TokenSource, base: Path, what: Literal["token", "secret"]) -> str:
    """The secret, checked to be one line of printable characters; a ValueError naming the
    variable or file (never the value) otherwise."""
    if source.env:
        where = f"the environment variable {source.env}"
        value = os.environ.get(source.env, "")
        if not value:
            raise ValueError(f"{where} is not set")
    else:
        assert source.file is not None
        file = source.file if source.file.is_absolute() else base / source.file
        where = f"the {what} file {file}"
        try:
            value = file.read_text(encoding="utf-8")
        except OSError as e:
            raise ValueError(f"cannot read {where}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise ValueError(f"{where} is not UTF-8 text") from None
    # Files, and variables filled from Kubernetes Secrets, usually end with a line break.
    value = value.removesuffix("\n").removesuffix("\r")
    if not value:
        raise ValueError(f"{where} is empty")
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError(
            f"{where} holds a {what} with whitespace or a control character in it (a line "
            f"break, space or tab?); a {what} is one line of printable characters"
        )
    if what == "token" and not value.isascii():
        raise ValueError(
            f"{where} holds a token with non-ASCII characters (it is sent in a header)"
        )
    return value


class _RulesCompiler:
    def __init__(self, config: ConfigFile, paths: _SchemaPaths, problems: _Problems) -> None:
        self.config = config
        self.paths = paths
        self.problems = problems
        self.names_seen: dict[str, Loc] = {}
        self.variables = paths.top_level() | {"event"}

    def template(self, source: str, loc: Loc) -> CompiledTemplate | None:
        try:
            compiled = CompiledTemplate(source)
        except TemplateSyntaxError as e:
            self.problems.add(loc, f"template syntax error: {e.message}")
            return None
        except ValueError as e:  # streamer.regexes.RegexError: a literal regex_replace pattern
            self.problems.add(loc, f"invalid regular expression in regex_replace: {e}")
            return None
        self._check_variables(undeclared_variables(source), loc)
        return compiled

    def _check_variables(self, used: set[str], loc: Loc) -> None:
        unknown = used - self.variables
        if unknown:
            self.problems.add(
                loc,
                f"unknown variable(s) {', '.join(sorted(unknown))}; "
                f"templates see {', '.join(sorted(self.variables))}",
            )

    def templates(
        self, spec: Templates, inherited: Mapping[str, CompiledTemplate], loc: Loc
    ) -> dict[str, CompiledTemplate]:
        out = dict(inherited)
        for name in TEMPLATE_FIELDS:
            source = getattr(spec, name)
            if source is not None:
                compiled = self.template(source, (*loc, "templates", name))
                if compiled is not None:
                    out[name] = compiled
        return out

    def metadata(self, tree: Mapping[str, Any], loc: Loc) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            if isinstance(value, Mapping):
                out[key] = self.metadata(value, (*loc, key))
            elif isinstance(value, str | int | float | bool):
                compiled = self.template(str(value), (*loc, key))
                if compiled is not None:
                    out[key] = compiled
            else:
                self.problems.add(
                    (*loc, key), "metadata values are templates (text) or nested maps"
                )
        return out

    def destination(self, name: str | None, loc: Loc) -> str | None:
        if name is None or name == DROP:
            return None
        if name not in self.config.destinations:
            known = ", ".join(sorted(self.config.destinations)) or "none"
            self.problems.add(
                (*loc, "destination"),
                f"unknown destination {name!r} (destinations: {known}; or 'drop')",
            )
        return name

    def route(self, spec: RouteSpec, loc: Loc, parent: Route | None) -> Route:
        if spec.name in self.names_seen:
            self.problems.add(
                (*loc, "name"), f"duplicate route name {spec.name!r}; names must be unique"
            )
        self.names_seen[spec.name] = loc
        matchers = []
        for i, text in enumerate(spec.match):
            try:
                matcher = Matcher.parse(text)
            except ValueError as e:
                self.problems.add((*loc, "match", i), str(e))
                continue
            problem = self.paths.problem(matcher.path)
            if problem:
                self.problems.add(
                    (*loc, "match", i), f"unknown field path {'.'.join(matcher.path)}: {problem}"
                )
            matchers.append(matcher)
        when = None
        if spec.when is not None:
            try:
                when = CompiledExpression(spec.when)
            except TemplateSyntaxError as e:
                self.problems.add((*loc, "when"), f"expression syntax error: {e.message}")
            except ValueError as e:  # streamer.regexes.RegexError, in a regex_replace
                self.problems.add((*loc, "when"), f"invalid regular expression: {e}")
            else:
                self._check_variables(
                    undeclared_variables(spec.when, expression=True), (*loc, "when")
                )
        inherited_destination = parent.destination if parent else None
        explicit = spec.destination
        destination = (
            self.destination(explicit, loc) if explicit is not None else inherited_destination
        )
        path = f"{parent.path} > {spec.name}" if parent else spec.name
        route = Route(
            name=spec.name,
            path=path,
            matchers=tuple(matchers),
            when=when,
            destination=destination,
            templates=self.templates(spec.templates, parent.templates if parent else {}, loc),
            metadata=(
                self.metadata(spec.templates.metadata, (*loc, "templates", "metadata"))
                if spec.templates.metadata is not None
                else (parent.metadata if parent else self.metadata(DEFAULT_METADATA, loc))
            ),
            on_template_error=spec.on_template_error
            or (parent.on_template_error if parent else "dead-letter"),
            continue_=spec.continue_,
        )
        children = tuple(
            self.route(child, (*loc, "routes", i), route) for i, child in enumerate(spec.routes)
        )
        if explicit is None and parent is None:
            # Children inherit it; without one, an event no child matches would vanish.
            self.problems.add(
                loc, "a top-level route needs `destination:` (a destination name, or drop)"
            )
        return Route(**{**route.__dict__, "children": children})

    def rules(self) -> Rules:
        routes = tuple(
            self.route(spec, ("routes", i), None) for i, spec in enumerate(self.config.routes)
        )
        default = None
        if isinstance(self.config.default, DefaultRoute):
            spec = self.config.default
            default = Route(
                name="default",
                path="default",
                destination=self.destination(spec.destination, ("default",)),
                templates=self.templates(spec.templates, {}, ("default",)),
                metadata=self.metadata(
                    spec.templates.metadata or DEFAULT_METADATA,
                    ("default", "templates", "metadata"),
                ),
                on_template_error=spec.on_template_error or "dead-letter",
            )
        return Rules(routes, default)


def load_config(path: str | Path, *, check_secrets: bool = True) -> Config:
    """Reads, validates and compiles a configuration file; raises ConfigError."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(path, [f"{path}: cannot read the file: {e.strerror}"]) from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        raise ConfigError(path, [f"{path}:{line}: not valid YAML: {e}"]) from None
    problems = _Problems(path, root, data)
    if not isinstance(data, dict):
        problems.add(
            (), "the file must be a YAML mapping (kafka:, topics:, destinations:, routes:)"
        )
        problems.raise_if_any()
    config, invalid_destinations = _validate_sections(data, problems)
    _check_no_inline_secrets(data, problems)

    base = path.parent
    reader_schema: dict[str, Any] = {}
    schema_file = Path(config.reader_schema)
    try:
        reader_schema = load_schema(
            schema_file if schema_file.is_absolute() else base / schema_file
        )
    except ValueError as e:
        problems.add(("reader_schema",), str(e))
        problems.raise_if_any()

    for i, topic in enumerate(config.topics):
        if topic.format == "raw" and not topic.writer_schema:
            problems.add(
                ("topics", i, "format"), "the raw format needs writer_schema: (a .avsc file)"
            )
        if topic.format == "confluent" and config.schema_registry is None:
            problems.add(
                ("topics", i, "format"), "the confluent format needs schema_registry: url:"
            )
    tokens: dict[str, SecretStr] = {}
    for name, destination in config.destinations.items():
        if name in invalid_destinations:
            continue
        token_loc: Loc = ("destinations", name, "token")
        if (destination.token.env is None) == (destination.token.file is None):
            problems.add(token_loc, "give exactly one of env: (a variable name) or file: (a path)")
        elif check_secrets:
            try:
                tokens[name] = SecretStr(_read_secret(destination.token, base, "token"))
            except ValueError as e:
                problems.add(token_loc, str(e))
    kafka_secrets = _secrets(
        config.kafka.secret_properties,
        ("kafka", "secret_properties"),
        base,
        problems,
        check_secrets,
    )
    registry_secrets = _secrets(
        config.schema_registry.secret_properties if config.schema_registry else {},
        ("schema_registry", "secret_properties"),
        base,
        problems,
        check_secrets,
    )
    rules = _RulesCompiler(config, _SchemaPaths(reader_schema), problems).rules()
    problems.raise_if_any()
    return Config(path, config, rules, reader_schema, tokens, kafka_secrets, registry_secrets)


def _secrets(
    sources: Mapping[str, TokenSource], loc: Loc, base: Path, problems: _Problems, check: bool
) -> dict[str, SecretStr]:
    out: dict[str, SecretStr] = {}
    for name, source in sources.items():
        if (source.env is None) == (source.file is None):
            problems.add(
                (*loc, name), "give exactly one of env: (a variable name) or file: (a path)"
            )
        elif check:
            try:
                out[name] = SecretStr(_read_secret(source, base, "secret"))
            except ValueError as e:
                problems.add((*loc, name), str(e))
    return out


_SECRET_WORDS = ("password", "passphrase", "secret", "credentials", "token")
_SECRET_KEYS = frozenset({"basic.auth.user.info", "ssl.key.pem"})
# Keys that say where a secret comes from or is sent to, not what it is:
# basic.auth.credentials.source, sasl.oauthbearer.token.endpoint.url, ...
_SECRET_SOURCE_SUFFIXES = (".source", ".url", ".location", ".file")


def is_secret_key(key: str) -> bool:
    """Whether a Kafka or registry property holds a secret, so belongs in secret_properties.

    A secret: basic.auth.user.info, ssl.key.pem, and any key containing password,
    passphrase, secret, credentials or token, except keys ending in .source, .url,
    .location or .file (they name where a secret comes from, not the secret).
    """
    key = key.lower()
    if key in _SECRET_KEYS:
        return True
    return any(w in key for w in _SECRET_WORDS) and not key.endswith(_SECRET_SOURCE_SUFFIXES)


def _check_no_inline_secrets(data: Mapping[str, Any], problems: _Problems) -> None:
    """Refuses secrets written in the file: secret-looking properties and URL credentials."""
    pointers = {
        "kafka": "set kafka.properties sasl.username, and sasl.password in kafka.secret_properties",
        "schema_registry": "give them as basic.auth.user.info (user:password) in "
        "schema_registry.secret_properties",
    }
    for section, address in (("kafka", "bootstrap_servers"), ("schema_registry", "url")):
        settings = data.get(section)
        if not isinstance(settings, dict):
            continue
        if "@" in str(settings.get(address, "")):
            problems.add(
                (section, address),
                f"credentials (user:password@) are refused here: {pointers[section]}: "
                "{env: VARIABLE} or {file: PATH}",
            )
        properties = settings.get("properties")
        for key, value in properties.items() if isinstance(properties, dict) else ():
            if is_secret_key(str(key)):
                problems.add(
                    (section, "properties", key),
                    f"{key} is a secret: give it in {section}.secret_properties as "
                    f"{key}: {{env: VARIABLE}} or {{file: PATH}}, never in the file",
                )
            elif isinstance(value, str) and "://" in value and "@" in value:
                problems.add(
                    (section, "properties", key),
                    "credentials in a URL (user:password@) are refused in the file: give the "
                    f"whole property in {section}.secret_properties as "
                    f"{key}: {{env: VARIABLE}} or {{file: PATH}}",
                )


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_SECTION_TYPES: dict[str, Any] = {
    "kafka": KafkaSettings,
    "delivery": DeliverySettings,
    "schema_registry": SchemaRegistrySettings | None,
    "reader_schema": str,
    "default": Literal["drop"] | DefaultRoute,
}


def _validate(type_: Any, data: Any, loc: Loc, problems: _Problems) -> Any:
    """The validated value, or None after adding each of its problems."""
    try:
        return TypeAdapter(type_).validate_python(data)
    except ValidationError as e:
        for error in e.errors():
            problems.add((*loc, *_without_union_tags(error["loc"])), _message(error))
        return None


def _route_spec(raw: Any, loc: Loc, problems: _Problems) -> RouteSpec | None:
    """One route and, separately, each child: a bad child does not hide its siblings."""
    if not isinstance(raw, dict):
        problems.add(loc, "a route is a mapping (name:, match:, destination:, ...)")
        return None
    children_raw = raw.get("routes", [])
    spec: RouteSpec | None = _validate(
        RouteSpec, {k: v for k, v in raw.items() if k != "routes"}, loc, problems
    )
    if not isinstance(children_raw, list):
        problems.add((*loc, "routes"), "routes: must be a list of routes")
        children_raw = []
    children = [_route_spec(c, (*loc, "routes", i), problems) for i, c in enumerate(children_raw)]
    if spec is None:
        return None
    return spec.model_copy(update={"routes": [c for c in children if c is not None]})


def _validate_sections(data: dict[str, Any], problems: _Problems) -> tuple[ConfigFile, set[str]]:
    """Validates each part on its own, so one bad part does not hide the others'.

    Returns the valid parts and the names of destinations that were invalid.
    """
    for key in data.keys() - ConfigFile.model_fields.keys():
        problems.add((key,), "unknown setting (check the spelling; see examples/streamer.yaml)")
    parts: dict[str, Any] = {}
    for key in ("kafka", "schema_registry", "delivery", "reader_schema", "default"):
        if key in data:
            parts[key] = _validate(_SECTION_TYPES[key], data[key], (key,), problems)
    topics = data.get("topics")
    destinations = data.get("destinations")
    routes = data.get("routes", [])
    if not isinstance(topics, list) or not topics:
        problems.add(("topics",), "topics: must list at least one topic")
        topics = []
    if not isinstance(destinations, dict) or not destinations:
        problems.add(("destinations",), "destinations: must name at least one destination")
        destinations = {}
    if not isinstance(routes, list):
        problems.add(("routes",), "routes: must be a list of routes")
        routes = []
    parts["topics"] = [_validate(Topic, t, ("topics", i), problems) for i, t in enumerate(topics)]
    parts["destinations"] = {
        name: _validate(Destination, d, ("destinations", name), problems)
        for name, d in destinations.items()
    }
    parts["routes"] = [_route_spec(r, ("routes", i), problems) for i, r in enumerate(routes)]
    valid_topics = [t for t in parts["topics"] if t is not None]
    # An invalid destination keeps its name, so routes naming it are not blamed as well.
    valid_destinations = {
        name: d
        or Destination.model_construct(alert_source_config_id="?", token=TokenSource(env="?"))
        for name, d in parts["destinations"].items()
    }
    invalid = {name for name, d in parts["destinations"].items() if d is None}
    config = ConfigFile.model_construct(
        kafka=parts.get("kafka") or KafkaSettings(),
        delivery=parts.get("delivery") or DeliverySettings(),
        schema_registry=parts.get("schema_registry"),
        reader_schema=parts.get("reader_schema")
        or ConfigFile.model_fields["reader_schema"].default,
        topics=valid_topics,
        destinations=valid_destinations,
        default=parts.get("default") or "drop",
        routes=[r for r in parts["routes"] if r is not None],
    )
    return config, invalid


def _without_union_tags(loc: Iterable[str | int]) -> Loc:
    # pydantic names union branches in locations ("DefaultRoute"); operators never wrote those.
    return tuple(k for k in loc if not (isinstance(k, str) and k[:1].isupper()))


def _message(error: Any) -> str:
    kind, message = error["type"], error["msg"]
    if kind == "extra_forbidden":
        return "unknown setting (check the spelling; see examples/streamer.yaml)"
    if kind == "missing":
        return "required setting is missing"
    if kind == "value_error" and "error" in error.get("ctx", {}):
        return str(error["ctx"]["error"])  # our validators' own words, without "Value error, "
    return str(message)
