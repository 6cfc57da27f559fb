"""The worker: read runs from the consumer group, execute them, commit after.

Threading model: the loop's thread owns the Kafka consumer (poll, offsets,
rebalance callbacks) and the worker's producer; a pool of ``concurrency``
threads runs commands (kcron/worker/runner.py). Results and delivery reports
come back through one queue, so only the loop's thread touches Kafka. The loop
never blocks on a job, so a ten-minute job cannot trip
``max.poll.interval.ms``; instead, the worker pauses fetching from a partition
while it holds enough of its runs and resumes when they drain.

A run's offset is stored only once its fate is settled (kcron/worker/settle.py).
A run that is cancelled, or whose hand-off fails, stays uncommitted and is
delivered again (at-least-once). The worker reads the main topic and its retry
topic; a retry waits in memory until its ``not_before`` (kcron/worker/hold.py).

Each turn of the loop is one method per phase: serve the producer, take the
finished runs, start the due ones, flow control, poll one record.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import signal
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import TYPE_CHECKING

from kcron import allowlist, signing
from kcron.errors import BrokerError, DecodeError
from kcron.executor import Credentials, Outcome
from kcron.log import fields
from kcron.message import RunMessage, decode, format_time
from kcron.metrics import WorkerMetrics
from kcron.retry import retry_topic
from kcron.settings import Settings
from kcron.telemetry import start_tracing
from kcron.tracing import NO_TRACING, Tracer
from kcron.worker.courier import Courier, ThreadCourier
from kcron.worker.guard import Guard
from kcron.worker.hold import MAX_HOLD, HoldQueue, max_backoff_hold
from kcron.worker.overlap import held_for_quiet, running_run, skip
from kcron.worker.partitions import Partitions
from kcron.worker.port import ClientError, CommitResult, Connector, PartitionKey, Record
from kcron.worker.release import Crew, Releaser, log_committed
from kcron.worker.runner import LATE_AFTER, Done, Job, JobRunner, Pool, Started, ThreadPool
from kcron.worker.settle import Delivered, Hooks, Settler

if TYPE_CHECKING:
    from kcron.probe import Probe

log = logging.getLogger("kcron.worker")

Clock = Callable[[], datetime]
PoolFactory = Callable[[Callable[[Done], None]], Pool]
_Event = Done | Delivered | Started


class Worker:
    """Signals, startup and the Kafka callbacks around the Loop that does the work."""

    def __init__(
        self,
        settings: Settings,
        clock: Clock = lambda: datetime.now(UTC),
        rng: random.Random | None = None,
        *,
        connector: Connector | None = None,
        pool: PoolFactory | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        run_as: Credentials | None = None,
        tracer: Tracer | None = None,
        courier: Courier | None = None,
    ) -> None:
        self._settings = settings
        self._courier = courier  # run events' thread; None: a ThreadCourier of its own
        # Off (no-op hooks, no opentelemetry loaded) unless OTEL_* turned it on.
        self._tracer = tracer or start_tracing(settings.tracing, "kcron-worker")
        self._run_as = run_as  # whom jobs run as (kcron/runas.py); None: this process's user
        self._clock = clock
        self._rng = rng or random.Random()
        self._monotonic = monotonic
        self._connector = connector
        self._pool_factory = pool
        # Set by the signal handler, read by the loop: plain attributes, no locks.
        self._stop_signal: int | None = None  # first SIGTERM/SIGINT: graceful stop
        self._kill_signal: int | None = None  # a second one: stop at once
        self.metrics = WorkerMetrics(settings.topic, settings.metrics_max_jobs)
        self._partitions = Partitions(settings.topic, retry_topic(settings.topic))
        self._producer_failure: str | None = None
        self._settler: Settler | None = None
        self._releaser: Releaser | None = None
        self._probe: Probe | None = None
        # Read now, so a bad key file or allow-list stops the worker before it connects.
        max_age = settings.max_run_age_s
        self._guard = Guard(
            settings.topic,
            signing.load_optional(settings.signing_key_file),
            allowlist.load_optional(settings.allow_commands),
            None if max_age is None else timedelta(seconds=max_age),
        )

    @property
    def executed(self) -> int:
        return self._settler.executed if self._settler is not None else 0

    # -- signals: only set flags -------------------------------------------
    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self._stop_signal is None:
            self._stop_signal = signum
        else:
            self._kill_signal = signum

    def run(self) -> int:
        """Run until SIGTERM or SIGINT: 0 after a graceful stop, 128+signal after a second one."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            return self._run()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            if self._kill_signal is None:  # exporting may wait for a collector
                self._tracer.shutdown()  # exports the spans still buffered

    def _run(self) -> int:
        loop, releaser, crew = self._start()
        try:
            while self._stop_signal is None:
                crew.producer.poll(0)  # delivery reports, and errors such as a fatal one
                if self._producer_failure is not None:
                    raise BrokerError(
                        f"fatal Kafka error in the worker's producer: {self._producer_failure}"
                    )
                loop.turn()
            halted_by = releaser.shutdown()
        finally:
            if self._probe is not None:
                self._probe.stop()
            crew.consumer.close()
            crew.pool.close()
            self._courier_of().close()
        if halted_by is not None:
            return 128 + halted_by
        log.info("worker stopped", extra=fields(executed=self.executed))
        return 0

    def _start(self) -> tuple[Loop, Releaser, Crew]:
        settings = self._settings
        if settings.served_metrics_port:
            self.metrics.serve(settings.served_metrics_port, settings.metrics_addr)
            from kcron.probe import Probe  # Kafka side, like the connector below

            self._probe = Probe(settings, self.metrics).start()
        connector = self._connector
        if connector is None:
            from kcron.worker.confluent import ConfluentConnector  # the only Kafka client

            connector = ConfluentConnector(settings)
        topics = [settings.topic, retry_topic(settings.topic)]
        consumer, producer = connector.connect(topics, self)
        events: queue.SimpleQueue[_Event] = queue.SimpleQueue()
        parts = self._partitions

        def finish(key: PartitionKey, offset: int) -> None:
            position = parts.finished(key, offset)
            if position is not None:
                consumer.store_offset(key, position)

        hooks = Hooks(parts.owns, lambda: parts.generation, finish, events.put)
        keys = self._guard.keys
        settler = Settler(
            settings, producer, hooks, self.metrics, self._clock, self._rng, keys, self._tracer,
            self._courier_of(),
        )  # fmt: skip
        self._settler = settler
        pool = self._make_pool(events.put, events.put)
        crew = Crew(settings, consumer, producer, settler, pool, parts, HoldQueue(), self._killed)
        loop = Loop(crew, events, self._clock, self._guard, self.metrics, self._tracer)
        self._watch_load(crew)
        self._releaser = Releaser(crew, loop.drain, self._monotonic)
        _log_started(settings, settler)
        if keys is None:
            log.warning(
                f"no signing key: any writer to {settings.topic} or {settler.retry_topic} "
                "can run commands on this worker",
                extra=fields(topic=settings.topic),
            )
        return loop, self._releaser, crew

    def _courier_of(self) -> Courier:
        if self._courier is None:
            self._courier = ThreadCourier()
        return self._courier

    def _watch_load(self, crew: Crew) -> None:
        """Gauges read at scrape time, from the metrics server's thread: lengths only."""
        self.metrics.slots.set(self._settings.concurrency)
        self.metrics.partitions.set_function(lambda: len(crew.partitions.assigned))
        self.metrics.waiting.set_function(lambda: len(crew.hold) + crew.pool.waiting())

    def _killed(self) -> int | None:
        return self._kill_signal

    def _make_pool(self, sink: Callable[[Done], None], on_start: Callable[[Started], None]) -> Pool:
        if self._pool_factory is not None:
            return self._pool_factory(sink)
        s = self._settings
        runner = JobRunner(
            s.max_output_bytes, s.topic, self.metrics, self._clock, self._run_as, on_start
        )
        return ThreadPool(runner, s.concurrency, sink)

    # -- port.Listener: called back by the consumer and producer on this thread -----
    def on_producer_error(self, text: str, fatal: bool) -> None:
        """A fatal error (e.g. the idempotent producer lost its sequence) makes every
        later retry and dead letter fail, so the worker stops instead of stalling."""
        if fatal:
            self._producer_failure = text
            log.error("kafka error", extra=fields(error=text, client="producer"))
        else:
            log.warning("kafka error", extra=fields(error=text, client="producer"))

    def on_commit(self, result: CommitResult) -> None:
        if result.error is not None:
            log.warning("commit failed", extra=fields(error=result.error))
        else:
            log_committed(result.offsets)

    def on_assign(self, keys: Sequence[PartitionKey]) -> None:
        self._released().on_assign(keys, self._clock())

    def on_revoke(self, keys: Sequence[PartitionKey]) -> None:
        self._released().on_revoke(keys)

    def on_lost(self, keys: Sequence[PartitionKey]) -> None:
        self._released().on_lost(keys)

    def _released(self) -> Releaser:
        assert self._releaser is not None, "rebalance callbacks come only from poll"
        return self._releaser


