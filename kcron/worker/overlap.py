"""overlap=forbid in the worker: a run whose job still runs here is skipped.

The producer keys a forbid job's runs by the job's name, so they all reach the
worker that owns that one partition (and its retries the same-numbered
partition of the retry topic, which the range assignor gives the same
worker). This worker's own pool is then the whole truth about whether the job
runs, except just after the partition moved here: its previous owner may
still be finishing a run within its revoke grace. The loop therefore holds a
forbid run of a newly assigned partition until that grace is over
(``Partitions.quiet_until``), and asks ``running_run`` when the run's start
comes due, not when it arrives: a run held for its schedule must see what
runs at its start.

A skipped run is settled like a finished one (outcome ``skipped``, no process,
no exit code): committed, never retried or dead-lettered (kcron/retry.py).
The design and the window it leaves are in docs/operations.md#overlap.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime

from kcron.executor import ExecResult, Outcome
from kcron.log import fields
from kcron.message import format_time
from kcron.metrics import WorkerMetrics
from kcron.worker.runner import Done, Job

log = logging.getLogger("kcron.worker")

SKIP_REASON = "an earlier run of this job is still running"


def running_run(job: Job, pending: Iterable[Job]) -> Job | None:
    """Another run of ``job``'s job that this worker started and has not settled.

    ``pending`` is the pool's: queued for a free slot, running, or finished with
    its result not yet taken. A run of the job that outlived its partition's
    revoke grace is still there, so it still counts.
    """
    for other in pending:
        if other.run.job == job.run.job and other.slot != job.slot:
            return other
    return None


def skip(job: Job, running: Job, now: datetime, default_queue: str, metrics: WorkerMetrics) -> Done:
    """Log and count ``job`` as skipped; its Done, for the settler to commit."""
    run = job.run
    metrics.finished(run.job, Outcome.SKIPPED.value, 0.0, None)
    log.warning(
        "run skipped",
        extra=fields(
            job=run.job,
            run=run.id,
            queue=run.queue or default_queue,
            reason=SKIP_REASON,
            running=running.run.id,
            attempt=run.attempt,
            scheduled_for=format_time(run.scheduled_for),
            partition=job.partition[1],
            offset=job.offset,
        ),
    )
    result = ExecResult(Outcome.SKIPPED, None, 0.0, 0, False, b"", SKIP_REASON)
    return Done(job, result, now, now)


def held_for_quiet(job: Job, until: datetime) -> None:
    log.info(
        "run held: its partition just moved here and the previous owner may still run the job",
        extra=fields(job=job.run.job, run=job.run.id, until=format_time(until)),
    )
