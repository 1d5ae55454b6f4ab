"""`load_config(path)`: reads one YAML file, validates all of it, compiles the rules once.

Each section (and each topic, destination and route) is validated on its own, so one bad
part does not hide another's problems; all of them are raised together as one
`ConfigError`. Nothing is consumed before a file loads cleanly. Before anything walks the
file, it is bounded (`yaml_limits`: its size, its depth, how far its aliases expand it).
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar

import yaml
from pydantic import SecretStr, TypeAdapter, ValidationError

from streamer.config.model import (
    Config,
    ConfigFile,
    DefaultRoute,
    DeliverySettings,
    Destination,
    InhibitionSettings,
    InhibitRuleSpec,
    KafkaSettings,
    NamedTimeInterval,
    RouteSpec,
    SchemaRegistrySettings,
    TokenSource,
    Topic,
)
from streamer.config.problems import ConfigError, Loc, Problems
from streamer.config.rule_compiler import RulesCompiler, SchemaPaths
from streamer.config.secrets import check_no_inline_secrets, read_secret, read_secrets
from streamer.config.yaml_limits import SafeLoader, YamlLimitError, check_yaml, read_yaml_text
from streamer.config.yaml_text import keep_label_text
from streamer.decoding import load_schema
from streamer.matcher_modes import MatcherMode

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _without_cycle_collection(load: Callable[_P, _R]) -> Callable[_P, _R]:
    """`load`, with Python's cycle collector paused while it runs.

    A load makes about a hundred objects per route (YAML nodes, models, compiled routes)
    and nearly all of them live on until it returns; the collector would walk the growing
    heap again and again, half of a 10,000-route load (bench/config_scale.py). The pause
    lasts one load: garbage cycles it leaves are collected as usual afterwards."""

    @functools.wraps(load)
    def paused(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return load(*args, **kwargs)
        finally:
            if was_enabled:
                gc.enable()

    return paused


@_without_cycle_collection
def load_config(path: str | Path, *, check_secrets: bool = True) -> Config:
    """Reads, validates and compiles a configuration file; raises ConfigError."""
    path = Path(path)
    try:
        text = read_yaml_text(path)
    except OSError as e:
        raise ConfigError(path, [f"{path}: cannot read the file: {e.strerror}"]) from None
    except YamlLimitError as e:
        raise ConfigError(path, [f"{path}:{e.line}: {e}"]) from None
    try:
        check_yaml(text)  # before anything walks it: aliases could expand it 2^N times
        loader = SafeLoader(text)
        try:
            root = loader.get_single_node()
            keep_label_text(root)  # label names and values read as Alertmanager reads them
            data: Any = loader.construct_document(root) if root is not None else None
        finally:
            loader.dispose()
    except YamlLimitError as e:
        raise ConfigError(path, [f"{path}:{e.line}: {e}"]) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        raise ConfigError(path, [f"{path}:{line}: not valid YAML: {e}"]) from None
    del root  # a problem's line composes the nodes again (Problems): they are big
    problems = Problems(path, functools.partial(_nodes, text), data)
    if not isinstance(data, dict):
        problems.add(
            (), "the file must be a YAML mapping (kafka:, topics:, destinations:, routes:)"
        )
        problems.raise_if_any()
    config, invalid_destinations = _validate_sections(data, problems)
    check_no_inline_secrets(data, problems)

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
                tokens[name] = SecretStr(read_secret(destination.token, base, "token"))
            except ValueError as e:
                problems.add(token_loc, str(e))
    kafka_secrets = read_secrets(
        config.kafka.secret_properties,
        ("kafka", "secret_properties"),
        base,
        problems,
        check_secrets,
    )
    registry_secrets = read_secrets(
        config.schema_registry.secret_properties if config.schema_registry else {},
        ("schema_registry", "secret_properties"),
        base,
        problems,
        check_secrets,
    )
    rules = RulesCompiler(config, SchemaPaths(reader_schema), problems).rules()
    problems.raise_if_any()
    return Config(
        path,
        config,
        rules,
        reader_schema,
        tokens,
        kafka_secrets,
        registry_secrets,
        problems.sorted_warnings(),
    )


def _nodes(text: str) -> yaml.Node | None:
    """The text's YAML nodes, for their lines."""
    loader = SafeLoader(text)
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()


_SECTION_TYPES: dict[str, Any] = {
    "kafka": KafkaSettings,
    "delivery": DeliverySettings,
    "schema_registry": SchemaRegistrySettings | None,
    "reader_schema": str,
    "matcher_mode": MatcherMode,
    "default": Literal["drop"] | DefaultRoute,
    "time_intervals": list[NamedTimeInterval],
    "inhibition": InhibitionSettings,
}


def _validate(type_: Any, data: Any, loc: Loc, problems: Problems) -> Any:
    """The validated value, or None after adding each of its problems."""
    try:
        return TypeAdapter(type_).validate_python(data)
    except ValidationError as e:
        for error in e.errors():
            problems.add((*loc, *_without_union_tags(error["loc"])), _message(error))
        return None


def _route_spec(raw: Any, loc: Loc, problems: Problems) -> RouteSpec | None:
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


def _validate_sections(data: dict[str, Any], problems: Problems) -> tuple[ConfigFile, set[str]]:
    """Validates each part on its own, so one bad part does not hide the others'.

    Returns the valid parts and the names of destinations that were invalid.
    """
    for key in data.keys() - ConfigFile.model_fields.keys():
        problems.add((key,), "unknown setting (check the spelling; see examples/streamer.yaml)")
    parts: dict[str, Any] = {}
    for key in _SECTION_TYPES:
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
    inhibit_rules = data.get("inhibit_rules") or []
    if not isinstance(inhibit_rules, list):
        problems.add(("inhibit_rules",), "inhibit_rules: must be a list of rules")
        inhibit_rules = []
    parts["inhibit_rules"] = [  # each on its own: one bad rule does not hide the others'
        _validate(InhibitRuleSpec, r, ("inhibit_rules", i), problems)
        for i, r in enumerate(inhibit_rules)
    ]
    valid_topics = [t for t in parts["topics"] if t is not None]
    # An invalid destination keeps its name, so routes naming it are not blamed as well.
    valid_destinations = {
        name: d
        or Destination.model_construct(
            alert_source_config_id="?", token=TokenSource.model_construct(env="?")
        )
        for name, d in parts["destinations"].items()
    }
    invalid = {name for name, d in parts["destinations"].items() if d is None}
    config = ConfigFile.model_construct(
        kafka=parts.get("kafka") or KafkaSettings(),
        delivery=parts.get("delivery") or DeliverySettings(),
        schema_registry=parts.get("schema_registry"),
        reader_schema=parts.get("reader_schema")
        or ConfigFile.model_fields["reader_schema"].default,
        matcher_mode=parts.get("matcher_mode") or ConfigFile.model_fields["matcher_mode"].default,
        topics=valid_topics,
        destinations=valid_destinations,
        default=parts.get("default") or "drop",
        time_intervals=parts.get("time_intervals") or [],
        inhibit_rules=[r for r in parts["inhibit_rules"] if r is not None],
        inhibition=parts.get("inhibition") or InhibitionSettings(),
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
