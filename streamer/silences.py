"""Silences: an operator's "keep these alerts quiet until then", as plain values.

A `Silence` is Alertmanager's: an id, matchers in Alertmanager's matcher language (read by
streamer/label_matchers.py and streamer/matcher_modes.py, never by a parser of its own),
`starts_at`, `ends_at`, who made it and why. Its state at a time is `pending` before
`starts_at`, `active` from `starts_at` up to (not including) `ends_at`, then `expired`,
as Alertmanager says; one ended by `silence expire` also carries `expired` (wire form
`"expired": true`), which every reader honours at once whatever its clock says of
`ends_at` (kept for display: the expiring host's "now"), so a host whose clock runs
ahead of the replicas' cannot leave it muting. A record without the field (written
before it existed) is read by its times alone; a reader that predates it does so too.
`Silences.matching(labels, at)` is every active silence whose matchers all hold for a
label set.

Invariants (tests/test_silences.py):

- a silence has at least one matcher, and not all of its matchers match the empty label
  set (Alertmanager refuses both: such a silence would mute every alert);
- `ends_at` is after `starts_at`;
- the wire form (`to_json`, what the silences topic holds) is Alertmanager's API form
  (`matchers: [{name, value, isRegex, isEqual}]`, `startsAt`, `endsAt`, `createdBy`,
  `comment`), so `from_json(to_json(s)) == s`, and what `amtool silence query -o json`
  prints reads as it is (`from_amtool`); a field that is wrong is named in the error.

The label set a silence tests (`labels_of`): the event's common `labels` with the alert's
own `alert.labels` over them (an Alertmanager alert's identity; a check's `labels` name its
service, team and environment). A missing label reads as "", as in Alertmanager.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from streamer.errors import StreamerError
from streamer.label_matchers import LABELS_PATH, label_matcher
from streamer.matcher_modes import read_matchers
from streamer.matchers import Matcher
from streamer.silence_expiry import MARK_PREFIX

__all__ = [
    "EXPIRED_KEPT",
    "Silence",
    "SilenceError",
    "SilenceMatcher",
    "State",
    "from_amtool",
    "parse_matchers",
]

State = Literal["pending", "active", "expired"]
# Expired silences stay listed this long (Alertmanager's default --data.retention), then
# they are forgotten and written away (a tombstone on the compacted topic).
EXPIRED_KEPT = timedelta(hours=120)
MAX_ID = 128


class SilenceError(StreamerError, ValueError):
    """A silence, or one of its fields, is not valid; the message names the field."""


@dataclass(frozen=True)
class SilenceMatcher:
    """One matcher as Alertmanager's API writes it, with the compiled `Matcher`."""

    name: str
    value: str
    is_regex: bool = False
    is_equal: bool = True
    compiled: Matcher = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        op = (
            ("=~" if self.is_equal else "!~") if self.is_regex else ("=" if self.is_equal else "!=")
        )
        object.__setattr__(self, "compiled", label_matcher(self.name, op, self.value))  # type: ignore[arg-type]

    @classmethod
    def of(cls, matcher: Matcher) -> SilenceMatcher:
        if matcher.path[:-1] != LABELS_PATH:
            raise SilenceError(f"{matcher.text}: a silence matches labels only")
        return cls(
            matcher.path[-1], matcher.value, matcher.op in ("=~", "!~"), matcher.op in ("=", "=~")
        )

    @property
    def text(self) -> str:
        return self.compiled.text

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "isRegex": self.is_regex,
            "isEqual": self.is_equal,
        }


_EMPTY: Mapping[str, Any] = {"alert": {"labels": {}}}


