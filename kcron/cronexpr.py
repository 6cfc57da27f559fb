"""Five-field cron schedules, evaluated as cron(8) evaluates them. Pure.

Matching follows Debian cron 3.0pl1 and cronie (``entry.c``, ``cron.c``):

- each field is a bitset; ``7`` in day of week is Sunday, like ``0``;
- day of month and day of week are ORed only when neither field starts with
  ``*``; when either does (``*``, ``*/2``), a day matches only if both match;
- times are wall-clock times in the schedule's zone, and clock changes follow
  cron's rule (its ``virtualTime`` loop), where a *fixed-time* job is one
  whose minute and hour fields both do not start with ``*``:

  - clocks go forward: a fixed-time job whose time falls in the skipped
    wall-clock interval runs once, right after the jump; a wildcard job runs
    on the new wall clock (its runs in the gap are not moved);
  - clocks go back: a fixed-time job runs once, on the first pass; a
    wildcard job runs on both passes of the repeated interval.

Run times are searched for, not stepped to: the next matching wall-clock
minute is found from the bitsets (month, then day, then hour and minute), and
the zone's offset changes are found once per zone and year, so a schedule
costs microseconds whatever its period.
"""

from __future__ import annotations

import bisect
import calendar
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, tzinfo

FIELD_NAMES = ("minute", "hour", "day of month", "month", "day of week")
_BOUNDS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_MONTH_NAMES = {name: i for i, name in enumerate(calendar.month_abbr) if name}
_DAY_NAMES = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
_NAMES: tuple[dict[str, int], ...] = (
    {},
    {},
    {},
    {k.lower(): v for k, v in _MONTH_NAMES.items()},
    _DAY_NAMES,
)

_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_MINUTES_PER_DAY = 1440
_LAST_YEAR = 9999
# Offsets are looked up a year either side of an instant: stop a little early.
_LAST_INSTANT = (date(_LAST_YEAR - 2, 1, 1).toordinal() - _EPOCH_ORDINAL) * 86400
# A schedule that fires at all fires within any 400 years: the Gregorian
# calendar repeats with that period (weekdays included).
_SEARCH_MONTHS = 400 * 12 + 12
# Every weekday of a 7-day pattern repeated over 5 weeks (35 days >= 31).
_WEEKS = sum(1 << (7 * i) for i in range(5))

# cron.c classifies a change of the wall clock by how many minutes it moved
# (timeRunning - virtualTime): 1 is normal; up to 5 every missed minute runs;
# up to 3 hours forward, fixed-time jobs catch up; up to 3 hours back,
# fixed-time jobs wait for the clock to catch up; beyond that it is a jump.
_SMALL_FORWARD = 5
_DST_LIMIT = 3 * 60


@dataclass(frozen=True, slots=True)
class CronExpr:
    """A parsed schedule: one bitset per field (bit n set = value n matches)."""

    minutes: int
    hours: int
    days: int  # day of month, bits 1-31
    months: int  # bits 1-12
    weekdays: int  # bits 0-6, Sunday = 0 (7 folded onto 0)
    dom_star: bool  # the day-of-month field starts with '*'
    dow_star: bool  # the day-of-week field starts with '*'
    fixed: bool  # neither minute nor hour starts with '*': cron's "non-wild" job

    def next_wall(self, wall: int) -> int | None:
        """The first matching wall-clock minute at or after ``wall``.

        Wall-clock minutes count from 1970-01-01 00:00 on the local clock;
        None if nothing matches before the year 10000.
        """
        day, minute_of_day = divmod(wall, _MINUTES_PER_DAY)
        found = self._next_day(day)
        if found is None:
            return None
        if found == day:
            at = self._time_at_or_after(minute_of_day)
            if at is not None:
                return day * _MINUTES_PER_DAY + at
            found = self._next_day(day + 1)
            if found is None:
                return None
        first = self._time_at_or_after(0)
        assert first is not None  # hours and minutes are never empty
        return found * _MINUTES_PER_DAY + first

    def _time_at_or_after(self, minute_of_day: int) -> int | None:
        hour, minute = divmod(minute_of_day, 60)
        if self.hours >> hour & 1:
            later = self.minutes >> minute
            if later:
                return hour * 60 + minute + _lowest_bit(later)
        later_hours = self.hours >> (hour + 1)
        if not later_hours:
            return None
        return (hour + 1 + _lowest_bit(later_hours)) * 60 + _lowest_bit(self.minutes)

    def _next_day(self, day: int) -> int | None:
        """The first matching day (days since 1970-01-01) at or after ``day``."""
        start = date.fromordinal(_EPOCH_ORDINAL + day)
        year, month, first = start.year, start.month, start.day
        for _ in range(_SEARCH_MONTHS):
            if self.months >> month & 1:
                later = self._days_in(year, month) >> (first - 1)
                if later:
                    found = date(year, month, first + _lowest_bit(later))
                    return found.toordinal() - _EPOCH_ORDINAL
            first = 1
            month += 1
            if month == 13:
                month, year = 1, year + 1
                if year > _LAST_YEAR:
                    return None
        return None

    def _days_in(self, year: int, month: int) -> int:
        """The matching days of a month as a bitset, bit 0 = the 1st."""
        monday_based, length = calendar.monthrange(year, month)
        weekday_of_first = (monday_based + 1) % 7  # Sunday = 0
        pattern = (
            (self.weekdays >> weekday_of_first) | (self.weekdays << (7 - weekday_of_first))
        ) & 0x7F
        by_weekday = pattern * _WEEKS
        by_date = self.days >> 1
        matching = by_date & by_weekday if self.dom_star or self.dow_star else by_date | by_weekday
        return matching & ((1 << length) - 1)


