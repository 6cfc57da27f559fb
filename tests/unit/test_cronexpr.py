"""kcron.cronexpr against cron(8): the field grammar, the day rule and clock changes.

The property tests compare with an independent model written here: sets of
values built alongside each random expression, and cron.c's main loop
(virtualTime, timeRunning and its four kinds of wake-up) stepped minute by
minute on the zone's wall clock.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kcron import cronexpr

PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")
SAO_PAULO = ZoneInfo("America/Sao_Paulo")  # changed at midnight until 2019
CHATHAM = ZoneInfo("Pacific/Chatham")  # +12:45 / +13:45


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def runs(expr: str, after: datetime, zone: tzinfo = UTC, count: int = 5) -> list[datetime]:
    return list(itertools.islice(cronexpr.runs_after(cronexpr.parse(expr), after, zone), count))


def local(expr: str, after: datetime, zone: tzinfo, count: int = 5) -> list[str]:
    """Run times as the zone's wall clock shows them, with the offset."""
    return [t.astimezone(zone).strftime("%m-%d %H:%M%z") for t in runs(expr, after, zone, count)]


# -- the fields --------------------------------------------------------------------


def test_a_range_with_equal_bounds_is_that_one_value() -> None:
    assert runs("5-5 * * * *", utc(2026, 5, 1), count=3) == [
        utc(2026, 5, 1, 0, 5),
        utc(2026, 5, 1, 1, 5),
        utc(2026, 5, 1, 2, 5),
    ]
    assert runs("0 3-3 * * *", utc(2026, 5, 1), count=2) == [
        utc(2026, 5, 1, 3),
        utc(2026, 5, 2, 3),
    ]


@pytest.mark.parametrize("dow", ["7-7", "7", "0", "SUN", "sun-sun", "0-0"])
def test_seven_and_zero_are_sunday(dow: str) -> None:
    # 2026-05-03 is a Sunday.
    assert runs(f"0 0 * * {dow}", utc(2026, 5, 1), count=2) == [
        utc(2026, 5, 3),
        utc(2026, 5, 10),
    ]


def test_a_day_name_range_with_equal_bounds_is_that_day() -> None:
    assert runs("0 0 * * MON-MON", utc(2026, 5, 1), count=2) == [utc(2026, 5, 4), utc(2026, 5, 11)]


def test_zero_to_seven_is_every_day() -> None:
    assert runs("0 0 * * 0-7", utc(2026, 5, 1), count=7) == [
        utc(2026, 5, day) for day in range(2, 9)
    ]


def test_names_steps_on_ranges_and_lists_of_ranges() -> None:
    expr = "1-20/7,40-41 9 * jan-dec/6 Mon-Fri"  # January and July, weekdays
    assert runs(expr, utc(2026, 7, 1, 9, 30), count=6) == [
        utc(2026, 7, 1, 9, 40),
        utc(2026, 7, 1, 9, 41),
        utc(2026, 7, 2, 9, 1),
        utc(2026, 7, 2, 9, 8),
        utc(2026, 7, 2, 9, 15),
        utc(2026, 7, 2, 9, 40),
    ]
    assert runs(expr, utc(2026, 7, 31, 10), count=1) == [utc(2027, 1, 1, 9, 1)]


def test_day_of_month_and_week_are_anded_when_one_starts_with_a_star() -> None:
    # cron: odd days that are Mondays (2026-06-01, -15, -29 are Mondays).
    assert runs("0 0 */2 * 1", utc(2026, 5, 31), count=3) == [
        utc(2026, 6, 1),
        utc(2026, 6, 15),
        utc(2026, 6, 29),
    ]
    # cron: Mondays only, not every day.
    assert runs("0 0 */1 * 1", utc(2026, 5, 31), count=2) == [utc(2026, 6, 1), utc(2026, 6, 8)]
    assert runs("0 0 1 * */1", utc(2026, 5, 31), count=2) == [utc(2026, 6, 1), utc(2026, 7, 1)]


