"""Runs that arrived before they may start, ordered by start instant. Pure.

A run is held until its ``scheduled_for`` (dispatched ahead) or, for a retry,
its ``not_before`` (backoff). The loop asks for the due ones each turn and
sleeps no longer than until the next one: holding never blocks anything.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Container
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from kcron.worker.runner import Job

# A run scheduled further ahead than this is started at once with a warning:
# holding it longer would stall its partition's commits behind it, and it most
# likely means the producer's and this worker's clocks disagree.
MAX_HOLD = timedelta(seconds=60)
# A retry's not_before is legitimately minutes ahead (the backoff cap), so
# MAX_HOLD does not apply to it; this generous bound only catches nonsense
# (a clock far off, a hand-made message) that would stall a partition for days.
MIN_BACKOFF_HOLD = timedelta(hours=1)


def max_backoff_hold(retry_cap_s: float) -> timedelta:
    return max(MIN_BACKOFF_HOLD, timedelta(seconds=2 * retry_cap_s))


@dataclass(order=True)
class _Held:
    start_at: datetime
    seq: int
    job: Job = field(compare=False)


class HoldQueue:
    """Jobs waiting for their start instant; earliest first, arrival order on ties."""

    def __init__(self) -> None:
        self._heap: list[_Held] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, when: datetime, job: Job) -> None:
        heapq.heappush(self._heap, _Held(when, next(self._seq), job))

    def next_at(self) -> datetime | None:
        return self._heap[0].start_at if self._heap else None

    def due(self, now: datetime) -> list[Job]:
        """Remove and return the jobs whose start instant has come."""
        jobs = []
        while self._heap and self._heap[0].start_at <= now:
            jobs.append(heapq.heappop(self._heap).job)
        return jobs

    def drop(self, partitions: Container[tuple[str, int]]) -> None:
        """Forget the jobs of ``partitions`` (revoked: not started, so redelivered)."""
        self._heap = [h for h in self._heap if h.job.partition not in partitions]
        heapq.heapify(self._heap)

    def clear(self) -> None:
        self._heap.clear()
