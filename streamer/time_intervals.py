"""Alertmanager's time intervals: named sets of times when a route is muted, or active.

Invariant: what Alertmanager's `timeinterval` package accepts, this accepts, and the
instants it finds inside an interval are the ones found here (tests/alertmanager_conformance/
time_intervals.yaml holds its own tests as data). An interval spec is a conjunction of
optional fields, each a list any of whose items may match: `times` (HH:MM, start inclusive,
end exclusive, `24:00` the end of the day), `weekdays` (names, `monday:friday`), `days_of_month`
(1 to 31 or -31 to -1 counted from the month's end, ranges clamped to the month),
`months` (names or numbers), `years`, and `location` (an IANA zone, `Local` for the host's
zone, UTC when absent). A field left out (or null) matches every instant; a field given as
an empty list matches none, as in Alertmanager. A named interval contains an instant when
any of its specs does. Texts are lower-cased before they are read, as Alertmanager reads
them; every refusal is a ValueError in Alertmanager's words.

Nothing here reads a clock: callers pass the instant (routing.py says which).
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "DayRange",
    "IntervalSpec",
    "TimeInterval",
    "TimeRange",
    "muted_by",
    "muting",
    "parse_spec",
]

_WEEKDAYS = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")
_MONTHS = (
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
)
_FIELDS = ("times", "weekdays", "days_of_month", "months", "years", "location")
_TIME = re.compile(r"(([01][0-9]|2[0-3]):[0-5][0-9])|24:00")
_INTEGER = re.compile(r"[+-]?[0-9]{1,18}")  # Go's strconv.Atoi, within int64


@dataclass(frozen=True)
class TimeRange:
    """Minutes of the day: `start` inclusive, `end` exclusive (1440 is the end of the day)."""

    start: int
    end: int


@dataclass(frozen=True)
class DayRange:
    """An inclusive range of weekdays (0 is Sunday), days of month, months or years."""

    begin: int
    end: int


@dataclass(frozen=True)
class IntervalSpec:
    """One item of a named interval's `time_intervals:`; None: the field was left out."""

    times: tuple[TimeRange, ...] | None = None
    weekdays: tuple[DayRange, ...] | None = None
    days_of_month: tuple[DayRange, ...] | None = None
    months: tuple[DayRange, ...] | None = None
    years: tuple[DayRange, ...] | None = None
    location: str = "UTC"  # as written; "Local" is the host's zone
    zone: tzinfo | None = UTC  # None: the host's local zone

    def contains(self, at: datetime) -> bool:
        """Whether the instant `at` (timezone-aware) falls in this spec."""
        t = at.astimezone(self.zone) if self.zone is not None else at.astimezone()
        if self.times is not None:
            minute = t.hour * 60 + t.minute
            if not any(r.start <= minute < r.end for r in self.times):
                return False
        if self.days_of_month is not None and not any(
            _day_of_month_holds(r, t) for r in self.days_of_month
        ):
            return False
        if self.months is not None and not any(r.begin <= t.month <= r.end for r in self.months):
            return False
        if self.weekdays is not None:
            weekday = (t.weekday() + 1) % 7  # Sunday is 0, as in Go
            if not any(r.begin <= weekday <= r.end for r in self.weekdays):
                return False
        return self.years is None or any(r.begin <= t.year <= r.end for r in self.years)


def _day_of_month_holds(r: DayRange, t: datetime) -> bool:
    # Negative days count from the month's end (-1 is its last day); a range is clamped to
    # the month, and one that begins after the month's end holds on no day of it.
    days = calendar.monthrange(t.year, t.month)[1]
    begin = days + r.begin + 1 if r.begin < 0 else r.begin
    end = days + r.end + 1 if r.end < 0 else r.end
    if begin > days:
        return False
    begin, end = max(-days, min(begin, days)), max(-days, min(end, days))
    return begin <= t.day <= end


@dataclass(frozen=True)
class TimeInterval:
    """A named interval: an instant is in it when it is in any of its specs."""

    name: str
    specs: tuple[IntervalSpec, ...]

    def contains(self, at: datetime) -> bool:
        return any(spec.contains(at) for spec in self.specs)


def parse_spec(raw: Any) -> IntervalSpec:
    """One time interval spec as Alertmanager reads it from YAML (texts, lists, a mapping);
    raises ValueError with Alertmanager's message."""
    if raw is None:
        return IntervalSpec()
    if not isinstance(raw, Mapping):
        raise ValueError("a time interval is a mapping (times:, weekdays:, days_of_month: ...)")
    unknown = sorted(str(k) for k in raw if k not in _FIELDS)
    if unknown:
        raise ValueError(
            f"unknown field(s) {', '.join(unknown)} (the fields are {', '.join(_FIELDS)})"
        )
    location, zone = _location(raw.get("location"))
    return IntervalSpec(
        times=_listed(raw, "times", _time_range),
        weekdays=_listed(raw, "weekdays", _weekday_range),
        days_of_month=_listed(raw, "days_of_month", _day_of_month_range),
        months=_listed(raw, "months", _month_range),
        years=_listed(raw, "years", _year_range),
        location=location,
        zone=zone,
    )


