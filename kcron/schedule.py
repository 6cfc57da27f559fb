"""When jobs are due. Pure: the caller supplies every clock reading.

Run times come from kcron.cronexpr, evaluated on the wall clock of the job's
time zone with cron(8)'s rules (day fields, DST changes) and returned as UTC
datetimes.
A heap keyed by each schedule's next run makes a tick cost
O(due runs + due schedules · log n), not O(jobs), so a 100,000-job file does
not turn every tick into a scan.
"""

from __future__ import annotations

import heapq
import itertools
import zoneinfo
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo

from kcron import cronexpr
from kcron.jobfile import Job


@dataclass(frozen=True, order=True)
class Run:
    """One due run of one job: what the producer turns into a message."""

    scheduled_for: datetime
    job: Job


def job_zone(job: Job, default_tz: tzinfo = UTC) -> tzinfo:
    return zoneinfo.ZoneInfo(job.tz) if job.tz else default_tz


def iter_runs(job: Job, after: datetime, default_tz: tzinfo = UTC) -> Iterator[datetime]:
    """Run times of ``job`` strictly after ``after``, as UTC datetimes."""
    if job.is_reboot:
        return
    _require_aware(after)
    yield from cronexpr.runs_after(
        cronexpr.parse(job.cron_expression), after, job_zone(job, default_tz)
    )


def next_runs(job: Job, after: datetime, count: int, default_tz: tzinfo = UTC) -> list[datetime]:
    return list(itertools.islice(iter_runs(job, after, default_tz), count))


def runs_between(
    jobs: Iterable[Job], start: datetime, end: datetime, default_tz: tzinfo = UTC
) -> list[Run]:
    """Every run with ``start <= scheduled_for < end``, in time order (for backfill)."""
    _require_aware(start)
    _require_aware(end)
    # Run times are strictly after their start; step back a microsecond so a
    # run exactly at ``start`` is included.
    before_start = start - _EPSILON
    runs: list[Run] = []
    for group in _by_schedule(jobs).values():
        times: list[datetime] = []
        for when in iter_runs(group[0], before_start, default_tz):
            if when >= end:
                break
            times.append(when)
        runs.extend(Run(when, job) for job in group for when in times)
    runs.sort(key=lambda r: (r.scheduled_for, r.job.line))
    return runs


def _by_schedule(jobs: Iterable[Job]) -> dict[tuple[str, str | None], list[Job]]:
    """Jobs by (cron expression, time zone): those of a group run at the same times."""
    groups: dict[tuple[str, str | None], list[Job]] = {}
    for job in jobs:
        if not job.is_reboot:
            groups.setdefault((job.cron_expression, job.tz), []).append(job)
    return groups


class Scheduler:
    """Hands out due runs in time order as the caller's clock advances.

    ``cursor`` is the instant up to which runs have been handed out. A reload
    builds a new Scheduler from the old cursor, so editing the job file
    neither repeats nor skips a run.

    Jobs with the same schedule, time zone and resume instant share one
    run-time iterator and one heap entry: a 100,000-job file typically holds a few
    thousand distinct schedules, and computing run times is the costly part.
    """

    def __init__(
        self,
        jobs: Sequence[Job],
        start: datetime,
        default_tz: tzinfo = UTC,
        resume_from: Mapping[str, datetime] | None = None,
    ) -> None:
        """Runs strictly after ``start``, or after ``resume_from[job.name]`` where given."""
        _require_aware(start)
        self.cursor = start.astimezone(UTC)
        resume_from = resume_from or {}
        # (schedule, zone, resume instant) -> (job's index in ``jobs``, job), in job order
        groups: dict[tuple[str, str | None, datetime], list[tuple[int, Job]]] = {}
        for index, job in enumerate(jobs):
            if job.is_reboot:
                continue
            after = resume_from.get(job.name, self.cursor)
            groups.setdefault((job.cron_expression, job.tz, after), []).append((index, job))
        self._jobs = sum(len(members) for members in groups.values())
        # (next run, index of the group's first job, its run times, its jobs): the
        # index is unique per group, so ties never compare the iterators.
        self._heap: list[tuple[datetime, int, Iterator[datetime], list[tuple[int, Job]]]] = []
        for (_expression, _tz, after), members in groups.items():
            runs = iter_runs(members[0][1], after, default_tz)
            self._heap.append((next(runs), members[0][0], runs, members))
        heapq.heapify(self._heap)

    def __len__(self) -> int:
        """How many jobs are scheduled (@reboot jobs are not)."""
        return self._jobs

    def next_due(self) -> datetime | None:
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: datetime) -> list[Run]:
        """All runs due at or before ``now`` that were not handed out yet.

        In time order; runs at the same time in job-file order.
        """
        _require_aware(now)
        due: list[tuple[datetime, int, Job]] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, first, runs, members = heap[0]
            due.extend((when, index, job) for index, job in members)
            heapq.heapreplace(heap, (next(runs), first, runs, members))
        if now > self.cursor:
            self.cursor = now.astimezone(UTC)
        due.sort(key=lambda entry: entry[:2])
        return [Run(when, job) for when, _index, job in due]


_EPSILON = datetime.resolution


def _require_aware(moment: datetime) -> None:
    if moment.tzinfo is None:
        raise ValueError("naive datetime: kcron schedules only with time-zone-aware times")