def _log_started(settings: Settings, settler: Settler) -> None:
    log.info(
        "worker started",
        extra=fields(
            group=settings.consumer_group,
            topic=settings.topic,
            retry_topic=settler.retry_topic,
            dlq_topic=settler.dlq_topic,
            events_topic=settler.events_topic,
            concurrency=settings.concurrency,
            pid=os.getpid(),
        ),
    )


def _count_start(metrics: WorkerMetrics, event: Started) -> None:
    lateness = event.lateness_ms / 1000
    metrics.started(event.job.run.job, lateness, lateness >= LATE_AFTER.total_seconds())


def _count_end(metrics: WorkerMetrics, done: Done) -> None:
    """A run that ended, counted here on the loop's thread, where the fake Kafka of
    the unit tests sees it too (skipped runs: overlap.skip; never started: not at all)."""
    result = done.result
    if result is None or result.outcome is Outcome.SKIPPED:
        return
    ended = done.finished_at.timestamp() if result.ok and done.finished_at else None
    metrics.finished(done.job.run.job, result.outcome.value, result.duration_s, ended)


def start_at(run: RunMessage, now: datetime, backoff_hold: timedelta) -> datetime:
    """When to start ``run``: its schedule, or its backoff if later, within bounds.

    Logs a warning when a bound applies (the only effect here).
    """
    start = run.scheduled_for
    if start > now + MAX_HOLD:
        log.warning(
            "run scheduled far ahead of this worker's clock; starting it now "
            "(check clock sync between producer and workers)",
            extra=fields(job=run.job, run=run.id, scheduled_for=format_time(start)),
        )
        start = now
    if run.not_before is not None:
        not_before = run.not_before
        if not_before > now + backoff_hold:
            log.warning(
                "retry's not_before is implausibly far ahead; starting it now "
                "(check clock sync between workers)",
                extra=fields(job=run.job, run=run.id, not_before=format_time(not_before)),
            )
            not_before = now
        start = max(start, not_before)
    return start