def _listed(raw: Mapping[str, Any], key: str, parse: Any) -> Any:
    items = raw.get(key)
    if items is None:
        return None
    if not isinstance(items, Sequence) or isinstance(items, str):
        raise ValueError(f"{key}: must be a list")
    return tuple(parse(item) for item in items)


def _text(value: Any, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"{what}: expected a text, not {type(value).__name__}")
    return str(value)


def _members(text: str, member: Any) -> tuple[int, int]:
    """`a` or `a:b`, lower-cased, each read by `member`."""
    text = text.lower()
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 2:
            raise ValueError(f"couldn't parse range {text}, invalid format")
        return member(parts[0]), member(parts[1])
    value = member(text)
    return value, value


def _atoi(text: str) -> int:
    if not _INTEGER.fullmatch(text):
        raise ValueError(f'strconv.Atoi: parsing "{text}": invalid syntax')
    return int(text)


def _weekday(text: str) -> int:
    if text not in _WEEKDAYS:
        raise ValueError(f"{text} is not a valid weekday")
    return _WEEKDAYS.index(text)


def _month(text: str) -> int:
    if text in _MONTHS:
        return _MONTHS.index(text) + 1
    try:
        return _atoi(text)
    except ValueError:
        raise ValueError(f"{text} is not a valid month") from None


def _weekday_range(value: Any) -> DayRange:
    text = _text(value, "weekdays")
    begin, end = _members(text, _weekday)
    if begin > end:
        raise ValueError("start day cannot be before end day")
    return DayRange(begin, end)


def _day_of_month_range(value: Any) -> DayRange:
    begin, end = _members(_text(value, "days_of_month"), _atoi)
    for day in (begin, end):
        if day == 0 or not -31 <= day <= 31:
            raise ValueError(f"{day} is not a valid day of the month: out of range")
    if begin < 0 < end:
        raise ValueError("end day must be negative if start day is negative")
    # Whether a range with negative days is empty depends on the month; one that is empty
    # even in a 28-day month is refused.
    if (28 + begin if begin < 0 else begin) > (28 + end if end < 0 else end):
        raise ValueError(f"end day {end} is always before start day {begin}")
    return DayRange(begin, end)


def _month_range(value: Any) -> DayRange:
    begin, end = _members(_text(value, "months"), _month)
    if begin > end:
        names = (_name(_MONTHS, end - 1), _name(_MONTHS, begin - 1))
        raise ValueError(f"end month {names[0]} is before start month {names[1]}")
    return DayRange(begin, end)


def _name(names: Sequence[str], index: int) -> str:
    return names[index] if 0 <= index < len(names) else ""


def _year_range(value: Any) -> DayRange:
    begin, end = _members(_text(value, "years"), _atoi)
    if begin > end:
        raise ValueError(f"end year {end} is before start year {begin}")
    return DayRange(begin, end)


def _time_range(value: Any) -> TimeRange:
    if not isinstance(value, Mapping):
        raise ValueError("times: each item is a mapping with start_time and end_time")
    unknown = sorted(str(k) for k in value if k not in ("start_time", "end_time"))
    if unknown:
        raise ValueError(f"times: unknown field(s) {', '.join(unknown)}")
    start_text = "" if value.get("start_time") is None else _text(value["start_time"], "times")
    end_text = "" if value.get("end_time") is None else _text(value["end_time"], "times")
    if not start_text or not end_text:
        raise ValueError("both start and end times must be provided")
    start, end = _minutes(start_text), _minutes(end_text)
    if start >= end:
        raise ValueError("start time cannot be equal or greater than end time")
    return TimeRange(start, end)


def _minutes(text: str) -> int:
    if not _TIME.fullmatch(text):
        raise ValueError(f"couldn't parse timestamp {text}, invalid format")
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


def _location(value: Any) -> tuple[str, tzinfo | None]:
    """(the name as written, its zone); "" and UTC are UTC, Local the host's zone (None)."""
    if value is None:
        return "UTC", UTC
    name = _text(value, "location")
    if name in ("", "UTC"):
        return name or "UTC", UTC
    if name == "Local":
        return name, None
    try:
        return name, ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown time zone {name}") from None


def muting(intervals: Iterable[TimeInterval], at: datetime) -> list[str]:
    """The names of `intervals` that contain `at`, in order, each once."""
    return [interval.name for interval in intervals if interval.contains(at)]


def muted_by(
    mute: Sequence[TimeInterval], active: Sequence[TimeInterval], at: datetime
) -> tuple[str, tuple[str, ...]] | None:
    """Whether a route with these `mute_time_intervals` and `active_time_intervals` is
    quiet at `at`: (the setting, the intervals that make it so), or None. As in
    Alertmanager, `active_time_intervals` are asked first: outside all of them, every one
    of them is the reason; then `mute_time_intervals`: those that contain `at`."""
    if active and not any(interval.contains(at) for interval in active):
        return "active_time_intervals", tuple(interval.name for interval in active)
    names = tuple(muting(mute, at))
    return ("mute_time_intervals", names) if names else None