def test_day_of_month_and_week_are_ored_when_neither_starts_with_a_star() -> None:
    # The 1st and 15th, and every Monday.
    assert runs("0 0 1,15 * MON", utc(2026, 5, 31), count=4) == [
        utc(2026, 6, 1),
        utc(2026, 6, 8),
        utc(2026, 6, 15),
        utc(2026, 6, 22),
    ]


def test_february_29th_waits_for_a_leap_year() -> None:
    assert runs("0 0 29 2 *", utc(2026, 1, 1), count=2) == [utc(2028, 2, 29), utc(2032, 2, 29)]


@pytest.mark.parametrize(
    ("expr", "words"),
    [
        ("5-1 * * * *", "reversed"),
        ("0 0 * * sat-sun", "reversed"),
        ("*/0 * * * *", "step '0'"),
        ("5/10 * * * *", "a step needs a range"),
        ("60 * * * *", "from 0 to 59"),
        ("0 0 0 * *", "from 1 to 31"),
        ("0 0 * * 8", "from 0 to 7"),
        ("0 0 * * monday", "'monday'"),
        ("0 0 ? * *", "'?'"),
        ("0 0 L * *", "'L'"),
        ("1,,2 * * * *", "''"),
        ("* * * *", "5 fields"),
    ],
)
def test_what_cron_would_not_read_is_an_error_that_says_why(expr: str, words: str) -> None:
    with pytest.raises(ValueError) as info:
        cronexpr.parse(expr)
    assert words in str(info.value)


# -- clock changes: cron(8)'s rule ----------------------------------------------------


def test_paris_spring_forward_a_fixed_time_job_in_the_gap_runs_once_after_the_jump() -> None:
    # 2026-03-29: 02:00 CET becomes 03:00 CEST.
    assert local("30 2 * * *", utc(2026, 3, 28, 12), PARIS, 2) == [
        "03-29 03:00+0200",
        "03-30 02:30+0200",
    ]
    # Two times in the gap and one at the new time: still one run at the jump.
    assert local("0,30 2,3 * * *", utc(2026, 3, 28, 12), PARIS, 3) == [
        "03-29 03:00+0200",
        "03-29 03:30+0200",
        "03-30 02:00+0200",
    ]


def test_paris_spring_forward_a_wildcard_job_runs_on_the_new_clock_only() -> None:
    assert local("0 */2 * * *", utc(2026, 3, 28, 22), PARIS, 3) == [
        "03-29 00:00+0100",
        "03-29 04:00+0200",  # not also at 03:00 for the lost 02:00
        "03-29 06:00+0200",
    ]
    assert local("*/20 2 * * *", utc(2026, 3, 28, 12), PARIS, 1) == ["03-30 02:00+0200"]


def test_paris_fall_back_a_fixed_time_job_runs_once_on_the_first_pass() -> None:
    # 2026-10-25: 03:00 CEST becomes 02:00 CET.
    assert local("30 2 * * *", utc(2026, 10, 24, 12), PARIS, 2) == [
        "10-25 02:30+0200",
        "10-26 02:30+0100",
    ]
    # Even when asked from inside the second pass.
    assert local("30 2 * * *", utc(2026, 10, 25, 1, 10), PARIS, 1) == ["10-26 02:30+0100"]


def test_paris_fall_back_a_wildcard_job_runs_on_both_passes() -> None:
    assert local("30 * * * *", utc(2026, 10, 24, 23), PARIS, 4) == [
        "10-25 01:30+0200",
        "10-25 02:30+0200",
        "10-25 02:30+0100",
        "10-25 03:30+0100",
    ]


def test_new_york_spring_forward() -> None:
    # 2026-03-08: 02:00 EST becomes 03:00 EDT.
    assert local("30 2 * * *", utc(2026, 3, 7, 12), NEW_YORK, 2) == [
        "03-08 03:00-0400",
        "03-09 02:30-0400",
    ]
    assert local("30 * * * *", utc(2026, 3, 8, 6), NEW_YORK, 2) == [
        "03-08 01:30-0500",
        "03-08 03:30-0400",
    ]