def _lowest_bit(bits: int) -> int:
    return (bits & -bits).bit_length() - 1


@functools.lru_cache(maxsize=1 << 16)
def parse(expr: str) -> CronExpr:
    """Parse five space-separated fields; ValueError says which field and why."""
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"a schedule has 5 fields, got {len(fields)}")
    masks = [_parse_field(index, text) for index, text in enumerate(fields)]
    weekdays = masks[4]
    weekdays = (weekdays | weekdays >> 7) & 0x7F
    return CronExpr(
        minutes=masks[0],
        hours=masks[1],
        days=masks[2],
        months=masks[3],
        weekdays=weekdays,
        dom_star=fields[2].startswith("*"),
        dow_star=fields[4].startswith("*"),
        fixed=not fields[0].startswith("*") and not fields[1].startswith("*"),
    )


def _parse_field(index: int, text: str) -> int:
    low, high = _BOUNDS[index]
    mask = 0
    for part in text.split(","):
        span, slash, step_text = part.partition("/")
        if span == "*":
            first, last = low, high
        elif "-" in span:
            first_text, _, last_text = span.partition("-")
            first = _value(index, first_text, part)
            last = _value(index, last_text, part)
            if first > last:
                raise ValueError(f"{FIELD_NAMES[index]} field '{text}': range '{part}' is reversed")
        else:
            first = last = _value(index, span, part)
            if slash:
                raise ValueError(
                    f"{FIELD_NAMES[index]} field '{text}': a step needs a range or '*' "
                    f"('{span}-{high}/{step_text}', '*/{step_text}')"
                )
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) < 1:
                raise ValueError(
                    f"{FIELD_NAMES[index]} field '{text}': step '{step_text}' "
                    "must be a whole number of at least 1"
                )
            step = int(step_text)
        for value in range(first, last + 1, step):
            mask |= 1 << value
    return mask


def _value(index: int, text: str, part: str) -> int:
    low, high = _BOUNDS[index]
    if text.isascii() and text.isdigit():
        number = int(text)
        if low <= number <= high:
            return number
    elif (named := _NAMES[index].get(text.lower())) is not None:
        return named
    raise ValueError(
        f"{FIELD_NAMES[index]} field: '{part}' is not a value from {low} to {high}"
        + (" or a name" if _NAMES[index] else "")
    )


# -- run times in a zone --------------------------------------------------------


