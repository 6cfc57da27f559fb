"""What a producer does about ticks it missed while no producer was running. Pure.

The producer records, per job, the last ``scheduled_for`` it dispatched (in
the same Kafka transaction as the runs). On start it compares that with the
clock and applies a policy:

- ``skip``: missed ticks are not run;
- ``once`` (default): the most recent missed tick runs once, if it was missed
  by less than the grace; older ones are skipped;
- ``all``: every missed tick within the grace runs, oldest first.

Ticks missed by more than the grace are always skipped and logged: a catch-up
beyond it is an operator's decision (``kcron backfill``).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo

from kcron.jobfile import Job
from kcron.message import format_time, parse_time
from kcron.schedule import Run, iter_runs

STATE_VERSION = 1
# Even `all` stops here per job, so a long outage cannot flood the workers.
MAX_CATCH_UP_PER_JOB = 1000
MAX_COUNTED = 100_000  # skipped ticks are counted for the log up to here
_EPSILON = timedelta(microseconds=1)


class Policy(enum.StrEnum):
    SKIP = "skip"
    ONCE = "once"
    ALL = "all"


@dataclass(frozen=True)
class Plan:
    """Runs to dispatch now, and where each job's schedule resumes."""

    runs: tuple[Run, ...]
    resume_from: Mapping[str, datetime]  # job name -> cursor (runs strictly after it)
    skipped: Mapping[str, int] = field(default_factory=dict)  # job name -> missed ticks not run


def plan(
    jobs: Sequence[Job],
    last_dispatched: Mapping[str, datetime],
    now: datetime,
    policy: Policy,
    grace: timedelta,
    default_tz: tzinfo = UTC,
) -> Plan:
    runs: list[Run] = []
    skipped: dict[str, int] = {}
    resume: dict[str, datetime] = {}
    oldest_allowed = now - grace
    # Jobs with the same schedule, zone and last dispatch missed the same ticks:
    # a big file has many jobs per schedule, and computing ticks is the costly part.
    missed_by_schedule: dict[tuple[str, str | None, datetime], tuple[int, list[datetime]]] = {}
    for job in jobs:
        if job.is_reboot:
            continue
        last = last_dispatched.get(job.name)
        resume[job.name] = now
        if last is None or last >= now:
            # A new job starts from now; a state ahead of the clock (dispatched
            # early, or a clock step back) resumes after what was dispatched.
            if last is not None:
                resume[job.name] = last
            continue
        key = (job.cron_expression, job.tz, last)
        if key not in missed_by_schedule:
            missed_by_schedule[key] = _missed(job, last, now, oldest_allowed, default_tz)
        stale, missed = missed_by_schedule[key]
        total = stale + len(missed)
        if policy is Policy.ALL:
            chosen = missed
        elif policy is Policy.ONCE:
            chosen = missed[-1:]
        else:
            chosen = []
        runs.extend(Run(when, job) for when in chosen)
        if total - len(chosen):
            skipped[job.name] = total - len(chosen)
    runs.sort(key=lambda r: (r.scheduled_for, r.job.line))
    return Plan(tuple(runs), resume, skipped)


def _missed(
    job: Job, last: datetime, now: datetime, oldest_allowed: datetime, default_tz: tzinfo
) -> tuple[int, list[datetime]]:
    """Ticks after ``last`` up to ``now``: (how many are older than the grace, the others)."""
    runs = iter_runs(job, last, default_tz)
    when = next(runs)
    # Ticks older than the grace are only counted (bounded), never run.
    stale = 0
    while when < oldest_allowed:
        if stale >= MAX_COUNTED:
            runs = iter_runs(job, oldest_allowed - _EPSILON, default_tz)
            when = next(runs)
            break
        stale += 1
        when = next(runs)
    missed: list[datetime] = []
    while when <= now and len(missed) < MAX_CATCH_UP_PER_JOB:
        missed.append(when)
        when = next(runs)
    return stale, missed


# -- the state record in the compacted state topic ---------------------------


def state_key(producer_id: str, job_name: str) -> bytes:
    return f"{producer_id}/{job_name}".encode()


def encode_state(job_name: str, last_scheduled_for: datetime, updated_at: datetime) -> bytes:
    return json.dumps(
        {
            "v": STATE_VERSION,
            "job": job_name,
            "last_scheduled_for": format_time(last_scheduled_for),
            "updated_at": format_time(updated_at),
        },
        separators=(",", ":"),
    ).encode()


def decode_state(raw: bytes | None) -> tuple[str, datetime] | None:
    """(job name, last scheduled_for), or None for a tombstone or an unreadable record."""
    if not raw:
        return None
    try:
        doc = json.loads(raw)
        if doc.get("v") != STATE_VERSION:
            return None
        return str(doc["job"]), parse_time(doc["last_scheduled_for"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
