"""What the rules do with an event, as `rules test` prints it, and how two configurations differ.

Invariant: an outcome is computed by the service's own walk (`Rules.evaluate`, or
`Rules.trace` when the reason is wanted too), never by a re-implementation, so `rules test`,
`rules diff` and the Alertmanager conformance suite all report what `streamer run` would
do; nothing is sent. Two outcomes differ in `route` when the matched routes differ, in
`destination` when the destinations delivered to (or dead-lettered for) differ, and in
`payload` when a delivery to the same route and destination renders differently. A
destination is compared by what it is (`destination_identities`: its URL, alert source,
token reference and limit), not by its name: a change that keeps a name but points it at
another URL or token is a changed destination.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from streamer.inhibition import (
    FiringSources,
    Inhibition,
    alert_labels,
    fingerprint,
    source_state,
)
from streamer.routing import Rules
from streamer.silence_index import Silences, labels_of

__all__ = ["changes", "destination_identities", "outcome", "summary"]


def outcome(
    rules: Rules,
    event: Mapping[str, Any],
    *,
    explain: bool = False,
    at: datetime | None = None,
    firing: FiringSources | None = None,
    resolve_timeout: float = 300.0,
    silences: Silences | None = None,
) -> dict[str, Any]:
    """matched_routes, deliveries (route, destination, payload), dead_letters, muted (routes
    a time interval kept quiet at `at`, None: now, and by which), dropped; and `explain`
    (why each route did or did not match) from the same walk when asked.

    With `firing` (the sources earlier events of the same run fired), the event first
    updates it if it is a source alert of an inhibit rule, then its firing deliveries are
    `inhibited` (with the rule and the source) if a firing source inhibits it, as
    `streamer run` does (streamer/firing_state.py, streamer/intake.py).

    With `silences`, firing deliveries an active silence matches at `at` (None: now) are
    `silenced` (with the silence), before inhibition, as `streamer run` does."""
    if explain:
        decision, explanation = rules.trace(event, at)
    else:
        decision, explanation = rules.evaluate(event, at), None
    deliveries, inhibited = list(decision.deliveries), []
    silenced, silence = [], None
    if silences is not None and any(d.payload.status != "resolved" for d in deliveries):
        silence = silences.silencing(labels_of(event), at or datetime.now(UTC))
        if silence is not None:
            silenced = [d for d in deliveries if d.payload.status != "resolved"]
            deliveries = [d for d in deliveries if d.payload.status == "resolved"]
    if firing is not None and rules.inhibit_rules:
        now = (at or datetime.now(UTC)).timestamp()
        by = _inhibition(rules, firing, event, now, resolve_timeout)
        if by is not None:
            inhibited = [d for d in deliveries if d.payload.status != "resolved"]
            deliveries = [d for d in deliveries if d.payload.status == "resolved"]
    result: dict[str, Any] = {
        "matched_routes": list(decision.matched),
        "deliveries": [
            {
                "route": d.route,
                "destination": d.destination,
                "payload": d.payload.model_dump(exclude_none=True),
            }
            for d in deliveries
        ],
        "dead_letters": [
            {"route": f.route, "destination": f.destination, "reason": f.reason}
            for f in decision.failures
        ],
        "muted": [
            {
                "route": m.route,
                "destination": m.destination,
                "by": m.by,
                "intervals": list(m.intervals),
                "at": m.at.isoformat(),
            }
            for m in decision.muted
        ],
        "dropped": decision.dropped,
    }
    if silenced and silence is not None:
        result["silenced"] = [
            {
                "route": d.route,
                "destination": d.destination,
                "silence": silence.id,
                "matchers": silence.matcher_text,
                "ends_at": silence.ends_at.isoformat(),
                "created_by": silence.created_by,
                "comment": silence.comment,
            }
            for d in silenced
        ]
    if inhibited and by is not None:
        result["inhibited"] = [
            {
                "route": d.route,
                "destination": d.destination,
                "rule": by.rule,
                "source": by.source.fingerprint,
                "source_labels": dict(by.source.labels),
            }
            for d in inhibited
        ]
    if explanation is not None:
        result["explain"] = explanation
    return result


def _inhibition(
    rules: Rules,
    firing: FiringSources,
    event: Mapping[str, Any],
    now: float,
    resolve_timeout: float,
) -> Inhibition | None:
    labels = alert_labels(event)
    if labels is None:
        return None
    if any(rule.matches_source(labels) for rule in rules.inhibit_rules):
        source = source_state(event, labels, now, resolve_timeout)
        if source is None:
            firing.resolve(fingerprint(labels))
        else:
            firing.fire(source)
    firing.use_rules(rules.inhibit_rules)
    return firing.inhibition(rules.inhibit_rules, labels, now)


def destination_identities(destinations: Mapping[str, Any], base: Path) -> dict[str, str]:
    """What each destination is, by name, as one line: URL, alert source, where its token
    comes from (a file as an absolute path, so two files in other folders compare right)
    and its limit. `destinations` are a loaded file's (streamer.config.Destination)."""
    out: dict[str, str] = {}
    for name, d in destinations.items():
        if d.token.file is not None:
            file = d.token.file if d.token.file.is_absolute() else base / d.token.file
            token = f"token file {os.path.abspath(file)}"
        else:
            token = f"token env {d.token.env}"
        out[name] = (
            f"{d.url}, alert source {d.alert_source_config_id}, {token}, {d.events_per_minute}/min"
        )
    return out


