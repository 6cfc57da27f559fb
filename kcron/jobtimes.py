"""Each job's next run and its longest gap between runs, for the producer's metrics. Pure.

Jobs with the same schedule and time zone share their run times, and a big
job file holds few distinct schedules: the run times are computed once per
schedule when the file is loaded, never per tick. ``next_at`` answers from
those times at scrape time and computes more only once they are used up.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, tzinfo

from kcron.jobfile import Job
from kcron.schedule import next_runs

# The dead man's switch compares a job's silence with its longest gap: "0 9 * * 1-5"
# is due daily but silent over each weekend, and 64 runs cover such a week
# (and an hourly job's day) without costing much per distinct schedule.
LOOKAHEAD = 64

ScheduleKey = tuple[str, str | None]  # (cron expression, job's tz or None)


def schedule_key(job: Job) -> ScheduleKey:
    return (job.cron_expression, job.tz)


class _Schedule:
    def __init__(self, job: Job, after: datetime, default_tz: tzinfo) -> None:
        self._job = job  # any job with this schedule: all share their run times
        self._default_tz = default_tz
        self.times = next_runs(job, after, LOOKAHEAD, default_tz)
        gaps = [(b - a).total_seconds() for a, b in zip(self.times, self.times[1:], strict=False)]
        self.interval_s = max(gaps) if gaps else None

    def next_after(self, now: datetime) -> datetime | None:
        index = bisect.bisect_right(self.times, now)
        if index == len(self.times):
            if not self.times:
                return None
            # Used up (an every-minute job after an hour): the next LOOKAHEAD from now.
            self.times = next_runs(self._job, max(now, self.times[-1]), LOOKAHEAD, self._default_tz)
            index = 0
        return self.times[index] if index < len(self.times) else None


class JobTimes:
    """Run times by distinct schedule (``@reboot`` jobs have none)."""

    def __init__(
        self,
        jobs: Iterable[Job],
        now: datetime,
        default_tz: tzinfo = UTC,
        pause: Callable[[int], None] | None = None,
    ) -> None:
        """``pause(n)`` is called after the n-th distinct schedule: a background
        computation yields there (about 1 ms per schedule; a 100,000-job file
        has about 10,000 schedules)."""
        self._schedules: dict[ScheduleKey, _Schedule] = {}
        for job in jobs:
            key = schedule_key(job)
            if not job.is_reboot and key not in self._schedules:
                self._schedules[key] = _Schedule(job, now, default_tz)
                if pause is not None:
                    pause(len(self._schedules))
        # Scrapes come from the HTTP server's threads; extending the times is not atomic.
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._schedules)

    def interval_s(self, key: ScheduleKey) -> float | None:
        schedule = self._schedules.get(key)
        return schedule.interval_s if schedule is not None else None

    def next_at(self, key: ScheduleKey, now: datetime) -> datetime | None:
        schedule = self._schedules.get(key)
        if schedule is None:
            return None
        with self._lock:
            return schedule.next_after(now)
