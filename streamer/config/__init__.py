"""The operator's configuration file: Kafka, topics, destinations and the routing tree.

`load_config(path)` reads one YAML file, validates all of it and compiles the rules
once. Every problem is collected and reported together as a `ConfigError`, each line
naming `file:line`, the route path where there is one, and what is wrong, so an operator
fixes a file in one pass. Nothing is consumed before a file loads cleanly. Secrets come
from env or files only, are validated at load, and print as `**********`.

The parts: `model` (the sections' pydantic models and the loaded `Config`), `problems`
(`ConfigError`, problems with their line numbers), `secrets` (reading and validating
secrets, refusing inline ones), `rule_compiler` (the routing tree checked against the
reader schema and compiled into `Rules`), `yaml_limits` (a file's size, depth and alias
expansion bounded before anything walks it), `loading` (`load_config`).
"""

from streamer.config.loading import load_config
from streamer.config.model import (
    DROP,
    TEMPLATE_FIELDS,
    Config,
    ConfigFile,
    DefaultRoute,
    DeliverySettings,
    Destination,
    KafkaSettings,
    RouteSpec,
    SchemaRegistrySettings,
    Templates,
    TokenSource,
    Topic,
)
from streamer.config.problems import ConfigError, Loc
from streamer.config.secrets import is_secret_key

__all__ = [
    "DROP",
    "TEMPLATE_FIELDS",
    "Config",
    "ConfigError",
    "ConfigFile",
    "DefaultRoute",
    "DeliverySettings",
    "Destination",
    "KafkaSettings",
    "Loc",
    "RouteSpec",
    "SchemaRegistrySettings",
    "Templates",
    "TokenSource",
    "Topic",
    "is_secret_key",
    "load_config",
]
