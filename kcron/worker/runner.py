"""Execute one run and say how it went. Knows nothing of Kafka.

``JobRunner.execute`` runs on a pool thread: it starts the command through
kcron.executor, logs the run's start, output and end, and returns a ``Done``.
``ThreadPool`` owns those threads and the process groups they started, so the
loop can hand queued runs back, cancel running ones after the grace, or kill
them at once on a second signal.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from kcron import executor
from kcron.log import fields
from kcron.message import RunMessage, format_time
from kcron.metrics import WorkerMetrics

log = logging.getLogger("kcron.worker")
job_log = logging.getLogger("kcron.job")

Clock = Callable[[], datetime]
PartitionKey = tuple[str, int]

# A run starting this long after it was due is logged at WARNING with late=true
# and counted in kcron_runs_late_total: a frozen broker, a backlog, a slow rebalance.
LATE_AFTER = timedelta(seconds=5)


@dataclass(frozen=True)
class Job:
    """A run taken from ``partition`` at ``offset``, under assignment ``generation``."""

    run: RunMessage
    partition: PartitionKey
    offset: int
    generation: int

    @property
    def slot(self) -> tuple[PartitionKey, int]:
        return (self.partition, self.offset)


@dataclass(frozen=True)
class Done:
    """A job came back from the pool."""

    job: Job
    result: executor.ExecResult | None  # None: cancelled before it started, or a bug
    started_at: datetime | None = None
    finished_at: datetime | None = None


@dataclass(frozen=True)
class Started:
    """A job's command is starting: the settler writes its ``started`` event."""

    job: Job
    started_at: datetime
    lateness_ms: int


# The worker's Kafka properties may hold a SASL password: a job run as
# another user must not read the credentials its worker holds.
WORKER_ONLY_ENV = ("KCRON_KAFKA_OPTIONS",)


def run_environment(
    msg: RunMessage, base: Mapping[str, str], user: executor.Credentials | None = None
) -> dict[str, str]:
    """The job's environment: the worker's own plus the run's identity, and
    with ``user`` that user's HOME, USER and LOGNAME."""
    env = dict(base)
    if user is not None:
        for name in WORKER_ONLY_ENV:
            env.pop(name, None)
        env.update(HOME=user.home, USER=user.user, LOGNAME=user.user)
    env.update(
        KCRON_RUN_ID=msg.id,
        KCRON_JOB=msg.job,
        KCRON_SCHEDULED_FOR=format_time(msg.scheduled_for),
        KCRON_ATTEMPT=str(msg.attempt),
        KCRON_MAX_ATTEMPTS=str(msg.max_attempts),
    )
    return env


def ms(seconds: float) -> int:
    return round(seconds * 1000)


class Pool(Protocol):
    """Where the loop's jobs run; ``sink`` gets each one's Done, from any thread."""

    def submit(self, job: Job) -> None: ...

    def cancel_queued(self, partitions: Collection[PartitionKey] | None = None) -> None:
        """Drop jobs not started yet (of ``partitions``, or all); no Done comes for them."""

    def pending(self, partitions: Collection[PartitionKey] | None = None) -> list[Job]:
        """Jobs submitted whose Done the loop has not taken yet."""

    def taken(self, job: Job) -> None:
        """The loop took ``job``'s Done."""

    def waiting(self) -> int:
        """Jobs submitted and not started yet (called from the metrics' thread)."""

    def cancel_running(self) -> None:
        """Grace over: kill running jobs' groups; they come back CANCELLED."""

    def kill(self) -> int:
        """Second signal: SIGKILL every running job's group now; return how many."""

    def close(self) -> None: ...


