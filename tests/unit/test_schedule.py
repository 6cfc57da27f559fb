"""kcron.schedule: run times, backfill windows and the Scheduler, all on fixed clocks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kcron import jobfile, schedule
from kcron.jobfile import Job
from kcron.schedule import Run, Scheduler, next_runs, runs_between

PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")
TOKYO = ZoneInfo("Asia/Tokyo")
DAY = timedelta(days=1)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def jobs(text: str) -> tuple[Job, ...]:
    return jobfile.parse(text, "jobs.cron").jobs


def job(line: str) -> Job:
    (only,) = jobs(line)
    return only


def times(runs: list[Run]) -> list[datetime]:
    return [r.scheduled_for for r in runs]


# -- next runs across calendar edges -----------------------------------------------


def test_next_runs_are_strictly_after_and_in_utc():
    runs = next_runs(job("*/15 * * * * x"), utc(2028, 1, 1, 0, 15), 3)
    assert runs == [utc(2028, 1, 1, 0, 30), utc(2028, 1, 1, 0, 45), utc(2028, 1, 1, 1, 0)]
    assert all(r.tzinfo is UTC for r in runs)


def test_after_may_be_in_any_zone():
    after = datetime(2028, 1, 1, 1, 15, tzinfo=PARIS)  # 00:15 UTC
    assert next_runs(job("*/15 * * * * x"), after, 1) == [utc(2028, 1, 1, 0, 30)]


def test_daily_from_jan_31_goes_to_feb_1():
    assert next_runs(job("0 12 * * * x"), utc(2027, 1, 31, 12, 0), 2) == [
        utc(2027, 2, 1, 12, 0),
        utc(2027, 2, 2, 12, 0),
    ]


def test_day_31_skips_months_without_it():
    assert next_runs(job("0 0 31 * * x"), utc(2028, 1, 31), 4) == [
        utc(2028, 3, 31),
        utc(2028, 5, 31),
        utc(2028, 7, 31),
        utc(2028, 8, 31),
    ]


def test_feb_28_to_29_in_leap_year_2028():
    assert next_runs(job("0 0 * * * x"), utc(2028, 2, 27), 3) == [
        utc(2028, 2, 28),
        utc(2028, 2, 29),
        utc(2028, 3, 1),
    ]


def test_feb_28_to_mar_1_in_common_year():
    assert next_runs(job("0 0 * * * x"), utc(2027, 2, 27), 2) == [utc(2027, 2, 28), utc(2027, 3, 1)]


def test_feb_29_job_waits_for_leap_years():
    assert next_runs(job("0 0 29 2 * x"), utc(2025, 3, 1), 3) == [
        utc(2028, 2, 29),
        utc(2032, 2, 29),
        utc(2036, 2, 29),
    ]


def test_last_days_of_month_range():
    assert next_runs(job("59 23 28-31 * * x"), utc(2028, 2, 27), 4) == [
        utc(2028, 2, 28, 23, 59),
        utc(2028, 2, 29, 23, 59),
        utc(2028, 3, 28, 23, 59),
        utc(2028, 3, 29, 23, 59),
    ]


def test_dec_31_to_jan_1():
    assert next_runs(job("59 23 * * * x"), utc(2027, 12, 31, 23, 58), 2) == [
        utc(2027, 12, 31, 23, 59),
        utc(2028, 1, 1, 23, 59),
    ]
    assert next_runs(job("* * * * * x"), utc(2027, 12, 31, 23, 59), 1) == [utc(2028, 1, 1, 0, 0)]
    assert next_runs(job("@yearly x"), utc(2027, 6, 1), 2) == [utc(2028, 1, 1), utc(2029, 1, 1)]


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        (utc(2028, 1, 31, 23, 59), utc(2028, 2, 1)),
        (utc(2028, 2, 29, 0, 0), utc(2028, 3, 1)),
        (utc(2027, 2, 28, 12, 0), utc(2027, 3, 1)),
        (utc(2028, 4, 30, 23, 59, 59), utc(2028, 5, 1)),
        (utc(2028, 12, 31, 23, 59), utc(2029, 1, 1)),
        (utc(2028, 3, 1, 0, 0), utc(2028, 4, 1)),  # exactly on a run: the next one
    ],
)
def test_monthly_at_month_end(after, expected):
    assert next_runs(job("@monthly x"), after, 1) == [expected]


def test_weekly_is_sunday_midnight():
    runs = next_runs(job("@weekly x"), utc(2028, 1, 1), 2)  # 2028-01-01 is a Saturday
    assert runs == [utc(2028, 1, 2), utc(2028, 1, 9)]
    assert all(r.weekday() == 6 for r in runs)


def test_day_of_month_or_day_of_week():
    # Vixie cron semantics: both restricted -> either matches.
    runs = next_runs(job("0 0 13 * 5 x"), utc(2028, 10, 1), 4)
    assert runs == [utc(2028, 10, 6), utc(2028, 10, 13), utc(2028, 10, 20), utc(2028, 10, 27)]


# -- time zones ------------------------------------------------------------------------


def test_paris_midnight_is_23_utc_in_winter_and_22_in_summer():
    daily = job("tz=Europe/Paris @daily x")
    assert next_runs(daily, utc(2028, 1, 15, 12), 1) == [utc(2028, 1, 15, 23)]
    assert next_runs(daily, utc(2028, 7, 15, 12), 1) == [utc(2028, 7, 15, 22)]


def test_paris_midnight_across_spring_forward():
    # DST starts 2028-03-26 02:00 CET in Paris.
    daily = job("tz=Europe/Paris 0 0 * * * x")
    assert next_runs(daily, utc(2028, 3, 24, 12), 4) == [
        utc(2028, 3, 24, 23),
        utc(2028, 3, 25, 23),
        utc(2028, 3, 26, 22),
        utc(2028, 3, 27, 22),
    ]


def test_paris_midnight_across_fall_back():
    # DST ends 2028-10-29 03:00 CEST in Paris.
    daily = job("tz=Europe/Paris 0 0 * * * x")
    assert next_runs(daily, utc(2028, 10, 27, 12), 3) == [
        utc(2028, 10, 27, 22),
        utc(2028, 10, 28, 22),
        utc(2028, 10, 29, 23),
    ]


def test_hourly_on_spring_forward_day_has_23_runs():
    hourly = job("tz=Europe/Paris 0 * * * * x")
    start = datetime(2028, 3, 26, tzinfo=PARIS)
    end = datetime(2028, 3, 27, tzinfo=PARIS)
    runs = times(runs_between([hourly], start, end))
    assert len(runs) == 23
    assert all(b - a == timedelta(hours=1) for a, b in pairwise(runs))


def test_hourly_on_fall_back_day_has_25_runs():
    hourly = job("tz=Europe/Paris 0 * * * * x")
    start = datetime(2028, 10, 29, tzinfo=PARIS)
    end = datetime(2028, 10, 30, tzinfo=PARIS)
    runs = times(runs_between([hourly], start, end))
    assert len(runs) == 25
    assert len(set(runs)) == 25
    assert all(b - a == timedelta(hours=1) for a, b in pairwise(runs))


def test_run_in_the_skipped_hour_is_not_lost():
    # 02:30 does not exist in Paris on 2028-03-26; the run happens when the clock jumps.
    runs = next_runs(job("tz=Europe/Paris 30 2 * * * x"), utc(2028, 3, 25, 12), 2)
    assert runs[0] == utc(2028, 3, 26, 1, 0)  # 03:00 CEST
    assert runs[1] == utc(2028, 3, 27, 0, 30)  # 02:30 CEST


def test_fixed_time_job_runs_once_when_paris_clocks_go_back():
    # 2026-10-25: 03:00 CEST becomes 02:00 CET; cron runs 02:30 on the first pass only
    # (croniter ran it at 02:30+02:00 and again at 02:30+01:00).
    fixed = job("tz=Europe/Paris 30 2 * * * x")
    day = runs_between([fixed], datetime(2026, 10, 25, tzinfo=PARIS), utc(2026, 10, 26))
    assert times(day) == [utc(2026, 10, 25, 0, 30)]


def test_wildcard_job_gets_no_moved_run_when_paris_clocks_go_forward():
    # 2026-03-29: 02:00 CET becomes 03:00 CEST; cron runs "0 */2" on the new clock,
    # at 04:00 (croniter added a moved run at 03:00).
    every2h = job("tz=Europe/Paris 0 */2 * * * x")
    start = datetime(2026, 3, 29, tzinfo=PARIS)
    day = times(runs_between([every2h], start, start + DAY))
    assert [t.astimezone(PARIS).hour for t in day] == [0, *range(4, 24, 2)]


def test_scheduler_hands_out_both_passes_of_a_wildcard_job_in_time_order():
    js = jobs("tz=Europe/Paris 30 2 * * * fixed\ntz=Europe/Paris 30 * * * * wild")
    scheduler = Scheduler(js, utc(2026, 10, 25, 0))
    due = scheduler.pop_due(utc(2026, 10, 25, 2))
    assert [(r.scheduled_for, r.job.command) for r in due] == [
        (utc(2026, 10, 25, 0, 30), "fixed"),  # 02:30 CEST
        (utc(2026, 10, 25, 0, 30), "wild"),
        (utc(2026, 10, 25, 1, 30), "wild"),  # 02:30 CET: only the wildcard job
    ]


def test_new_york_morning_job_follows_local_time():
    nine = job("tz=America/New_York 0 9 * * 1-5 x")
    assert next_runs(nine, utc(2028, 1, 10), 1) == [utc(2028, 1, 10, 14)]  # EST
    assert next_runs(nine, utc(2028, 7, 10), 1) == [utc(2028, 7, 10, 13)]  # EDT


def test_default_tz_applies_to_jobs_without_tz():
    plain, paris = jobs("@daily a\ntz=Europe/Paris @daily b")
    after = utc(2028, 1, 15, 0, 30)
    assert next_runs(plain, after, 1) == [utc(2028, 1, 16)]
    assert next_runs(plain, after, 1, TOKYO) == [utc(2028, 1, 15, 15)]
    # the job's own tz wins over the default
    assert next_runs(paris, after, 1, TOKYO) == [utc(2028, 1, 15, 23)]


def test_fixed_offset_default_tz():
    plain = job("0 0 * * * x")
    assert next_runs(plain, utc(2028, 1, 1, 12), 1, timezone(timedelta(hours=-5))) == [
        utc(2028, 1, 2, 5)
    ]


def test_reboot_jobs_have_no_run_times():
    assert next_runs(job("@reboot x"), utc(2028, 1, 1), 5) == []
    assert runs_between(jobs("@reboot x"), utc(2028, 1, 1), utc(2029, 1, 1)) == []


# -- runs_between ------------------------------------------------------------------------


def test_every_minute_over_one_hour_is_60():
    runs = runs_between(jobs("* * * * * x"), utc(2028, 5, 1, 10), utc(2028, 5, 1, 11))
    assert len(runs) == 60
    assert runs[0].scheduled_for == utc(2028, 5, 1, 10, 0)
    assert runs[-1].scheduled_for == utc(2028, 5, 1, 10, 59)


def test_window_is_half_open():
    js = jobs("*/10 * * * * x")
    assert times(runs_between(js, utc(2028, 5, 1, 10, 0), utc(2028, 5, 1, 10, 30))) == [
        utc(2028, 5, 1, 10, 0),
        utc(2028, 5, 1, 10, 10),
        utc(2028, 5, 1, 10, 20),
    ]
    # one microsecond later the run at the start is out, and one microsecond
    # past the end the run at the end is in
    tick = timedelta(microseconds=1)
    assert times(runs_between(js, utc(2028, 5, 1, 10) + tick, utc(2028, 5, 1, 10, 30) + tick)) == [
        utc(2028, 5, 1, 10, 10),
        utc(2028, 5, 1, 10, 20),
        utc(2028, 5, 1, 10, 30),
    ]


def test_empty_and_inverted_windows():
    js = jobs("* * * * * x")
    assert runs_between(js, utc(2028, 5, 1, 10), utc(2028, 5, 1, 10)) == []
    assert runs_between(js, utc(2028, 5, 1, 11), utc(2028, 5, 1, 10)) == []


def test_adjacent_windows_neither_overlap_nor_leave_gaps():
    js = jobs("*/7 * * * * a\n@hourly b\n13 * * * * c")
    a, b, c = utc(2028, 5, 1, 10), utc(2028, 5, 1, 12, 13), utc(2028, 5, 1, 15)
    whole = runs_between(js, a, c)
    assert runs_between(js, a, b) + runs_between(js, b, c) == whole


def test_several_jobs_come_out_in_time_order_ties_in_file_order():
    js = jobs("*/30 * * * * a\n@hourly b\n15,45 * * * * c")
    runs = runs_between(js, utc(2028, 5, 1, 10), utc(2028, 5, 1, 11))
    assert [(r.scheduled_for.minute, r.job.command) for r in runs] == [
        (0, "a"),
        (0, "b"),
        (15, "c"),
        (30, "a"),
        (45, "c"),
    ]


def test_window_in_other_zones_is_the_same_instant():
    js = jobs("* * * * * x")
    start = datetime(2028, 5, 1, 12, tzinfo=PARIS)  # 10:00 UTC
    runs = runs_between(js, start, start + timedelta(minutes=5))
    assert times(runs)[0] == utc(2028, 5, 1, 10)
    assert len(runs) == 5


# -- Scheduler -----------------------------------------------------------------------------


def test_pop_due_hands_out_each_run_once_as_the_clock_advances_unevenly():
    js = jobs("* * * * * every-minute\n*/5 * * * * every-five")
    start = utc(2028, 1, 31, 23, 58, 30)
    sched = Scheduler(js, start)
    steps = [0, 1, 29, 0, 31, 59, 60, 1, 0, 119, 240, 7, 3, 300, 1]  # seconds
    now = start
    handed: list[Run] = []
    for step in steps:
        now += timedelta(seconds=step)
        due = sched.pop_due(now)
        assert all(r.scheduled_for <= now for r in due)
        handed += due
        assert sched.pop_due(now) == []  # asking again gives nothing new
    expected = runs_between(js, start + timedelta(microseconds=1), now + timedelta(microseconds=1))
    assert len(expected) > 15
    assert sorted((r.scheduled_for, r.job.line) for r in handed) == [
        (r.scheduled_for, r.job.line) for r in expected
    ]
    assert times(handed) == sorted(times(handed))
    assert sched.cursor == now


def test_nothing_is_due_before_the_first_run():
    sched = Scheduler(jobs("@hourly x"), utc(2028, 1, 1, 10, 0, 1))
    assert sched.next_due() == utc(2028, 1, 1, 11)
    assert sched.pop_due(utc(2028, 1, 1, 10, 59, 59, 999999)) == []
    (run,) = sched.pop_due(utc(2028, 1, 1, 11))
    assert run.scheduled_for == utc(2028, 1, 1, 11)
    assert sched.next_due() == utc(2028, 1, 1, 12)


def test_a_run_exactly_at_start_is_not_handed_out():
    # The cursor means "handed out up to here", so a reload at 11:00 does not repeat 11:00.
    sched = Scheduler(jobs("@hourly x"), utc(2028, 1, 1, 11))
    assert sched.pop_due(utc(2028, 1, 1, 11)) == []
    assert sched.next_due() == utc(2028, 1, 1, 12)


def test_late_clock_gets_every_missed_run_in_order():
    js = jobs("*/2 * * * * a\n*/3 * * * * b")
    sched = Scheduler(js, utc(2028, 1, 1, 10))
    runs = sched.pop_due(utc(2028, 1, 1, 10, 6))
    assert [(r.scheduled_for.minute, r.job.command) for r in runs] == [
        (2, "a"),
        (3, "b"),
        (4, "a"),
        (6, "a"),
        (6, "b"),
    ]


def test_clock_going_backwards_repeats_nothing():
    sched = Scheduler(jobs("* * * * * x"), utc(2028, 1, 1, 10))
    assert len(sched.pop_due(utc(2028, 1, 1, 10, 5))) == 5
    assert sched.pop_due(utc(2028, 1, 1, 10, 2)) == []
    assert sched.cursor == utc(2028, 1, 1, 10, 5)
    assert times(sched.pop_due(utc(2028, 1, 1, 10, 6))) == [utc(2028, 1, 1, 10, 6)]


def test_reboot_jobs_never_enter_the_scheduler():
    js = jobs("@reboot warm\n@hourly tick\n@reboot other")
    sched = Scheduler(js, utc(2028, 1, 1))
    assert len(sched) == 1
    runs = sched.pop_due(utc(2028, 1, 2))
    assert len(runs) == 24
    assert {r.job.command for r in runs} == {"tick"}


def test_scheduler_with_only_reboot_jobs_or_none():
    for js in (jobs("@reboot a"), ()):
        sched = Scheduler(js, utc(2028, 1, 1))
        assert len(sched) == 0
        assert sched.next_due() is None
        assert sched.pop_due(utc(2030, 1, 1)) == []


def test_scheduler_uses_job_and_default_time_zones():
    js = jobs("@daily plain\ntz=Europe/Paris @daily paris")
    sched = Scheduler(js, utc(2028, 1, 15, 12), TOKYO)
    runs = sched.pop_due(utc(2028, 1, 16, 12))
    assert [(r.scheduled_for, r.job.command) for r in runs] == [
        (utc(2028, 1, 15, 15), "plain"),  # Tokyo midnight
        (utc(2028, 1, 15, 23), "paris"),  # Paris midnight
    ]


def test_scheduler_cursor_is_utc_even_if_started_in_another_zone():
    sched = Scheduler(jobs("@hourly x"), datetime(2028, 1, 1, 12, tzinfo=PARIS))
    assert sched.cursor == utc(2028, 1, 1, 11)
    assert sched.cursor.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "reload_at",
    [
        utc(2028, 1, 1, 10, 5),  # exactly on a run
        utc(2028, 1, 1, 10, 5, 0, 1),  # just after a run
        utc(2028, 1, 1, 10, 4, 59, 999999),  # just before a run
        utc(2028, 1, 1, 10, 7, 30),  # between runs
    ],
)
def test_reload_from_the_cursor_neither_repeats_nor_skips(reload_at):
    old_jobs = jobs("* * * * * kept\n*/5 * * * * removed")
    new_jobs = jobs("# reloaded\n* * * * * kept\n*/2 * * * * added")
    start, end = utc(2028, 1, 1, 10), utc(2028, 1, 1, 10, 20)

    first = Scheduler(old_jobs, start)
    handed = first.pop_due(reload_at)
    second = Scheduler(new_jobs, first.cursor)
    handed += second.pop_due(end)

    kept = [r.scheduled_for for r in handed if r.job.command == "kept"]
    assert kept == [start + timedelta(minutes=m) for m in range(1, 21)]
    assert all(r.scheduled_for <= reload_at for r in handed if r.job.command == "removed")
    added = [r.scheduled_for for r in handed if r.job.command == "added"]
    assert added and all(t > reload_at for t in added)


def test_many_jobs_due_at_once():
    js = jobs("\n".join(f"name=j{i} * * * * * echo {i}" for i in range(2000)))
    sched = Scheduler(js, utc(2028, 1, 1, 10, 0, 30))
    runs = sched.pop_due(utc(2028, 1, 1, 10, 1))
    assert [r.job.name for r in runs] == [f"j{i}" for i in range(2000)]
    assert sched.pop_due(utc(2028, 1, 1, 10, 1, 59)) == []


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(min_value=-120, max_value=1800), min_size=1, max_size=25),
    st.integers(min_value=0, max_value=3),
)
def test_pop_due_matches_runs_between_for_any_steps(steps, reload_every):
    js = jobs("* * * * * a\n*/7 * * * * b\n@hourly c\ntz=Asia/Kolkata 30 * * * * d")
    start = utc(2028, 2, 28, 23, 17, 11)
    sched = Scheduler(js, start)
    now = high = start
    handed: list[Run] = []
    for i, step in enumerate(steps, start=1):
        now += timedelta(seconds=step)
        high = max(high, now)
        handed += sched.pop_due(now)
        if reload_every and i % reload_every == 0:
            sched = Scheduler(js, sched.cursor)
    tick = timedelta(microseconds=1)
    expected = runs_between(js, start + tick, high + tick)
    assert sorted((r.scheduled_for, r.job.line) for r in handed) == [
        (r.scheduled_for, r.job.line) for r in expected
    ]


# -- naive datetimes ----------------------------------------------------------------------


def test_naive_datetimes_are_rejected_everywhere():
    naive = datetime(2028, 1, 1)
    js = jobs("* * * * * x")
    with pytest.raises(ValueError, match="naive"):
        Scheduler(js, naive)
    sched = Scheduler(js, utc(2028, 1, 1))
    with pytest.raises(ValueError, match="naive"):
        sched.pop_due(naive)
    with pytest.raises(ValueError, match="naive"):
        runs_between(js, naive, utc(2028, 1, 2))
    with pytest.raises(ValueError, match="naive"):
        runs_between(js, utc(2028, 1, 1), naive)
    with pytest.raises(ValueError, match="naive"):
        next_runs(js[0], naive, 1)


def test_job_zone():
    assert schedule.job_zone(job("@daily x")) is UTC
    assert schedule.job_zone(job("@daily x"), TOKYO) is TOKYO
    assert schedule.job_zone(job("tz=Europe/Paris @daily x"), TOKYO) == PARIS


# -- jobs sharing a schedule ---------------------------------------------------------------


def test_jobs_sharing_a_schedule_each_fire_once_in_file_order():
    js = jobs("* * * * * a\n*/2 * * * * b\n* * * * * c\n*/2 * * * * d\ntz=Asia/Kolkata * * * * * e")
    sched = Scheduler(js, utc(2028, 1, 1, 10))
    assert len(sched) == 5
    runs = sched.pop_due(utc(2028, 1, 1, 10, 2))
    assert [(r.scheduled_for.minute, r.job.command) for r in runs] == [
        (1, "a"),
        (1, "c"),
        (1, "e"),
        (2, "a"),
        (2, "b"),
        (2, "c"),
        (2, "d"),
        (2, "e"),
    ]
    assert sched.pop_due(utc(2028, 1, 1, 10, 2)) == []
    assert [r.job.command for r in sched.pop_due(utc(2028, 1, 1, 10, 3))] == ["a", "c", "e"]


def test_jobs_sharing_a_schedule_resume_each_from_its_own_instant():
    js = jobs("name=a * * * * * x\nname=b * * * * * x\nname=c * * * * * x")
    resume = {"b": utc(2028, 1, 1, 10, 2)}  # b already dispatched 10:01 and 10:02
    sched = Scheduler(js, utc(2028, 1, 1, 10), resume_from=resume)
    runs = sched.pop_due(utc(2028, 1, 1, 10, 3))
    assert [(r.scheduled_for.minute, r.job.name) for r in runs] == [
        (1, "a"),
        (1, "c"),
        (2, "a"),
        (2, "c"),
        (3, "a"),
        (3, "b"),
        (3, "c"),
    ]


def test_runs_between_gives_every_job_of_a_shared_schedule_its_runs():
    js = jobs("@hourly a\n30 * * * * b\n0 * * * * c")
    runs = runs_between(js, utc(2028, 5, 1, 10), utc(2028, 5, 1, 12))
    assert [(r.scheduled_for.hour, r.scheduled_for.minute, r.job.command) for r in runs] == [
        (10, 0, "a"),
        (10, 0, "c"),
        (10, 30, "b"),
        (11, 0, "a"),
        (11, 0, "c"),
        (11, 30, "b"),
    ]
