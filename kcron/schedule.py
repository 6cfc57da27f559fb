"""When jobs are due. Pure: the caller supplies every clock reading.

Run times come from croniter, evaluated in the job's time zone (so DST and
month ends behave as cron users expect) and returned as UTC datetimes.
A heap keyed by each job's next run makes a tick cost O(due runs · log n),
not O(jobs), so a 100,000-job file does not turn every tick into a scan.
"""

from __future__ import annotations

import heapq
import itertools
import zoneinfo
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo

from croniter import croniter

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
    it = croniter(job.cron_expression, after.astimezone(job_zone(job, default_tz)))
    while True:
        yield it.get_next(datetime).astimezone(UTC)


def next_runs(job: Job, after: datetime, count: int, default_tz: tzinfo = UTC) -> list[datetime]:
    return list(itertools.islice(iter_runs(job, after, default_tz), count))


def runs_between(
    jobs: Iterable[Job], start: datetime, end: datetime, default_tz: tzinfo = UTC
) -> list[Run]:
    """Every run with ``start <= scheduled_for < end``, in time order (for backfill)."""
    _require_aware(start)
    _require_aware(end)
    # croniter yields times strictly after its start; step back a microsecond so
    # a run exactly at ``start`` is included.
    before_start = start - _EPSILON
    runs: list[Run] = []
    for job in jobs:
        for when in iter_runs(job, before_start, default_tz):
            if when >= end:
                break
            runs.append(Run(when, job))
    runs.sort(key=lambda r: (r.scheduled_for, r.job.line))
    return runs


class Scheduler:
    """Hands out due runs in time order as the caller's clock advances.

    ``cursor`` is the instant up to which runs have been handed out. A reload
    builds a new Scheduler from the old cursor, so editing the job file
    neither repeats nor skips a run.
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
        self._heap: list[tuple[datetime, int, Iterator[datetime], Job]] = []
        resume_from = resume_from or {}
        for index, job in enumerate(jobs):
            if job.is_reboot:
                continue
            runs = iter_runs(job, resume_from.get(job.name, self.cursor), default_tz)
            self._heap.append((next(runs), index, runs, job))
        heapq.heapify(self._heap)

    def __len__(self) -> int:
        return len(self._heap)

    def next_due(self) -> datetime | None:
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: datetime) -> list[Run]:
        """All runs due at or before ``now`` that were not handed out yet."""
        _require_aware(now)
        due: list[Run] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, index, runs, job = heap[0]
            due.append(Run(when, job))
            heapq.heapreplace(heap, (next(runs), index, runs, job))
        if now > self.cursor:
            self.cursor = now.astimezone(UTC)
        return due


_EPSILON = datetime.resolution


def _require_aware(moment: datetime) -> None:
    if moment.tzinfo is None:
        raise ValueError("naive datetime: kcron schedules only with time-zone-aware times")
