"""The worker: read runs from the consumer group, execute them, commit after.

Threading model: the main thread owns the Kafka consumer (poll, offsets,
rebalance callbacks); a pool of ``concurrency`` threads runs commands. Results
come back through a queue, so only the main thread touches the consumer.
The loop never blocks on a job, so a ten-minute job cannot trip
``max.poll.interval.ms``; instead, the worker pauses fetching while it has
enough runs queued and resumes when slots free up.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import FrameType

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from kcron import executor, kafka
from kcron.errors import BrokerError, DecodeError
from kcron.log import fields
from kcron.message import RunMessage, decode, format_time
from kcron.metrics import Metrics
from kcron.offsets import OffsetTracker
from kcron.settings import Settings

log = logging.getLogger("kcron.worker")
job_log = logging.getLogger("kcron.job")

Clock = Callable[[], datetime]
PartitionKey = tuple[str, int]


@dataclass(frozen=True)
class _Done:
    partition: PartitionKey
    offset: int
    result: executor.ExecResult | None  # None: the run was cancelled before it started


@dataclass(order=True)
class _Held:
    """A run that arrived before its scheduled time (the producer dispatches ahead)."""

    start_at: datetime
    seq: int
    run: RunMessage = field(compare=False)
    partition: PartitionKey = field(compare=False)
    offset: int = field(compare=False)


# A run scheduled further ahead than this is started at once with a warning:
# holding it longer would stall its partition's commits behind it, and it most
# likely means the producer's and this worker's clocks disagree.
MAX_HOLD = timedelta(seconds=60)


def run_environment(msg: RunMessage, base: Mapping[str, str]) -> dict[str, str]:
    """The job's environment: the worker's own plus the run's identity."""
    env = dict(base)
    env.update(
        KCRON_RUN_ID=msg.id,
        KCRON_JOB=msg.job,
        KCRON_SCHEDULED_FOR=format_time(msg.scheduled_for),
        KCRON_ATTEMPT=str(msg.attempt),
        KCRON_MAX_ATTEMPTS=str(msg.max_attempts),
    )
    return env


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


