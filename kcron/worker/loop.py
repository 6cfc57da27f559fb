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
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from types import FrameType
from typing import Any

from kcron.errors import BrokerError, DecodeError
from kcron.log import fields
from kcron.message import decode
from kcron.metrics import Metrics
from kcron.retry import retry_topic
from kcron.settings import Settings
from kcron.worker.hold import HoldQueue, max_backoff_hold, start_at
from kcron.worker.partitions import Partitions
from kcron.worker.port import (
    ClientError,
    CommitResult,
    Connector,
    ConsumerPort,
    PartitionKey,
    ProducerPort,
    Record,
)
from kcron.worker.runner import Done, Job, JobRunner, Pool, ThreadPool
from kcron.worker.settle import Delivered, Hooks, Settler

log = logging.getLogger("kcron.worker")

Clock = Callable[[], datetime]
PoolFactory = Callable[[Callable[[Done], None]], Pool]
_Event = Done | Delivered

# How long a rebalance or shutdown waits for pending retries and dead letters
# to be confirmed before committing; unconfirmed ones stay uncommitted.
HANDOFF_FLUSH_S = 10.0


class Worker:
    def __init__(
        self,
        settings: Settings,
        clock: Clock = lambda: datetime.now(UTC),
        rng: random.Random | None = None,
        *,
        connector: Connector | None = None,
        pool: PoolFactory | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._rng = rng or random.Random()
        self._monotonic = monotonic
        self._connector = connector
        self._pool_factory = pool
        # Set by the signal handler, read by the loop: plain attributes, no locks.
        self._stop_signal: int | None = None  # first SIGTERM/SIGINT: graceful stop
        self._kill_signal: int | None = None  # a second one: stop at once
        self._events: queue.SimpleQueue[_Event] = queue.SimpleQueue()
        self.metrics = Metrics()
        self._partitions = Partitions(settings.topic, retry_topic(settings.topic))
        self._hold = HoldQueue()
        self._backoff_hold = max_backoff_hold(settings.retry_cap_s)
        self._producer_failure: str | None = None
        self._consumer: ConsumerPort | None = None
        self._producer: ProducerPort | None = None
        self._settler: Settler | None = None
        self._pool: Pool | None = None

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

    # -- the loop -------------------------------------------------------------
    def _run(self) -> int:
        consumer, pool = self._start()
        try:
            while self._stop_signal is None:
                self._turn(consumer)
            self._shutdown(consumer)
        finally:
            consumer.close()
            pool.close()
        if self._kill_signal is not None:
            return 128 + self._kill_signal
        log.info("worker stopped", extra=fields(executed=self.executed))
        return 0

    def _start(self) -> tuple[ConsumerPort, Pool]:
        settings = self._settings
        if settings.metrics_port:
            self.metrics.serve(settings.metrics_port, settings.metrics_addr)
        connector = self._connector
        if connector is None:
            from kcron.worker.confluent import ConfluentConnector  # the only Kafka client

            connector = ConfluentConnector(settings)
        topics = [settings.topic, retry_topic(settings.topic)]
        consumer, producer = connector.connect(topics, self)
        self._consumer, self._producer = consumer, producer
        hooks = Hooks(self._partitions.owns, self._generation, self._finish, self._events.put)
        self._settler = Settler(settings, producer, hooks, self.metrics, self._clock, self._rng)
        self._pool = self._make_pool()
        log.info(
            "worker started",
            extra=fields(
                group=settings.group,
                topic=settings.topic,
                retry_topic=self._settler.retry_topic,
                dlq_topic=self._settler.dlq_topic,
                concurrency=settings.concurrency,
                pid=os.getpid(),
            ),
        )
        return consumer, self._pool

    def _make_pool(self) -> Pool:
        if self._pool_factory is not None:
            return self._pool_factory(self._events.put)
        s = self._settings
        runner = JobRunner(s.max_output_bytes, s.topic, self.metrics, self._clock)
        return ThreadPool(runner, s.concurrency, self._events.put)

    def _turn(self, consumer: ConsumerPort) -> None:
        self._served().poll(0)
        if self._producer_failure is not None:
            raise BrokerError(
                f"fatal Kafka error in the worker's producer: {self._producer_failure}"
            )
        self._drain()
        self._start_due()
        self._flow_control(consumer)
        item = consumer.poll(self._poll_timeout())
        if isinstance(item, ClientError):
            level = logging.ERROR if item.fatal else logging.WARNING
            log.log(level, "kafka error", extra=fields(error=item.text))
            if item.fatal:
                raise BrokerError(f"fatal Kafka error, worker cannot continue: {item.text}")
        elif item is not None:
            self._take(item)

    def _take(self, record: Record) -> None:
        key = record.where
        self._partitions.taken(key, record.offset)
        try:
            run = decode(record.value)
        except DecodeError as exc:
            self._settled().undecodable(record, exc)
            return
        job = Job(run, key, record.offset, self._partitions.generation)
        now = self._clock()
        when = start_at(run, now, self._backoff_hold)
        if when > now:
            self._hold.push(when, job)
        else:
            self._pooled().submit(job)

    def _start_due(self) -> None:
        """Start held runs whose time has come; never sleeps."""
        for job in self._hold.due(self._clock()):
            self._pooled().submit(job)

    def _flow_control(self, consumer: ConsumerPort) -> None:
        """Pause a partition with --prefetch runs taken and not finished; resume it
        once half are gone. Taken runs are handed back on rebalance."""
        if not self._partitions.assigned:
            return
        pause, resume = self._partitions.flow(self._settings.prefetch)
        if pause:
            consumer.pause(pause)
            log.debug("fetching paused", extra=fields(partitions=[f"{t}:{p}" for t, p in pause]))
        if resume:
            consumer.resume(resume)
            log.debug("fetching resumed", extra=fields(partitions=[f"{t}:{p}" for t, p in resume]))

    def _poll_timeout(self) -> float:
        """Poll long when idle, briefly while runs finish or hand-offs await their
        delivery report, and wake on time for a held run."""
        timeout = 0.05 if self._pooled().pending() else 0.25
        if self._settled().handoffs:
            timeout = min(timeout, 0.02)
        next_at = self._hold.next_at()
        if next_at is not None:
            timeout = min(timeout, max(0.0, (next_at - self._clock()).total_seconds()))
        return timeout

    def _drain(self) -> None:
        """Settle what came back: finished runs and hand-off delivery reports."""
        settler, pool = self._settled(), self._pooled()
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return
            if isinstance(event, Delivered):
                settler.delivered(event)
                continue
            pool.taken(event.job)
            if self._kill_signal is None:  # killed runs are never committed
                settler.settle(event)

    def _generation(self) -> int:
        return self._partitions.generation

    def _finish(self, key: PartitionKey, offset: int) -> None:
        position = self._partitions.finished(key, offset)
        if position is not None and self._consumer is not None:
            self._consumer.store_offset(key, position)

    # -- Listener: called back by the consumer and producer on this thread --------
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
            _log_committed(result.offsets)

    def on_assign(self, keys: Sequence[PartitionKey]) -> None:
        self._partitions.assign(keys)
        log.info(
            "partitions assigned",
            extra=fields(**self._partitions.split(self._partitions.assigned)),
        )

    def on_revoke(self, keys: Sequence[PartitionKey]) -> None:
        moved = set(keys)
        log.info("partitions revoked", extra=fields(**self._partitions.split(moved)))
        self._release(moved, wait_s=self._settings.grace_s)
        if self._kill_signal is None:
            self._settled().flush(HANDOFF_FLUSH_S)
            self._drain()
            self._commit("commit on revoke")
        self._partitions.forget(moved)

    def on_lost(self, keys: Sequence[PartitionKey]) -> None:
        lost = set(keys)
        log.warning(
            "partitions lost; their unfinished runs will be redelivered",
            extra=fields(**self._partitions.split(lost)),
        )
        self._release(lost, wait_s=0)
        self._partitions.forget(lost)

    def _release(self, keys: set[PartitionKey], wait_s: float) -> None:
        """Hand back queued runs of ``keys``; give running ones ``wait_s`` to finish."""
        pool = self._pooled()
        self._hold.drop(keys)
        pool.cancel_queued(keys)
        deadline = self._monotonic() + wait_s
        while pool.pending(keys) and self._monotonic() < deadline and self._kill_signal is None:
            self._drain()
            self._served().poll(0.01)  # hand-off reports; also the pause between checks
        self._drain()
        still = [f"{job.partition[1]}@{job.offset}" for job in pool.pending(keys)]
        if still:
            log.warning(
                "runs still going on a moved partition; the new owner may run them again",
                extra=fields(runs=still),
            )

    def _commit(self, what: str) -> None:
        assert self._consumer is not None
        result = self._consumer.commit()
        if result.error is not None:
            log.warning(f"{what} failed", extra=fields(error=result.error))
            return
        _log_committed(result.offsets)

    # -- shutdown --------------------------------------------------------------
    def _shutdown(self, consumer: ConsumerPort) -> None:
        """Stop taking runs, let running ones finish within the grace, commit.

        A second signal on the way ends it at once: running jobs are killed
        and nothing is committed for them, so they are delivered again.
        """
        pool = self._pooled()
        self._hold.clear()  # not started: left uncommitted, so redelivered
        pool.cancel_queued()
        grace_s = self._settings.grace_s
        log.info("shutting down", extra=fields(running=len(pool.pending()), grace_s=grace_s))
        if self._partitions.assigned:
            consumer.pause(self._partitions.pause_all())
        deadline = self._monotonic() + grace_s
        while pool.pending() and self._monotonic() < deadline and self._kill_signal is None:
            consumer.poll(0.05)  # keeps group membership alive while jobs finish
            self._drain()
        if pool.pending() and self._kill_signal is None:
            log.warning(
                "grace period over; killing running jobs, they will be redelivered",
                extra=fields(runs=len(pool.pending())),
            )
            pool.cancel_running()
            while pool.pending() and self._kill_signal is None:
                consumer.poll(0.05)
                self._drain()
        if self._kill_signal is not None:
            self._halt(pool)
            return
        self._settled().flush(HANDOFF_FLUSH_S)
        self._drain()
        self._commit("final commit")

    def _halt(self, pool: Pool) -> None:
        killed = pool.kill()
        assert self._kill_signal is not None
        log.warning(
            "second signal: stopping now; running runs killed, not committed",
            extra=fields(signal=signal.Signals(self._kill_signal).name, killed=killed),
        )

    # -- collaborators, which exist once the worker has started -------------------
    def _served(self) -> ProducerPort:
        assert self._producer is not None
        return self._producer

    def _settled(self) -> Settler:
        assert self._settler is not None
        return self._settler

    def _pooled(self) -> Pool:
        assert self._pool is not None
        return self._pool


def _log_committed(offsets: Mapping[PartitionKey, int]) -> None:
    """DEBUG: which offsets the group now has; fault tests use it to bound duplicates."""
    if not log.isEnabledFor(logging.DEBUG):
        return
    shown: dict[str, Any] = {f"{t}:{p}": o for (t, p), o in offsets.items() if o >= 0}
    if shown:
        log.debug("offsets committed", extra=fields(offsets=shown))