def test_new_york_fall_back() -> None:
    # 2026-11-01: 02:00 EDT becomes 01:00 EST.
    assert local("30 1 * * *", utc(2026, 10, 31, 12), NEW_YORK, 2) == [
        "11-01 01:30-0400",
        "11-02 01:30-0500",
    ]
    assert local("30 * * * *", utc(2026, 11, 1, 4), NEW_YORK, 3) == [
        "11-01 00:30-0400",
        "11-01 01:30-0400",
        "11-01 01:30-0500",
    ]


def test_lord_howe_half_hour_forward_does_not_skip_two_o_clock() -> None:
    # 2026-10-04: 02:00 +10:30 becomes 02:30 +11:00.
    assert local("0 0-23 * * *", utc(2026, 10, 3, 14), LORD_HOWE, 3) == [
        "10-04 01:00+1030",
        "10-04 02:30+1100",  # the 02:00 run, right after the jump
        "10-04 03:00+1100",
    ]
    # A wildcard job runs on the new clock: 02:00 did not happen.
    assert local("0 * * * *", utc(2026, 10, 3, 14), LORD_HOWE, 2) == [
        "10-04 01:00+1030",
        "10-04 03:00+1100",
    ]


def test_lord_howe_half_hour_back_keeps_every_wildcard_run() -> None:
    # 2026-04-05: 02:00 +11:00 becomes 01:30 +10:30.
    assert local("*/30 * * * *", utc(2026, 4, 4, 14), LORD_HOWE, 5) == [
        "04-05 01:30+1100",
        "04-05 01:30+1030",
        "04-05 02:00+1030",
        "04-05 02:30+1030",
        "04-05 03:00+1030",
    ]
    assert local("45 1 * * *", utc(2026, 4, 4, 12), LORD_HOWE, 2) == [
        "04-05 01:45+1100",
        "04-06 01:45+1030",
    ]


def test_a_midnight_that_does_not_exist_runs_a_daily_job_right_after_the_jump() -> None:
    # Sao Paulo, 2018-11-04: 00:00 -03 became 01:00 -02; that day had no midnight.
    assert local("0 0 * * *", utc(2018, 11, 3, 12), SAO_PAULO, 2) == [
        "11-04 01:00-0200",
        "11-05 00:00-0200",
    ]
    # 2019-02-17: 00:00 -02 became 23:00 -03 on the 16th; 23:30 came twice.
    assert local("30 23 * * *", utc(2019, 2, 16, 12), SAO_PAULO, 2) == [
        "02-16 23:30-0200",
        "02-17 23:30-0300",
    ]


def test_fixed_offset_zones_and_utc_have_no_clock_changes() -> None:
    from datetime import timezone

    plus_five_thirty = timezone(timedelta(hours=5, minutes=30))
    assert runs("0 9 * * *", utc(2026, 3, 29), plus_five_thirty, 1) == [utc(2026, 3, 29, 3, 30)]


def test_run_times_are_strictly_after_the_instant() -> None:
    assert runs("0 * * * *", utc(2026, 5, 1, 10), count=1) == [utc(2026, 5, 1, 11)]
    before = utc(2026, 5, 1, 10) - timedelta(microseconds=1)
    assert runs("0 * * * *", before, count=1) == [utc(2026, 5, 1, 10)]


# -- property: the independent model -------------------------------------------------

_BOUNDS = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]


@dataclass(frozen=True)
class Field:
    text: str
    values: frozenset[int]


def _number(index: int, value: int, draw: st.DrawFn) -> str:
    if index == 3 and draw(st.booleans()):
        return _MONTHS[value - 1].upper() if draw(st.booleans()) else _MONTHS[value - 1]
    if index == 4 and value < 7 and draw(st.booleans()):
        return _DAYS[value].capitalize()
    return str(value)