class Worker:
    def __init__(self, settings: Settings, clock: Clock = lambda: datetime.now(UTC)) -> None:
        self._settings = settings
        self._clock = clock
        self._stop = False
        self._cancel = threading.Event()  # set after the grace: kill running jobs
        self._done: queue.SimpleQueue[_Done] = queue.SimpleQueue()
        self._tracker = OffsetTracker()
        self._futures: dict[tuple[PartitionKey, int], Future[None]] = {}
        self._held: list[_Held] = []  # heap: runs waiting for their scheduled time
        self._seq = itertools.count()
        self._pool = ThreadPoolExecutor(settings.concurrency, thread_name_prefix="run")
        self._paused = False
        self._assigned: set[PartitionKey] = set()
        self._consumer: Consumer | None = None
        self._metrics = Metrics()
        self.executed = 0

    # -- signals: only set flags -------------------------------------------
    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._stop = True

    def request_stop(self) -> None:
        self._stop = True

    # -- main loop ----------------------------------------------------------
    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        settings = self._settings
        if settings.metrics_port:
            self._metrics.serve(settings.metrics_port, settings.metrics_addr)
        kafka.wait_for_broker(settings)
        kafka.ensure_topic(settings)
        consumer = Consumer(kafka.consumer_config(settings))
        self._consumer = consumer
        consumer.subscribe(
            [settings.topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        log.info(
            "worker started",
            extra=fields(
                group=settings.group,
                topic=settings.topic,
                concurrency=settings.concurrency,
                pid=os.getpid(),
            ),
        )
        # Prefetch a few runs beyond the running ones, so a finished slot refills
        # without a fetch round trip; queued runs are handed back on rebalance.
        max_queued = settings.concurrency * 2 + 30
        try:
            while not self._stop:
                self._drain_done()
                self._start_held()
                queued = len(self._futures) + len(self._held)
                self._flow_control(queued >= max_queued)
                msg = consumer.poll(self._poll_timeout())
                if msg is not None:
                    self._handle(msg)
            self._shutdown()
        finally:
            consumer.close()
            self._pool.shutdown(wait=False, cancel_futures=True)
        log.info("worker stopped", extra=fields(executed=self.executed))
        return 0

    def _handle(self, msg: Message) -> None:
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                return
            level = logging.ERROR if err.fatal() else logging.WARNING
            log.log(level, "kafka error", extra=fields(error=str(err)))
            if err.fatal():
                raise BrokerError(f"fatal Kafka error, worker cannot continue: {err}")
            return
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        if topic is None or partition is None or offset is None:
            return  # only error events lack these, and those returned above
        key: PartitionKey = (topic, partition)
        self._tracker.taken(key, offset)
        try:
            run = decode(msg.value())
        except DecodeError as exc:
            self._metrics.undecodable.inc()
            log.error(
                "undecodable message skipped",
                extra=fields(
                    partition=msg.partition(),
                    offset=offset,
                    reason=exc.reason,
                    excerpt=exc.excerpt(),
                ),
            )
            self._finish(key, offset)
            return
        now = self._clock()
        if run.scheduled_for > now + MAX_HOLD:
            log.warning(
                "run scheduled far ahead of this worker's clock; starting it now "
                "(check clock sync between producer and workers)",
                extra=fields(job=run.job, run=run.id, scheduled_for=format_time(run.scheduled_for)),
            )
        elif run.scheduled_for > now:
            heapq.heappush(self._held, _Held(run.scheduled_for, next(self._seq), run, key, offset))
            return
        self._submit(run, key, offset)

    def _submit(self, run: RunMessage, key: PartitionKey, offset: int) -> None:
        self._futures[(key, offset)] = self._pool.submit(self._execute, run, key, offset)

    def _start_held(self) -> None:
        """Start held runs whose time has come; never sleeps."""
        now = self._clock()
        while self._held and self._held[0].start_at <= now:
            held = heapq.heappop(self._held)
            self._submit(held.run, held.partition, held.offset)

    def _poll_timeout(self) -> float:
        """Poll long when idle, briefly while runs finish, and wake on time for a held run."""
        timeout = 0.05 if self._futures else 0.25
        if self._held:
            until = (self._held[0].start_at - self._clock()).total_seconds()
            timeout = min(timeout, max(0.0, until))
        return timeout

    def _execute(self, msg: RunMessage, key: PartitionKey, offset: int) -> None:
        result: executor.ExecResult | None = None
        try:
            if self._cancel.is_set():
                return
            started = self._clock()
            lateness = (started - msg.scheduled_for).total_seconds()
            ids = {"job": msg.job, "run": msg.id}
            log.info(
                "run started",
                extra=fields(
                    **ids,
                    attempt=msg.attempt,
                    scheduled_for=format_time(msg.scheduled_for),
                    lateness_ms=_ms(lateness),
                    partition=key[1],
                    offset=offset,
                ),
            )

            def on_line(stream: str, line: str) -> None:
                level = logging.WARNING if stream == "stderr" else logging.INFO
                job_log.log(level, line, extra=fields(**ids, stream=stream))

            spec = executor.ExecSpec(
                command=msg.command,
                shell=msg.shell,
                timeout_s=msg.timeout_s,
                env=run_environment(msg, os.environ),
            )
            self._metrics.running.inc()
            try:
                result = executor.run(
                    spec,
                    on_line,
                    max_output_bytes=self._settings.max_output_bytes,
                    cancel=self._cancel,
                )
            finally:
                self._metrics.running.dec()
            self._metrics.runs.labels(msg.job, result.outcome.value).inc()
            self._metrics.lateness.observe(max(0.0, lateness))
            self._metrics.duration.observe(result.duration_s)
            summary = fields(
                **ids,
                outcome=result.outcome.value,
                exit_code=result.exit_code,
                duration_ms=_ms(result.duration_s),
                lateness_ms=_ms(lateness),
                output_bytes=result.output_bytes,
                output_truncated=result.output_truncated or None,
                error=result.error,
                partition=key[1],
                offset=offset,
            )
            if result.ok:
                log.info("run succeeded", extra=summary)
            else:
                log.error("run failed", extra=summary)
        except Exception:  # a bug here must not kill the pool thread silently
            log.exception("internal error while executing run", extra=fields(run=msg.id))
        finally:
            self._done.put(_Done(key, offset, result))

    def _drain_done(self) -> None:
        while True:
            try:
                done = self._done.get_nowait()
            except queue.Empty:
                return
            self._futures.pop((done.partition, done.offset), None)
            if done.result is None or done.result.outcome is executor.Outcome.CANCELLED:
                continue  # not run to the end: leave the offset for redelivery
            self.executed += 1
            self._finish(done.partition, done.offset)

    def _finish(self, key: PartitionKey, offset: int) -> None:
        position = self._tracker.finished(key, offset)
        if position is not None and key in self._assigned and self._consumer is not None:
            self._consumer.store_offsets(offsets=[TopicPartition(key[0], key[1], position)])

    def _flow_control(self, full: bool) -> None:
        consumer = self._consumer
        if consumer is None or full == self._paused:
            return
        parts = [TopicPartition(t, p) for t, p in self._assigned]
        if not parts:
            return
        if full:
            consumer.pause(parts)
        else:
            consumer.resume(parts)
        self._paused = full

    # -- rebalance -----------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned = {(tp.topic, tp.partition) for tp in partitions}
        self._paused = False
        log.info(
            "partitions assigned", extra=fields(partitions=sorted(p for _, p in self._assigned))
        )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = {(tp.topic, tp.partition) for tp in partitions}
        log.info("partitions revoked", extra=fields(partitions=sorted(p for _, p in keys)))
        self._release(keys, wait_s=self._settings.grace_s)
        try:
            consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:
                log.warning("commit on revoke failed", extra=fields(error=str(exc.args[0])))
        self._forget(keys)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = {(tp.topic, tp.partition) for tp in partitions}
        log.warning(
            "partitions lost; their unfinished runs will be redelivered",
            extra=fields(partitions=sorted(p for _, p in keys)),
        )
        self._release(keys, wait_s=0)
        self._forget(keys)

    def _release(self, keys: set[PartitionKey], wait_s: float) -> None:
        """Hand back queued runs of ``keys``; give running ones ``wait_s`` to finish."""
        self._held = [h for h in self._held if h.partition not in keys]
        heapq.heapify(self._held)
        for (key, _offset), future in list(self._futures.items()):
            if key in keys and future.cancel():
                self._futures.pop((key, _offset), None)
        deadline = time.monotonic() + wait_s
        while any(k in keys for k, _ in self._futures) and time.monotonic() < deadline:
            self._drain_done()
            time.sleep(0.01)
        self._drain_done()
        still = [f"{k[1]}@{o}" for k, o in self._futures if k in keys]
        if still:
            log.warning(
                "runs still going on a moved partition; the new owner may run them again",
                extra=fields(runs=still),
            )

    def _forget(self, keys: set[PartitionKey]) -> None:
        for key in keys:
            self._tracker.forget(key)
        self._assigned -= keys
        self._paused = False

    # -- shutdown --------------------------------------------------------------
    def _shutdown(self) -> None:
        """Stop taking runs, let running ones finish within the grace, commit."""
        consumer = self._consumer
        assert consumer is not None
        self._held.clear()  # not started: left uncommitted, so redelivered
        for (key, offset), future in list(self._futures.items()):
            if future.cancel():
                self._futures.pop((key, offset), None)
        running = len(self._futures)
        log.info("shutting down", extra=fields(running=running, grace_s=self._settings.grace_s))
        if self._assigned:
            consumer.pause([TopicPartition(t, p) for t, p in self._assigned])
        deadline = time.monotonic() + self._settings.grace_s
        while self._futures and time.monotonic() < deadline:
            consumer.poll(0.05)  # keeps group membership alive while jobs finish
            self._drain_done()
        if self._futures:
            log.warning(
                "grace period over; killing running jobs, they will be redelivered",
                extra=fields(runs=len(self._futures)),
            )
            self._cancel.set()
            while self._futures:
                consumer.poll(0.05)
                self._drain_done()
        try:
            consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:
                log.warning("final commit failed", extra=fields(error=str(exc.args[0])))