class Loop:
    """One turn per call (after the Worker served the producer): settle what came
    back, start the due runs, flow control, take one record."""

    def __init__(
        self,
        crew: Crew,
        events: queue.SimpleQueue[_Event],
        clock: Clock,
        guard: Guard | None = None,
        metrics: WorkerMetrics | None = None,
        tracer: Tracer = NO_TRACING,
    ) -> None:
        self._crew = crew
        self._tracer = tracer
        self._guard = guard or Guard(crew.settings.topic)
        self._events = events
        self._clock = clock
        self._metrics = metrics or WorkerMetrics(crew.settings.topic)
        self._backoff_hold: timedelta = max_backoff_hold(crew.settings.retry_cap_s)

    def turn(self) -> None:
        crew = self._crew
        self.drain()
        self._start_due()
        self._flow_control()
        item = crew.consumer.poll(self._poll_timeout())
        if isinstance(item, ClientError):
            level = logging.ERROR if item.fatal else logging.WARNING
            log.log(level, "kafka error", extra=fields(error=item.text))
            if item.fatal:
                raise BrokerError(f"fatal Kafka error, worker cannot continue: {item.text}")
        elif item is not None:
            self._take(item)

    def _take(self, record: Record) -> None:
        key, parts = record.where, self._crew.partitions
        parts.taken(key, record.offset)
        try:
            run = decode(record.value)
        except DecodeError as exc:
            self._crew.settler.undecodable(record, exc)
            return
        refusal = self._guard.check(record.value, run, self._clock())
        if refusal is not None:
            self._crew.settler.rejected(record, run, refusal)
            return
        self._metrics.job(run.job)  # a new job's succeeded and failed start at 0, now
        if run.queue is not None and run.queue != self._crew.settings.topic:
            # A hand-produced or copied message: the topic routed it here, and
            # refusing it would only turn a routing slip into a dead letter.
            log.warning(
                "run belongs to another queue; running it here, where its topic sent it",
                extra=fields(job=run.job, run=run.id, queue=run.queue, topic=key[0]),
            )
        now = self._clock()
        trace = self._tracer.taken(record.headers, now)
        job = Job(run, key, record.offset, parts.generation, trace)
        when = start_at(run, now, self._backoff_hold)
        quiet = self._crew.partitions.quiet_until(key) if run.forbids_overlap else None
        if quiet is not None and quiet > when:
            held_for_quiet(job, quiet)
            when = quiet
        if when > now:
            self._crew.hold.push(when, job)
        else:
            self._start(job)

    def _start_due(self) -> None:
        """Start held runs whose time has come; never sleeps."""
        for job in self._crew.hold.due(self._clock()):
            self._start(job)

    def _start(self, job: Job) -> None:
        """Hand ``job`` to the pool, or settle it as skipped (overlap=forbid)."""
        crew = self._crew
        if job.run.forbids_overlap:
            running = running_run(job, crew.pool.pending())
            if running is not None:
                self.drain()  # it may have just finished, its result still queued
                running = running_run(job, crew.pool.pending())
            if running is not None:
                now = self._clock()
                done = skip(job, running, now, crew.settings.topic, self._metrics)
                crew.settler.settle(done)
                return
        crew.pool.submit(job)

    def _flow_control(self) -> None:
        """Pause a partition with --prefetch runs taken and not finished; resume it
        once half are gone. Taken runs are handed back on rebalance."""
        crew = self._crew
        if not crew.partitions.assigned:
            return
        pause, resume = crew.partitions.flow(crew.settings.prefetch)
        if pause:
            crew.consumer.pause(pause)
            log.debug("fetching paused", extra=fields(partitions=[f"{t}:{p}" for t, p in pause]))
        if resume:
            crew.consumer.resume(resume)
            log.debug("fetching resumed", extra=fields(partitions=[f"{t}:{p}" for t, p in resume]))

    def _poll_timeout(self) -> float:
        """Poll long when idle, briefly while runs finish or hand-offs await their
        delivery report, and wake on time for a held run."""
        timeout = 0.05 if self._crew.pool.busy() else 0.25
        if self._crew.settler.handoffs:
            timeout = min(timeout, 0.02)
        next_at = self._crew.hold.next_at()
        if next_at is not None:
            timeout = min(timeout, max(0.0, (next_at - self._clock()).total_seconds()))
        return timeout

    def drain(self) -> None:
        """Settle what came back: finished runs and hand-off delivery reports."""
        crew = self._crew
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return
            if isinstance(event, Delivered):
                crew.settler.delivered(event)
                continue
            if isinstance(event, Started):
                _count_start(self._metrics, event)
                crew.settler.started(event)
                continue
            crew.pool.taken(event.job)
            _count_end(self._metrics, event)
            if crew.kill_signal() is None:  # killed runs are never committed
                crew.settler.settle(event)
