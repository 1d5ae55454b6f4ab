"""Alertmanager receivers as streamer destinations, for `streamer rules import`.

Invariant: an import never sends an alert, or a secret, anywhere the operator did not see and
agree to. A receiver becomes:

- the destination `--receiver NAME=DESTINATION` names (one of the base's, or `drop`);
- the base's destination for the same incident.io alert source, when it has one;
- a new destination, from a webhook to incident.io's alert-events URL or an
  `incidentio_configs` entry, shown with its URL's host and where its token comes from; only
  when its host is incident.io's API (`api.incident.io`, https) or one `--allow-host` names,
  when its name is neither `drop` nor a destination of the base (a collision is an error
  naming both: nothing of the base is replaced), and when its token file is not one the base
  reads another secret from (a Kafka password must never go out as a bearer token);
- `drop`, for a receiver with no integration (a blackhole, as in Alertmanager).

Any other receiver is an error asking for `--receiver`. Inline tokens are never copied: the
new destination reads an environment variable instead. Malformed receivers are problems
naming `file:line`, never exceptions.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from streamer.config.secrets import read_regular_file
from streamer.config.yaml_text import go_bool, line_of

__all__ = ["INCIDENT_IO_API", "ReceiverReader", "Resolved", "read_small_file", "shown"]

INCIDENT_IO_API = "api.incident.io"
DROP = "drop"
# incident.io's alert-events URLs: the HTTP source streamer posts to, and the Alertmanager
# source that Alertmanager's own incident.io integration posts to.
_ALERT_EVENTS_PATH = re.compile(r"^/v2/alert_events/(http|alertmanager)/([A-Za-z0-9_-]{1,128})/?$")
_URL_FILE_MAX_BYTES = 4096


@dataclass
class Resolved:
    destination: str  # a destination name, or "drop"
    new_destination: dict[str, Any] | None = None


@dataclass
class ReceiverReader:
    """Resolves every receiver of one Alertmanager file; problems, gaps and notes collect
    what it finds (problems stop the import)."""

    source: str  # the Alertmanager file, as named in messages
    base_destinations: Mapping[str, Any]
    mapped: Mapping[str, str]
    allowed_hosts: frozenset[str]
    alertmanager_dir: Path
    output_dir: Path
    base_secret_files: Mapping[Path, str]  # resolved path -> what the base reads from it
    problems: list[str] = field(default_factory=list)
    gaps: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def at(self, container: Any, key: Any = None) -> str:
        line = line_of(container, key)
        return f"{self.source}:{line}" if line else self.source

    def resolve(self, name: str, spec: Mapping[str, Any]) -> Resolved:
        kinds = sorted(str(k) for k, v in spec.items() if str(k).endswith("_configs") and v)
        if name in self.mapped:
            if kinds:
                self.notes.append(
                    f"Receiver {shown(name)} ({', '.join(kinds)}) delivers to "
                    f"{shown(self.mapped[name])} (--receiver)."
                )
            return Resolved(self.mapped[name])
        candidates = self._incident_io_candidates(name, spec)
        if candidates is None:
            return Resolved(DROP)  # a problem was reported
        if candidates:
            kind, hook, _ = candidates[0]
            others = [k for k in kinds if k not in ("webhook_configs", "incidentio_configs")]
            for other in others:
                self.gaps.append(
                    f"receiver {shown(name)}: {other} "
                    "(only its incident.io integration is imported)"
                )
            if (
                len(candidates) > 1
                or _count(spec, "webhook_configs") + _count(spec, "incidentio_configs") > 1
            ):
                self.gaps.append(
                    f"receiver {shown(name)}: integrations other than the first incident.io one"
                )
            return self._incident_io_destination(name, kind, hook)
        if not kinds:
            self.notes.append(
                f"Receiver {shown(name)} has no integration: routes to it drop, as in Alertmanager."
            )
            return Resolved(DROP)
        self.problems.append(
            f"{self.at(spec)}: receiver {shown(name)} ({', '.join(kinds)}) has no equivalent "
            f"in streamer: map it with --receiver {shown(name)}=DESTINATION (a destination of "
            "the base configuration, or drop)"
        )
        return Resolved(DROP)

    def _incident_io_candidates(
        self, name: str, spec: Mapping[str, Any]
    ) -> list[tuple[str, Mapping[str, Any], int]] | None:
        found: list[tuple[str, Mapping[str, Any], int]] = []
        for kind in ("incidentio_configs", "webhook_configs"):
            entries = spec.get(kind)
            if entries is None:
                continue
            if not isinstance(entries, list):
                self.problems.append(f"{self.at(spec, kind)}: {kind}: must be a list")
                return None
            for i, entry in enumerate(entries):
                if not isinstance(entry, Mapping):
                    self.problems.append(
                        f"{self.at(entries, i)}: receiver {shown(name)}: each of {kind} "
                        "must be a mapping"
                    )
                    return None
                if kind == "incidentio_configs" or _alert_events_url(entry.get("url")):
                    found.append((kind, entry, i))
        return found

    def _url_of(self, name: str, kind: str, hook: Mapping[str, Any]) -> str | None:
        url = hook.get("url")
        if url is None and kind == "incidentio_configs" and hook.get("url_file") is not None:
            url = self._read_url_file(name, hook)
            if url is None:
                return None
        if not isinstance(url, str) or not url:
            self.problems.append(f"{self.at(hook)}: receiver {shown(name)}: {kind} needs a url")
            return None
        return url

    def _read_url_file(self, name: str, hook: Mapping[str, Any]) -> str | None:
        file = Path(str(hook["url_file"]))
        if not file.is_absolute():
            file = self.alertmanager_dir / file
        where = f"{self.at(hook, 'url_file')}: receiver {shown(name)}: url_file {shown(str(file))}"
        text = read_small_file(file, _URL_FILE_MAX_BYTES)
        if isinstance(text, OSError | ValueError):
            self.problems.append(f"{where}: {text}")
            return None
        return text.strip()

    def _incident_io_destination(self, name: str, kind: str, hook: Mapping[str, Any]) -> Resolved:
        url = self._url_of(name, kind, hook)
        if url is None:
            return Resolved(DROP)
        parsed = _alert_events_url(url)
        if parsed is None:
            self.problems.append(
                f"{self.at(hook, 'url')}: receiver {shown(name)}: {shown(_without_secrets(url))} "
                "is not an incident.io alert-events URL (https://api.incident.io/v2/alert_events/"
                "http/ID); map the receiver with --receiver"
            )
            return Resolved(DROP)
        base_url, host, source_type, source_id = parsed
        for existing, spec in self.base_destinations.items():
            if isinstance(spec, Mapping) and spec.get("alert_source_config_id") == source_id:
                self.notes.append(
                    f"Receiver {shown(name)}: alert source {source_id} is the base's "
                    f"destination {shown(existing)}."
                )
                return Resolved(str(existing))
        where = f"{self.at(hook, 'url')}: receiver {shown(name)}"
        if host != INCIDENT_IO_API and host not in self.allowed_hosts:
            self.problems.append(
                f"{where}: its URL's host {shown(host)} is not incident.io's API "
                f"({INCIDENT_IO_API}): the alerts and the token would go there; pass "
                f"--allow-host {shown(host)} if you trust it (a proxy, the test double), or map "
                f"the receiver with --receiver {shown(name)}=DESTINATION"
            )
            return Resolved(DROP)
        if name == DROP or name in self.base_destinations:
            what = (
                "means drop (on purpose) in streamer"
                if name == DROP
                else (
                    "is already a destination of the base "
                    f"({_describe(self.base_destinations[name])})"
                )
            )
            self.problems.append(
                f"{where}: it would become a new destination named {shown(name)}, and that name "
                f"{what}: nothing of the base is replaced; map the receiver with --receiver "
                f"{shown(name)}=DESTINATION, or rename it in the Alertmanager file"
            )
            return Resolved(DROP)
        token = self._token(name, kind, hook)
        if token is None:
            return Resolved(DROP)
        for key in ("send_resolved", "max_alerts", "timeout"):
            if key in hook and not (key == "send_resolved" and go_bool(hook[key]) is True):
                self.gaps.append(f"receiver {shown(name)}: {kind} {key}: {shown(hook[key])}")
        destination: dict[str, Any] = {"alert_source_config_id": source_id, "token": token}
        if base_url != f"https://{INCIDENT_IO_API}":
            destination["url"] = base_url
        credential = (
            f"file {os.path.abspath(self.output_dir / token['file'])}"
            if "file" in token
            else f"env {token['env']}"
        )
        self.notes.append(
            f"Receiver {shown(name)} is a new destination {shown(name)}: host {shown(host)}, "
            f"alert source {source_id}, token from {shown(credential)}."
        )
        if source_type == "alertmanager":
            self.notes.append(
                f"Receiver {shown(name)}: {source_id} is an incident.io alert source of type "
                "Alertmanager; streamer posts to HTTP alert sources (/v2/alert_events/http/ID), a "
                "different type: create an HTTP alert source in incident.io and put its id and "
                "token in this destination, or incident.io will refuse the events."
            )
        return Resolved(name, destination)

    def _token(self, name: str, kind: str, hook: Mapping[str, Any]) -> dict[str, str] | None:
        http = hook.get("http_config") or {}
        if not isinstance(http, Mapping):
            self.problems.append(f"{self.at(hook, 'http_config')}: http_config: must be a mapping")
            return None
        authorization = http.get("authorization") or {}
        if not isinstance(authorization, Mapping):
            self.problems.append(
                f"{self.at(http, 'authorization')}: authorization: must be a mapping"
            )
            return None
        file: Any = None
        inline = False
        if kind == "incidentio_configs":
            file = hook.get("alert_source_token_file")
            inline = hook.get("alert_source_token") is not None
        if file is None and not inline:
            file = authorization.get("credentials_file") or http.get("bearer_token_file")
            inline = bool(authorization.get("credentials") or http.get("bearer_token"))
        url = str(hook.get("url", ""))
        inline = inline or "token=" in url or "@" in url.partition("://")[2].partition("/")[0]
        if file is not None:
            if not isinstance(file, str) or not file:
                self.problems.append(f"{self.at(hook)}: receiver {shown(name)}: empty token file")
                return None
            resolved = Path(file) if Path(file).is_absolute() else self.alertmanager_dir / file
            secret = self.base_secret_files.get(Path(os.path.abspath(resolved)))
            if secret is not None:
                self.problems.append(
                    f"{self.at(hook)}: receiver {shown(name)}: its token file {shown(file)} is "
                    f"where the base reads {secret}: that secret would go to incident.io as a "
                    "bearer token; give the receiver its own token file"
                )
                return None
            # Alertmanager reads a relative path from its configuration's folder.
            if Path(file).is_absolute():
                return {"file": file}
            return {"file": os.path.relpath(resolved, self.output_dir)}
        variable = "INCIDENT_IO_TOKEN_" + (
            re.sub(r"[^A-Z0-9]+", "_", name.upper()).strip("_") or "X"
        )
        if inline:
            self.notes.append(
                f"Receiver {shown(name)}: its inline token was not copied; set {variable} "
                "(or give token: {file: ...})."
            )
        return {"env": variable}


def _count(spec: Mapping[str, Any], kind: str) -> int:
    entries = spec.get(kind)
    return len(entries) if isinstance(entries, list) else 0


def _alert_events_url(url: Any) -> tuple[str, str, str, str] | None:
    """(base URL, host, source type, alert source id) of an incident.io alert-events URL."""
    if not isinstance(url, str):
        return None
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return None
    found = _ALERT_EVENTS_PATH.match(parts.path)
    if not found or not host or parts.scheme not in ("https", "http"):
        return None
    netloc = f"[{host}]" if ":" in host else host
    base = f"{parts.scheme}://{netloc}{f':{port}' if port else ''}"
    return base, host.lower(), found.group(1), found.group(2)


def read_small_file(path: Path, limit: int) -> str | OSError | ValueError:
    """A regular file's text, at most `limit` bytes; the error otherwise (never raised)."""
    try:
        return read_regular_file(path, limit).decode("utf-8")
    except OSError as e:
        return OSError(f"cannot be read: {e.strerror}")
    except UnicodeDecodeError:
        return ValueError("is not UTF-8 text")
    except ValueError as e:
        return e


def _without_secrets(url: str) -> str:
    """A URL fit for a message: no user:password@, no query string."""
    url = url.split("#", 1)[0].split("?", 1)[0]
    scheme, sep, rest = url.partition("://")
    if sep:
        authority, slash, path = rest.partition("/")
        url = f"{scheme}://{authority.rpartition('@')[2]}{slash}{path}"
    return url


def _describe(spec: Any) -> str:
    if not isinstance(spec, Mapping):
        return "?"
    url = spec.get("url", f"https://{INCIDENT_IO_API}")
    return f"{_without_secrets(str(url))}, alert source {shown(spec.get('alert_source_config_id'))}"


def shown(value: Any, limit: int = 200) -> str:
    """A value from the input, fit for one line of a message or a comment: control characters
    and line breaks escaped, and bounded."""
    text = value if isinstance(value, str) else repr(value)
    escaped = "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )
    return escaped if len(escaped) <= limit else escaped[: limit - 1] + "…"