def _destinations(result: Mapping[str, Any], identities: Mapping[str, str]) -> list[str]:
    def named(name: Any) -> str:
        identity = identities.get(name) if isinstance(name, str) else None
        return f"{name} ({identity})" if identity else f"{name}"

    delivered = [named(d["destination"]) for d in result["deliveries"]]
    muted = [
        f"{named(m['destination'])} (muted by {', '.join(m['intervals'])})"
        for m in result.get("muted", [])
    ] + [
        f"{named(i['destination'])} (inhibited by {i['rule']})" for i in result.get("inhibited", [])
    ]
    failed = [f"{named(f['destination'])} (dead letter)" for f in result["dead_letters"]]
    return delivered + muted + failed


def changes(
    event: str,
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    identities: tuple[Mapping[str, str], Mapping[str, str]] = ({}, {}),
) -> dict[str, Any] | None:
    """How the outcome of one event changed between two configurations; None if it did not.
    `identities` (old, new) say what each destination name is (destination_identities)."""
    old_ids, new_ids = identities
    kinds: list[str] = []
    if old.get("error") or new.get("error"):
        if old.get("error") == new.get("error"):
            return None
        return {"event": event, "changed": ["error"], "old": dict(old), "new": dict(new)}
    if old["matched_routes"] != new["matched_routes"]:
        kinds.append("route")
    old_destinations, new_destinations = _destinations(old, old_ids), _destinations(new, new_ids)
    if old_destinations != new_destinations or old["dropped"] != new["dropped"]:
        kinds.append("destination")
    payloads = []
    before = {(d["route"], d["destination"]): d["payload"] for d in old["deliveries"]}
    for delivery in new["deliveries"]:
        earlier = before.get((delivery["route"], delivery["destination"]))
        if earlier is None or earlier == delivery["payload"]:
            continue
        fields = {
            key: {"old": earlier.get(key), "new": delivery["payload"].get(key)}
            for key in sorted(earlier.keys() | delivery["payload"].keys())
            if earlier.get(key) != delivery["payload"].get(key)
        }
        payloads.append(
            {"route": delivery["route"], "destination": delivery["destination"], "fields": fields}
        )
    if payloads:
        kinds.append("payload")
    if not kinds:
        return None
    out: dict[str, Any] = {"event": event, "changed": kinds}
    if "route" in kinds:
        out["routes"] = {"old": old["matched_routes"], "new": new["matched_routes"]}
    if "destination" in kinds:
        out["destinations"] = {
            "old": old_destinations or ["(dropped)"],
            "new": new_destinations or ["(dropped)"],
        }
    if payloads:
        out["payloads"] = payloads
    return out


def summary(total: int, changed: Iterable[Mapping[str, Any]]) -> str:
    """A few lines for a person: how many events changed, and how, one line each."""
    changed = list(changed)
    counts = {
        k: sum(1 for c in changed if k in c["changed"])
        for k in ("route", "destination", "payload", "error")
    }
    how = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    lines = [
        f"{total} event{'s' if total != 1 else ''}: {len(changed)} changed"
        + (f" ({how})" if how else "")
        + f", {total - len(changed)} unchanged"
    ]
    for change in changed:
        parts = []
        if "routes" in change:
            parts.append(
                f"routes {_list(change['routes']['old'])} -> {_list(change['routes']['new'])}"
            )
        if "destinations" in change:
            old, new = change["destinations"]["old"], change["destinations"]["new"]
            parts.append(f"destinations {_list(old)} -> {_list(new)}")
        for payload in change.get("payloads", []):
            fields = ", ".join(payload["fields"])
            parts.append(f"{payload['route']} -> {payload['destination']}: {fields} changed")
        if "error" in change["changed"]:
            parts.append(f"error: {change['old'].get('error') or change['new'].get('error')}")
        lines.append(f"  {change['event']}: " + "; ".join(parts))
    return "\n".join(lines)


def _list(items: list[str]) -> str:
    return ", ".join(items) if items else "(none)"