class JobRunner:
    """Runs one job to its end and logs it; returns instead of raising."""

    def __init__(
        self,
        max_output_bytes: int,
        topic: str,
        metrics: WorkerMetrics,
        clock: Clock,
        run_as: executor.Credentials | None = None,
        on_start: Callable[[Started], None] | None = None,
    ) -> None:
        self._max_output_bytes = max_output_bytes
        self._topic = topic
        self._metrics = metrics
        self._clock = clock
        self._run_as = run_as  # None: jobs run as the worker's user
        self._on_start = on_start  # the run-events hook, served on the loop's thread

    def execute(self, job: Job, cancel: threading.Event, on_spawn: Callable[[int], None]) -> Done:
        msg = job.run
        if cancel.is_set():
            return Done(job, None)
        try:
            started = self._clock()
            lateness = (started - msg.due).total_seconds()
            where = self._where(job)
            self._started(msg, started, lateness, where)
            if self._on_start is not None:
                self._on_start(Started(job, started, ms(lateness)))
            result = self._run(msg, cancel, on_spawn)
            finished = self._clock()
            self._ended(msg, result, lateness, where)
            return Done(job, result, started, finished)
        except Exception:  # a bug here must not kill the pool thread silently
            log.exception("internal error while executing run", extra=fields(run=msg.id))
            return Done(job, None)

    def _where(self, job: Job) -> dict[str, object]:
        return {
            # The queue the run belongs to: what a pool's operator filters on.
            "queue": job.run.queue or self._topic,
            "topic": job.partition[0] if job.partition[0] != self._topic else None,
            "partition": job.partition[1],
            "offset": job.offset,
        }

    def _started(
        self, msg: RunMessage, started: datetime, lateness: float, where: dict[str, object]
    ) -> None:
        late = started - msg.due >= LATE_AFTER
        log.log(
            logging.WARNING if late else logging.INFO,
            "run started",
            extra=fields(
                job=msg.job,
                run=msg.id,
                attempt=msg.attempt,
                max_attempts=msg.max_attempts if msg.max_attempts > 1 else None,
                scheduled_for=format_time(msg.scheduled_for),
                not_before=format_time(msg.not_before) if msg.not_before else None,
                lateness_ms=ms(lateness),
                late=True if late else None,
                **where,
            ),
        )

    def _run(
        self, msg: RunMessage, cancel: threading.Event, on_spawn: Callable[[int], None]
    ) -> executor.ExecResult:
        def on_line(stream: str, line: str) -> None:
            level = logging.WARNING if stream == "stderr" else logging.INFO
            job_log.log(level, line, extra=fields(job=msg.job, run=msg.id, stream=stream))

        spec = executor.ExecSpec(
            command=msg.command,
            shell=msg.shell,
            timeout_s=msg.timeout_s,
            env=run_environment(msg, os.environ, self._run_as),
            credentials=self._run_as,
        )
        self._metrics.running.inc()
        try:
            return executor.run(
                spec,
                on_line,
                max_output_bytes=self._max_output_bytes,
                cancel=cancel,
                on_spawn=on_spawn,
            )
        finally:
            self._metrics.running.dec()

    def _ended(
        self,
        msg: RunMessage,
        result: executor.ExecResult,
        lateness: float,
        where: dict[str, object],
    ) -> None:
        summary = fields(
            job=msg.job,
            run=msg.id,
            outcome=result.outcome.value,
            exit_code=result.exit_code,
            attempt=msg.attempt,
            duration_ms=ms(result.duration_s),
            lateness_ms=ms(lateness),
            output_bytes=result.output_bytes,
            output_truncated=result.output_truncated or None,
            error=result.error,
            **where,
        )
        if result.ok:
            log.info("run succeeded", extra=summary)
        else:
            log.error("run failed", extra=summary)
        if result.leftover:
            log.warning(
                "job exited but left processes running; they are killed at its timeout",
                extra=fields(job=msg.job, run=msg.id, timeout_s=msg.timeout_s),
            )


class ThreadPool:
    """``concurrency`` threads running jobs through a JobRunner."""

    def __init__(self, runner: JobRunner, concurrency: int, sink: Callable[[Done], None]) -> None:
        self._runner = runner
        self._sink = sink
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="run")
        self._cancel = threading.Event()  # set after the grace: kill running jobs
        self._futures: dict[tuple[PartitionKey, int], tuple[Job, Future[None]]] = {}
        self._groups: set[int] = set()  # process groups of running jobs
        self._lock = threading.Lock()

    def submit(self, job: Job) -> None:
        self._futures[job.slot] = (job, self._pool.submit(self._execute, job))

    def _execute(self, job: Job) -> None:
        pgid: list[int] = []

        def on_spawn(pid: int) -> None:
            pgid.append(pid)
            with self._lock:
                self._groups.add(pid)

        done = Done(job, None)
        try:
            done = self._runner.execute(job, self._cancel, on_spawn)
        finally:
            with self._lock:
                self._groups.difference_update(pgid)
            self._sink(done)

    def cancel_queued(self, partitions: Collection[PartitionKey] | None = None) -> None:
        for slot, (job, future) in list(self._futures.items()):
            if (partitions is None or job.partition in partitions) and future.cancel():
                del self._futures[slot]

    def pending(self, partitions: Collection[PartitionKey] | None = None) -> list[Job]:
        return [
            job
            for job, _ in self._futures.values()
            if partitions is None or job.partition in partitions
        ]

    def taken(self, job: Job) -> None:
        self._futures.pop(job.slot, None)

    def waiting(self) -> int:
        futures = list(self._futures.values())  # one C-level copy: the loop may add to it
        return sum(1 for _job, future in futures if not (future.running() or future.done()))

    def cancel_running(self) -> None:
        self._cancel.set()

    def kill(self) -> int:
        self._cancel.set()  # and whatever was about to start does not
        with self._lock:
            groups = list(self._groups)
        for pgid in groups:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                continue
        return len(groups)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
