"""Misfire policy: what a restarted producer does about ticks it missed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kcron import jobfile, misfire
from kcron.misfire import Policy
from kcron.schedule import Scheduler

JOBS = jobfile.parse(
    b"name=minute * * * * * echo m\nname=hourly @hourly echo h\nname=boot @reboot echo b\n",
    "jobs.cron",
).jobs
NOW = datetime(2026, 3, 1, 12, 10, 30, tzinfo=UTC)
HOUR = timedelta(hours=1)


def at(hh: int, mm: int) -> datetime:
    return datetime(2026, 3, 1, hh, mm, tzinfo=UTC)


def minute_runs(plan: misfire.Plan) -> list[datetime]:
    return [r.scheduled_for for r in plan.runs if r.job.name == "minute"]


def test_new_jobs_have_no_misfires_and_start_from_now() -> None:
    plan = misfire.plan(JOBS, {}, NOW, Policy.ONCE, HOUR)
    assert plan.runs == ()
    assert plan.resume_from == {"minute": NOW, "hourly": NOW}
    assert plan.skipped == {}


def test_once_runs_only_the_latest_missed_tick() -> None:
    plan = misfire.plan(JOBS, {"minute": at(12, 5)}, NOW, Policy.ONCE, HOUR)
    assert minute_runs(plan) == [at(12, 10)]
    assert plan.skipped == {"minute": 4}  # 12:06..12:09
    assert plan.resume_from["minute"] == NOW


def test_all_runs_every_missed_tick_in_order() -> None:
    plan = misfire.plan(JOBS, {"minute": at(12, 5)}, NOW, Policy.ALL, HOUR)
    assert minute_runs(plan) == [at(12, m) for m in range(6, 11)]
    assert plan.skipped == {}


def test_skip_runs_nothing_and_counts_what_it_dropped() -> None:
    plan = misfire.plan(JOBS, {"minute": at(12, 5)}, NOW, Policy.SKIP, HOUR)
    assert plan.runs == ()
    assert plan.skipped == {"minute": 5}


def test_ticks_older_than_the_grace_are_never_run() -> None:
    grace = timedelta(minutes=2, seconds=10)  # 12:08:20 and later are within
    plan = misfire.plan(JOBS, {"minute": at(12, 0)}, NOW, Policy.ALL, grace)
    assert minute_runs(plan) == [at(12, 9), at(12, 10)]
    assert plan.skipped == {"minute": 8}


def test_once_outside_the_grace_skips_everything() -> None:
    plan = misfire.plan(JOBS, {"hourly": at(9, 0)}, NOW, Policy.ONCE, timedelta(minutes=5))
    assert [r for r in plan.runs if r.job.name == "hourly"] == []
    assert plan.skipped == {"hourly": 3}  # 10:00, 11:00, 12:00


def test_nothing_missed_when_the_last_tick_was_dispatched() -> None:
    plan = misfire.plan(JOBS, {"minute": at(12, 10)}, NOW, Policy.ALL, HOUR)
    assert minute_runs(plan) == []
    assert plan.skipped == {}


def test_state_ahead_of_the_clock_resumes_after_it() -> None:
    # Dispatched early (dispatch-ahead) right before a restart: 12:11 is done.
    plan = misfire.plan(JOBS, {"minute": at(12, 11)}, NOW, Policy.ONCE, HOUR)
    assert minute_runs(plan) == []
    assert plan.resume_from["minute"] == at(12, 11)
    scheduler = Scheduler(JOBS, NOW, resume_from=plan.resume_from)
    assert [r.scheduled_for for r in scheduler.pop_due(at(12, 12))] == [at(12, 12)]


def test_reboot_jobs_are_not_part_of_the_plan() -> None:
    plan = misfire.plan(JOBS, {"boot": at(1, 0)}, NOW, Policy.ALL, HOUR)
    assert all(r.job.name != "boot" for r in plan.runs)
    assert "boot" not in plan.resume_from


def test_a_long_outage_is_bounded() -> None:
    year_ago = NOW - timedelta(days=365)
    plan = misfire.plan(JOBS, {"minute": year_ago}, NOW, Policy.ALL, timedelta(days=400))
    assert len(minute_runs(plan)) == misfire.MAX_CATCH_UP_PER_JOB


@given(
    last_minutes_ago=st.integers(min_value=0, max_value=300),
    grace_minutes=st.integers(min_value=0, max_value=400),
    policy=st.sampled_from(list(Policy)),
)
def test_plan_then_schedule_never_repeats_a_dispatched_tick(
    last_minutes_ago: int, grace_minutes: int, policy: Policy
) -> None:
    last = at(12, 10) - timedelta(minutes=last_minutes_ago)
    plan = misfire.plan(JOBS, {"minute": last}, NOW, policy, timedelta(minutes=grace_minutes))
    caught_up = minute_runs(plan)
    scheduler = Scheduler(JOBS, NOW, resume_from=plan.resume_from)
    later = [r.scheduled_for for r in scheduler.pop_due(at(12, 20)) if r.job.name == "minute"]
    dispatched = caught_up + later
    assert all(t > last for t in dispatched), "a tick already dispatched came back"
    assert len(dispatched) == len(set(dispatched))
    assert later == [at(12, m) for m in range(11, 21)], "ticks after the restart are all kept"
    missed_total = last_minutes_ago
    assert len(caught_up) + plan.skipped.get("minute", 0) == missed_total


def test_state_records_round_trip_and_reject_garbage() -> None:
    raw = misfire.encode_state("minute", at(12, 10), NOW)
    assert misfire.decode_state(raw) == ("minute", at(12, 10))
    assert misfire.state_key("jobs", "minute") == b"jobs/minute"
    for bad in (None, b"", b"not json", b'{"v": 2, "job": "x"}', b"[1]", b'{"v": 1}'):
        assert misfire.decode_state(bad) is None


@pytest.mark.parametrize("policy", list(Policy))
def test_policy_values_are_the_cli_words(policy: Policy) -> None:
    assert Policy(policy.value) is policy


def test_jobs_sharing_a_schedule_and_state_each_get_their_missed_tick() -> None:
    shared = jobfile.parse(
        b"name=a * * * * * echo a\nname=b * * * * * echo b\nname=c * * * * * echo c\n",
        "jobs.cron",
    ).jobs
    last = {"a": at(12, 5), "b": at(12, 5), "c": at(12, 8)}
    plan = misfire.plan(shared, last, NOW, Policy.ONCE, HOUR)
    assert [(r.scheduled_for, r.job.name) for r in plan.runs] == [
        (at(12, 10), "a"),
        (at(12, 10), "b"),
        (at(12, 10), "c"),
    ]
    assert plan.skipped == {"a": 4, "b": 4, "c": 1}


def test_a_fall_back_outage_misses_a_fixed_time_job_once() -> None:
    # Down across 2026-10-25 02:00-03:00 in Paris: cron runs "30 2" once that night,
    # so `all` catches up one tick, not two.
    fixed = jobfile.parse(b"name=f tz=Europe/Paris 30 2 * * * x\n", "jobs.cron").jobs
    last = datetime(2026, 10, 24, 0, 30, tzinfo=UTC)
    now = datetime(2026, 10, 25, 3, 0, tzinfo=UTC)
    plan = misfire.plan(fixed, {"f": last}, now, Policy.ALL, timedelta(days=2))
    assert [r.scheduled_for for r in plan.runs] == [datetime(2026, 10, 25, 0, 30, tzinfo=UTC)]