@dataclass(frozen=True)
class Silence:
    id: str
    matchers: tuple[SilenceMatcher, ...]
    starts_at: datetime
    ends_at: datetime
    created_by: str = ""
    comment: str = ""
    updated_at: datetime | None = None  # when this version was written
    expired: bool = False  # ended by `silence expire`: expired whatever the clocks say
    # expires by itself once it matched nothing for this long (streamer/silence_expiry.py)
    expire_if_unmatched_for: timedelta | None = None

    def __post_init__(self) -> None:
        if not self.id:
            raise SilenceError("id: a silence needs one")
        if len(self.id) > MAX_ID or not self.id.isprintable():
            # it is logged and printed as it is: no line breaks nor terminal escapes in it
            # (Alertmanager's ids are UUIDs)
            raise SilenceError(
                f"id: {self.id[:MAX_ID]!r} is not an id (printable, at most {MAX_ID} characters)"
            )
        if self.id.startswith(MARK_PREFIX):  # the key of a "matched at" mark
            raise SilenceError(f"id: {self.id[:MAX_ID]!r} may not start with {MARK_PREFIX!r}")
        unmatched = self.expire_if_unmatched_for
        if unmatched is not None and unmatched <= timedelta(0):
            raise SilenceError("expire_if_unmatched_for: must be positive")
        if not self.matchers:
            raise SilenceError("matchers: a silence needs at least one (it would mute everything)")
        if all(m.compiled.matches(_EMPTY) for m in self.matchers):
            texts = ", ".join(m.text for m in self.matchers)
            raise SilenceError(
                f"matchers: {{{texts}}} all match the empty label set (it would mute every "
                "alert); at least one must not match an empty value"
            )
        for name in ("starts_at", "ends_at"):
            moment = getattr(self, name)
            if moment.tzinfo is None:
                raise SilenceError(f"{name}: {moment.isoformat()} has no time zone")
        if self.ends_at <= self.starts_at:
            raise SilenceError(
                f"ends_at: {_iso(self.ends_at)} is not after starts_at {_iso(self.starts_at)}"
            )

    @classmethod
    def new(
        cls,
        matchers: Iterable[SilenceMatcher],
        *,
        duration: timedelta,
        at: datetime,
        created_by: str = "",
        comment: str = "",
        starts_at: datetime | None = None,
        expire_if_unmatched_for: timedelta | None = None,
    ) -> Silence:
        """A new silence with a fresh id, from `starts_at` (default: `at`) for `duration`."""
        if duration <= timedelta(0):
            raise SilenceError("duration: must be positive")
        start = starts_at or at
        try:
            end = start + duration
        except OverflowError:
            raise SilenceError(
                f"duration: {duration} from {_iso(start)} ends past year 9999"
            ) from None
        return cls(
            str(uuid.uuid4()),
            tuple(matchers),
            start,
            end,
            created_by,
            comment,
            updated_at=at,
            expire_if_unmatched_for=expire_if_unmatched_for,
        )

    def state(self, at: datetime) -> State:
        if self.expired:
            return "expired"
        if at < self.starts_at:
            return "pending"
        return "active" if at < self.ends_at else "expired"

    def matches(self, labels: Mapping[str, Any]) -> bool:
        """Do all its matchers hold for `labels` (as `labels_of` gives them)?"""
        return all(m.compiled.matches(labels) for m in self.matchers)

    def expired_at(self, at: datetime) -> Silence:
        """This silence ended at `at` (a pending one is only shortened to start there too,
        as Alertmanager expires it), marked `expired` so that a reader whose clock is
        behind `at` does not keep it active; one already marked is returned as it is, one
        already past its end by `at` keeps its times and is marked."""
        if self.expired:
            return self
        if self.state(at) == "expired":
            return replace(self, updated_at=at, expired=True)
        # a millisecond, not less: the wire form keeps milliseconds, and a start in the
        # same one as `at` would read back as not before its end (a record readers skip)
        start = min(self.starts_at, at - timedelta(milliseconds=1))
        return replace(self, starts_at=start, ends_at=at, updated_at=at, expired=True)

    def forgotten(self, at: datetime) -> bool:
        """Expired long enough ago to be written away (never raises: an end near year 9999
        plus `EXPIRED_KEPT` would not fit in a datetime)."""
        return at - EXPIRED_KEPT >= self.ends_at

    @property
    def matcher_text(self) -> str:
        return "{" + ", ".join(m.text for m in self.matchers) + "}"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "matchers": [m.to_json() for m in self.matchers],
            "startsAt": _iso(self.starts_at),
            "endsAt": _iso(self.ends_at),
            "createdBy": self.created_by,
            "comment": self.comment,
        }
        if self.updated_at is not None:
            out["updatedAt"] = _iso(self.updated_at)
        if self.expired:
            out["expired"] = True
        if self.expire_if_unmatched_for is not None:
            out["expireIfUnmatchedForSeconds"] = self.expire_if_unmatched_for.total_seconds()
        return out

    @classmethod
    def from_json(cls, data: Any, where: str = "silence") -> Silence:
        """The wire form (Alertmanager's API form); raises SilenceError naming the field."""
        if not isinstance(data, Mapping):
            raise SilenceError(f"{where}: expected a JSON object, found {type(data).__name__}")
        silence_id = _text(data, "id", where, required=True)
        raw = data.get("matchers")
        if not isinstance(raw, list):
            raise SilenceError(
                f"{where}.matchers: expected a list of {{name, value, isRegex, isEqual}}"
            )
        matchers = tuple(_matcher(m, f"{where}.matchers[{i}]") for i, m in enumerate(raw))
        updated = data.get("updatedAt")
        expired = data.get("expired", False)
        if not isinstance(expired, bool):
            raise SilenceError(f"{where}.expired: expected true or false, found {expired!r}")
        unmatched = _seconds(data, "expireIfUnmatchedForSeconds", where)
        try:
            return cls(
                silence_id,
                matchers,
                _time(data, "startsAt", where),
                _time(data, "endsAt", where),
                _text(data, "createdBy", where),
                _text(data, "comment", where),
                None if updated in (None, "") else _time(data, "updatedAt", where),
                expired,
                unmatched,
            )
        except SilenceError as e:
            raise SilenceError(f"{where} {silence_id}: {e}") from None