def runs_after(expr: CronExpr, after: datetime, zone: tzinfo) -> Iterator[datetime]:
    """Run times strictly after ``after`` (aware), as UTC datetimes, in order.

    ``zone`` is the zone whose wall clock the schedule reads.
    """
    for instant in _instants(expr, int(after.timestamp() // 1) + 1, zone):
        yield datetime.fromtimestamp(instant, UTC)


def _instants(expr: CronExpr, lowest: int, zone: tzinfo) -> Iterator[int]:
    """Run instants (POSIX seconds) at or after ``lowest``."""
    offsets = _offsets(zone)
    while lowest < _LAST_INSTANT:
        start, end, offset, before = offsets.segment(lowest)
        wall = -(-(lowest + offset) // 60)  # first wall-clock minute at or after lowest
        if before != offset:
            late, wall = _after_change(expr, wall, start, offset, before)
            if late is not None:
                yield late
                lowest = late + 1
                continue
        found = expr.next_wall(wall)
        if found is None:
            return
        instant = found * 60 - offset
        if instant < end:
            yield instant
            lowest = instant + 1
        else:
            lowest = end


def _after_change(
    expr: CronExpr, wall: int, start: int, offset: int, before: int
) -> tuple[int | None, int]:
    """cron.c's rule for a segment whose offset changed at ``start``.

    Returns the instant of a run made up right after the change (or None),
    and the first wall-clock minute the search may use. cron compares the
    first wall minute after the change with the last one before it.
    """
    first_wall = -(-(start + offset) // 60)
    last_wall = (start - 1 + before) // 60
    moved = first_wall - last_wall
    if moved > 1 and wall <= first_wall:
        # Clocks went forward: the skipped minutes' runs happen once, now.
        if moved <= _SMALL_FORWARD or (expr.fixed and moved <= _DST_LIMIT):
            missed = expr.next_wall(last_wall + 1)
            if missed is not None and missed <= first_wall:
                return first_wall * 60 - offset, wall
    elif -_DST_LIMIT < moved <= 0 and expr.fixed:
        # Clocks went back: fixed-time jobs ran on the first pass, not again.
        wall = max(wall, last_wall + 1)
    return None, wall


class _Offsets:
    """A zone's UTC offsets as segments of constant offset, found by probing.

    zoneinfo does not expose its transitions, so they are found by sampling the
    offset every few hours and bisecting each change to the second; done once
    per zone and year, a few milliseconds.
    """

    _PROBE = 6 * 3600  # no two offset changes of any zone today are closer

    def __init__(self, zone: tzinfo) -> None:
        self._zone = zone
        self._fixed = zone.utcoffset(None)
        self._windows: dict[int, tuple[list[int], list[tuple[int, int, int]]]] = {}
        self._changes_of: dict[int, list[tuple[int, int, int]]] = {}

    def segment(self, instant: int) -> tuple[int, int, int, int]:
        """(start, end, offset, offset before start) of the segment holding ``instant``.

        A segment may also start or end at a year boundary with no change;
        then its offset before start equals its offset.
        """
        if self._fixed is not None:
            seconds = int(self._fixed.total_seconds())
            return instant - 1, instant + 366 * 86400, seconds, seconds
        year = datetime.fromtimestamp(instant, UTC).year
        times, changes = self._window(year)
        index = bisect.bisect_right(times, instant)
        end = times[index] if index < len(times) else _year_start(year + 2)
        if index:
            start, before, offset = changes[index - 1]
            return start, end, offset, before
        offset = self._offset(instant)
        return _year_start(year - 1), end, offset, offset

    def _window(self, year: int) -> tuple[list[int], list[tuple[int, int, int]]]:
        """The changes of the years before, of and after ``year``."""
        if year not in self._windows:
            changes = [c for y in (year - 1, year, year + 1) for c in self._changes(y)]
            self._windows[year] = ([c[0] for c in changes], changes)
        return self._windows[year]

    def _changes(self, year: int) -> list[tuple[int, int, int]]:
        """(instant, offset before, offset from then) for each change in ``year``."""
        if year in self._changes_of:
            return self._changes_of[year]
        changes: list[tuple[int, int, int]] = []
        low = _year_start(year) - 1
        stop = _year_start(year + 1) - 1
        low_offset = self._offset(low)
        while low < stop:
            high = min(low + self._PROBE, stop)
            high_offset = self._offset(high)
            if high_offset != low_offset:
                first, last = low, high  # offset(first) is the old one, offset(last) the new
                while last - first > 1:
                    middle = (first + last) // 2
                    if self._offset(middle) == low_offset:
                        first = middle
                    else:
                        last = middle
                changes.append((last, low_offset, self._offset(last)))
            low, low_offset = high, high_offset
        self._changes_of[year] = changes
        return changes

    def _offset(self, instant: int) -> int:
        delta = datetime.fromtimestamp(instant, self._zone).utcoffset()
        assert delta is not None
        return delta.days * 86400 + delta.seconds


def _year_start(year: int) -> int:
    return (date(year, 1, 1).toordinal() - _EPOCH_ORDINAL) * 86400


@functools.lru_cache(maxsize=1024)
def _offsets(zone: tzinfo) -> _Offsets:
    return _Offsets(zone)