@st.composite
def element(draw: st.DrawFn, index: int) -> Field:
    low, high = _BOUNDS[index]
    kind = draw(st.sampled_from(["star", "star-step", "one", "range", "range-step", "equal"]))
    step = draw(st.integers(1, max(1, (high - low) // 2)))
    if kind == "star":
        return Field("*", frozenset(range(low, high + 1)))
    if kind == "star-step":
        return Field(f"*/{step}", frozenset(range(low, high + 1, step)))
    first = draw(st.integers(low, high))
    if kind == "one":
        return Field(_number(index, first, draw), frozenset({first}))
    last = first if kind == "equal" else draw(st.integers(first, high))
    text = f"{_number(index, first, draw)}-{_number(index, last, draw)}"
    if kind == "range-step":
        return Field(f"{text}/{step}", frozenset(range(first, last + 1, step)))
    return Field(text, frozenset(range(first, last + 1)))


@st.composite
def field(draw: st.DrawFn, index: int) -> Field:
    parts = draw(st.lists(element(index), min_size=1, max_size=3))
    values = frozenset().union(*(p.values for p in parts))
    if index == 4 and 7 in values:
        values = values | {0}
    return Field(",".join(p.text for p in parts), values)


@dataclass(frozen=True)
class Model:
    """cron's matching rule, on five sets of values."""

    fields: tuple[Field, ...]

    @property
    def text(self) -> str:
        return " ".join(f.text for f in self.fields)

    @property
    def wild(self) -> bool:
        return self.fields[0].text.startswith("*") or self.fields[1].text.startswith("*")

    def matches(self, wall: datetime) -> bool:
        minute, hour, dom, month, dow = (f.values for f in self.fields)
        day_of_week = wall.isoweekday() % 7
        by_dom, by_dow = wall.day in dom, day_of_week in dow
        if self.fields[2].text.startswith("*") or self.fields[4].text.startswith("*"):
            day = by_dom and by_dow
        else:
            day = by_dom or by_dow
        return wall.minute in minute and wall.hour in hour and wall.month in month and day


_WALL_EPOCH = datetime(1970, 1, 1)


def cron_loop(model: Model, zone: tzinfo, after: datetime, minutes: int) -> list[datetime]:
    """What cron.c's main loop runs in (after, after + minutes], minute by minute.

    It starts 4 hours early so that a clock change just before ``after`` is
    seen as cron sees it.
    """

    def wall_minute(instant: datetime) -> int:
        shown = instant.astimezone(zone).replace(tzinfo=None)
        return int((shown - _WALL_EPOCH).total_seconds()) // 60

    def fires(wall: int, wild: bool, fixed: bool) -> bool:
        kind_ok = wild if model.wild else fixed
        return kind_ok and model.matches(_WALL_EPOCH + timedelta(minutes=wall))

    instant = after.replace(second=0, microsecond=0) - timedelta(hours=4)
    virtual = wall_minute(instant)
    found: list[datetime] = []
    for _ in range(minutes + 4 * 60):
        instant += timedelta(minutes=1)
        running = wall_minute(instant)
        diff = running - virtual
        if diff == 1:
            hit = fires(running, True, True)
            virtual = running
        elif 0 < diff <= 5:
            hit = any(fires(v, True, True) for v in range(virtual + 1, running + 1))
            virtual = running
        elif 5 < diff <= 180:
            hit = fires(running, True, False) or any(
                fires(v, False, True) for v in range(virtual + 1, running + 1)
            )
            virtual = running
        elif -180 < diff <= 0:
            hit = fires(running, True, False)
        else:
            hit = fires(running, True, True)
            virtual = running
        if hit and instant > after:
            found.append(instant)
    return found


# Offset changes (UTC), where the model and the evaluator must agree most.
_CHANGES = [
    (SAO_PAULO, utc(2018, 11, 4, 3)),
    (SAO_PAULO, utc(2019, 2, 17, 2)),
    (CHATHAM, utc(2026, 4, 4, 14)),
    (CHATHAM, utc(2026, 9, 26, 14)),
    (PARIS, utc(2026, 3, 29, 1)),
    (PARIS, utc(2026, 10, 25, 1)),
    (NEW_YORK, utc(2026, 3, 8, 7)),
    (NEW_YORK, utc(2026, 11, 1, 6)),
    (LORD_HOWE, utc(2026, 4, 4, 15)),
    (LORD_HOWE, utc(2026, 10, 3, 15, 30)),
]


def _dense(index: int, texts: list[str]) -> st.SearchStrategy[Field]:
    """Fields that often match around 01:00-03:00 on the day of a change."""
    low, high = _BOUNDS[index]

    def values(text: str) -> frozenset[int]:
        found: set[int] = set()
        for part in text.split(","):
            span, _, step = part.partition("/")
            first, _, last = span.replace("*", f"{low}-{high}").partition("-")
            found.update(range(int(first), int(last or first) + 1, int(step or 1)))
        return frozenset(found)

    return st.sampled_from([Field(text, values(text)) for text in texts])


_STAR = {i: Field("*", frozenset(range(low, high + 1))) for i, (low, high) in enumerate(_BOUNDS)}


@st.composite
def models(draw: st.DrawFn) -> Model:
    """Random expressions, half of them fixed-time jobs busy at the hours of a change."""
    minute = draw(field(0) | _dense(0, ["0-59/5", "0,30", "15-45/15", "59", "0", "*/15", "*"]))
    hour = draw(field(1) | _dense(1, ["0-23", "1-3", "2", "2-2", "1,2", "0-23/2", "*/1", "*"]))
    # Mostly '*' days, so that the day of the change runs; other day rules
    # have their own test below.
    days = [_STAR[i] if draw(st.integers(0, 3)) else draw(field(i)) for i in (2, 3, 4)]
    return Model((minute, hour, *days))


@st.composite
def near_a_change(draw: st.DrawFn) -> tuple[tzinfo, datetime]:
    zone, change = draw(st.sampled_from(_CHANGES))
    seconds = draw(st.integers(-30 * 3600, 3 * 3600))
    return zone, change + timedelta(seconds=seconds)


@settings(max_examples=60, deadline=None)
@given(models(), near_a_change())
def test_runs_around_clock_changes_are_those_of_cron_s_loop(
    model: Model, where: tuple[tzinfo, datetime]
) -> None:
    zone, after = where
    window = 36 * 60
    expected = cron_loop(model, zone, after, window)
    end = after.replace(second=0, microsecond=0) + timedelta(minutes=window)
    got = list(
        itertools.takewhile(
            lambda t: t <= end, cronexpr.runs_after(cronexpr.parse(model.text), after, zone)
        )
    )
    assert got == expected, model.text


@settings(max_examples=25, deadline=None)
@given(
    models(),
    st.sampled_from([PARIS, NEW_YORK, LORD_HOWE, SAO_PAULO, CHATHAM, UTC]),
    st.datetimes(datetime(2000, 1, 1), datetime(2040, 1, 1), timezones=st.just(UTC)),
)
def test_runs_at_any_time_are_those_of_cron_s_loop(
    model: Model, zone: tzinfo, after: datetime
) -> None:
    window = 30 * 60
    expected = cron_loop(model, zone, after, window)
    end = after.replace(second=0, microsecond=0) + timedelta(minutes=window)
    got = list(
        itertools.takewhile(
            lambda t: t <= end, cronexpr.runs_after(cronexpr.parse(model.text), after, zone)
        )
    )
    assert got == expected, model.text


@settings(max_examples=60, deadline=None)
@given(
    field(2),
    field(3),
    field(4),
    st.datetimes(datetime(2000, 1, 1), datetime(2040, 1, 1), timezones=st.just(UTC)),
)
def test_the_days_that_run_are_those_of_cron_s_day_rule(
    dom: Field, month: Field, dow: Field, after: datetime
) -> None:
    model = Model((Field("0", frozenset({0})), Field("0", frozenset({0})), dom, month, dow))
    expected = []
    day = after.replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None)
    horizon = day + timedelta(days=3 * 366)
    while len(expected) < 8 and day < horizon:
        day += timedelta(days=1)
        if model.matches(day):
            expected.append(day.replace(tzinfo=UTC))
    got = list(
        itertools.takewhile(
            lambda t: t <= horizon.replace(tzinfo=UTC),
            itertools.islice(cronexpr.runs_after(cronexpr.parse(model.text), after, UTC), 8),
        )
    )
    assert got == expected, model.text
