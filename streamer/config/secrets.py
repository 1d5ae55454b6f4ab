"""Secrets: read from an environment variable or a file, validated, never inline.

Every secret (a destination's token, a Kafka or registry secret property) is read from an
environment variable or a file, never written in the file: a property whose key looks secret
(`is_secret_key`) and a URL with `user:password@` are refused inline. Each is validated at
load as one line of printable characters (one trailing line break, as files and Kubernetes
Secrets usually have, is removed), so no HTTP or Kafka library ever quotes a malformed one
back in an error; problems name the variable or file, never the value, and an `env:` that
is not a variable name is not quoted either (it may be the secret, pasted by mistake), nor
is one that is not set unless it reads like a variable's name (UPPER_CASE words): a token
pasted into `env:` may well be a valid name (`sk_live_...`). A secret file is read only if
it is a regular file, and no further than MAX_SECRET_FILE_BYTES: a device or a FIFO named
by mistake is refused at once instead of hanging or filling memory.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr

from streamer.config.model import NOT_AN_ENV_NAME, TokenSource, is_env_name
from streamer.config.problems import Loc, Problems

MAX_SECRET_FILE_BYTES = 64 * 1024  # a token is ~100 bytes; a JAAS or OAuth config a few KiB
# How a variable's name reads (INCIDENT_IO_TOKEN_PAYMENTS); a token rarely does.
_CONVENTIONAL_NAME = re.compile(r"[A-Z][A-Z0-9]{0,11}(?:_[A-Z0-9]{1,12}){0,7}")


def read_regular_file(path: Path, limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; OSError if it cannot be opened,
    ValueError if it is not a regular file (a FIFO, a device: never read) or is larger."""
    # O_NONBLOCK: opening a FIFO must not wait for a writer; a regular file ignores it.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("is not a regular file")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > limit:
        raise ValueError(f"is larger than {limit // 1024} KiB")
    return b"".join(chunks)


def env_name_shown(name: str) -> str:
    """How a problem names the variable `name`: itself when it reads like a variable's name,
    else a description (it may be a secret pasted into env: by mistake)."""
    if _CONVENTIONAL_NAME.fullmatch(name):
        return f"the environment variable {name}"
    return (
        "the environment variable named in env: (its name is not shown: it does not read like "
        "a variable's name, UPPER_CASE_WORDS, and may be a secret pasted by mistake)"
    )


def read_secret(
    source: TokenSource, base: Path, what: Literal["token", "secret"], *, spaces: bool = False
) -> str:
    """The secret, checked to be one line of printable characters (with spaces only when
    `spaces`); a ValueError naming the variable or file (never the value) otherwise."""
    if source.env:
        if not is_env_name(source.env):
            raise ValueError(NOT_AN_ENV_NAME)
        where = env_name_shown(source.env)
        value = os.environ.get(source.env, "")
        if not value:
            raise ValueError(f"{where} is not set")
    else:
        assert source.file is not None
        file = source.file if source.file.is_absolute() else base / source.file
        where = f"the {what} file {file}"
        try:
            value = read_regular_file(file, MAX_SECRET_FILE_BYTES).decode("utf-8")
        except OSError as e:
            raise ValueError(f"cannot read {where}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise ValueError(f"{where} is not UTF-8 text") from None
        except ValueError as e:
            raise ValueError(f"{where} {e}") from None
    # Files, and variables filled from Kubernetes Secrets, usually end with a line break.
    value = value.removesuffix("\n").removesuffix("\r")
    if not value:
        raise ValueError(f"{where} is empty")
    if any((c.isspace() and not (spaces and c == " ")) or not c.isprintable() for c in value):
        raise ValueError(
            f"{where} holds a {what} with whitespace or a control character in it (a line "
            f"break, space or tab?); a {what} is one line of printable characters"
        )
    if what == "token" and not value.isascii():
        raise ValueError(
            f"{where} holds a token with non-ASCII characters (it is sent in a header)"
        )
    return value


def read_secrets(
    sources: Mapping[str, TokenSource], loc: Loc, base: Path, problems: Problems, check: bool
) -> dict[str, SecretStr]:
    out: dict[str, SecretStr] = {}
    for name, source in sources.items():
        if (source.env is None) == (source.file is None):
            problems.add(
                (*loc, name), "give exactly one of env: (a variable name) or file: (a path)"
            )
        elif check:
            try:
                spaces = _is_settings_list(name)
                out[name] = SecretStr(read_secret(source, base, "secret", spaces=spaces))
            except ValueError as e:
                problems.add((*loc, name), str(e))
    return out


_SECRET_WORDS = ("password", "passphrase", "secret", "credentials", "token")
_SECRET_KEYS = frozenset({"basic.auth.user.info", "ssl.key.pem", "sasl.oauthbearer.config"})
# A JAAS configuration carries its password or client secret inside (sasl.jaas.config, ...).
_SECRET_KEY_SUFFIXES = (".jaas.config",)
# Keys that say where a secret comes from or is sent to, not what it is:
# basic.auth.credentials.source, sasl.oauthbearer.token.endpoint.url, ...
_SECRET_SOURCE_SUFFIXES = (".source", ".url", ".location", ".file")


def _is_settings_list(key: str) -> bool:
    """Whether the property is space-separated settings with a secret among them."""
    key = key.lower()
    return key == "sasl.oauthbearer.config" or key.endswith(_SECRET_KEY_SUFFIXES)


def is_secret_key(key: str) -> bool:
    """Whether a Kafka or registry property holds a secret, so belongs in secret_properties.

    A secret: basic.auth.user.info, ssl.key.pem, sasl.oauthbearer.config (it may hold
    clientSecret=...), any key ending in .jaas.config (sasl.jaas.config: a password inside),
    and any key containing password, passphrase, secret, credentials or token, except keys
    ending in .source, .url, .location or .file (they name where a secret comes from, not
    the secret).
    """
    key = key.lower()
    if key in _SECRET_KEYS or key.endswith(_SECRET_KEY_SUFFIXES):
        return True
    return any(w in key for w in _SECRET_WORDS) and not key.endswith(_SECRET_SOURCE_SUFFIXES)


def check_no_inline_secrets(data: Mapping[str, Any], problems: Problems) -> None:
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