def from_amtool(data: Any) -> list[Silence]:
    """The silences `amtool silence query -o json` prints (a JSON list; each `status` is
    Alertmanager's own view and is ignored: the state follows from the times)."""
    if not isinstance(data, list):
        raise SilenceError(f"expected a JSON list of silences, found {type(data).__name__}")
    return [Silence.from_json(item, f"[{i}]") for i, item in enumerate(data)]


def parse_matchers(texts: Iterable[str]) -> tuple[tuple[SilenceMatcher, ...], list[str]]:
    """`--matcher` texts in Alertmanager's language (as amtool reads them: its fallback
    mode), with the warnings of texts its two parsers read differently."""
    found: list[SilenceMatcher] = []
    warnings: list[str] = []
    for text in texts:
        try:
            reading = read_matchers(text)
        except ValueError as e:
            raise SilenceError(f"--matcher {text!r}: {e}") from None
        if reading.warning:
            warnings.append(reading.warning)
        found.extend(SilenceMatcher.of(m) for m in reading.matchers)
    return tuple(found), warnings


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _text(data: Mapping[str, Any], name: str, where: str, *, required: bool = False) -> str:
    value = data.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise SilenceError(
            f"{where}.{name}: expected a non-empty string"
            if required
            else f"{where}.{name}: expected a string"
        )
    return value


def _time(data: Mapping[str, Any], name: str, where: str) -> datetime:
    value = data.get(name)
    if not isinstance(value, str):
        raise SilenceError(f"{where}.{name}: expected an RFC 3339 time, found {value!r}")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise SilenceError(f"{where}.{name}: {value!r} is not an RFC 3339 time") from None
    if moment.tzinfo is None:
        raise SilenceError(f"{where}.{name}: {value!r} has no time zone (add Z or +00:00)")
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # e.g. 9999-12-31T23:00:00-05:00: past year 9999 in UTC
        raise SilenceError(f"{where}.{name}: {value!r} is out of range in UTC") from None


def _seconds(data: Mapping[str, Any], name: str, where: str) -> timedelta | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e9:
        raise SilenceError(f"{where}.{name}: expected a positive number of seconds")
    return timedelta(seconds=value)


def _matcher(data: Any, where: str) -> SilenceMatcher:
    if not isinstance(data, Mapping):
        raise SilenceError(f"{where}: expected {{name, value, isRegex, isEqual}}")
    name, value = data.get("name"), data.get("value")
    if not isinstance(name, str) or not name:
        raise SilenceError(f"{where}.name: expected a non-empty label name")
    if not isinstance(value, str):
        raise SilenceError(f"{where}.value: expected a string")
    flags = []
    for flag, default in (("isRegex", False), ("isEqual", True)):
        raw = data.get(flag, default)
        if not isinstance(raw, bool):
            raise SilenceError(f"{where}.{flag}: expected true or false, found {raw!r}")
        flags.append(raw)
    try:
        return SilenceMatcher(name, value, flags[0], flags[1])
    except ValueError as e:
        raise SilenceError(f"{where}: {e}") from None
