"""The worker: read runs from the consumer group, execute them, commit after.

Threading model: the main thread owns the Kafka consumer (poll, offsets,
rebalance callbacks) and the worker's producer; a pool of ``concurrency``
threads runs commands. Results and delivery reports come back through one
queue, so only the main thread touches the consumer. The loop never blocks on
a job, so a ten-minute job cannot trip ``max.poll.interval.ms``; instead, the
worker pauses fetching from a partition while it holds enough of its runs and
resumes when they drain.

A run's offset is stored only once its fate is settled: it succeeded, or its
next attempt (retry topic) or its dead letter (dead-letter topic) is confirmed
by the broker. A run that is cancelled, or whose hand-off fails, stays
uncommitted and is delivered again (at-least-once). The worker reads the main
topic and its retry topic; a retry waits in memory until its ``not_before``.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import queue
import random
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import FrameType

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from kcron import executor, kafka, retry
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
    """A run came back from the pool."""

    partition: PartitionKey
    offset: int
    run: RunMessage
    result: executor.ExecResult | None  # None: cancelled before it started, or a bug
    started_at: datetime | None = None
    finished_at: datetime | None = None
    generation: int = 0  # the assignment it was taken under


@dataclass(frozen=True)
class _Delivered:
    """The broker's answer for the retry or dead letter that replaces a run."""

    partition: PartitionKey
    offset: int
    topic: str  # where the record went
    error: str | None
    generation: int = 0


_Event = _Done | _Delivered


@dataclass(order=True)
class _Held:
    """A run that arrived before it may start: dispatched ahead, or a retry in backoff."""

    start_at: datetime
    seq: int
    run: RunMessage = field(compare=False)
    partition: PartitionKey = field(compare=False)
    offset: int = field(compare=False)


# A run scheduled further ahead than this is started at once with a warning:
# holding it longer would stall its partition's commits behind it, and it most
# likely means the producer's and this worker's clocks disagree.
MAX_HOLD = timedelta(seconds=60)
# A retry's not_before is legitimately minutes ahead (the backoff cap), so
# MAX_HOLD does not apply to it; this generous bound only catches nonsense
# (a clock far off, a hand-made message) that would stall a partition for days.
MIN_BACKOFF_HOLD = timedelta(hours=1)
# A run starting this long after it was due is logged at WARNING with late=true
# and counted in kcron_runs_late_total: a frozen broker, a backlog, a slow rebalance.
LATE_AFTER = timedelta(seconds=5)
# How long a rebalance or shutdown waits for pending retries and dead letters
# to be confirmed before committing; unconfirmed ones stay uncommitted.
HANDOFF_FLUSH_S = 10.0


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
    def __init__(
        self,
        settings: Settings,
        clock: Clock = lambda: datetime.now(UTC),
        rng: random.Random | None = None,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._rng = rng or random.Random()
        self._stop = False
        self._cancel = threading.Event()  # set after the grace: kill running jobs
        self._done: queue.SimpleQueue[_Event] = queue.SimpleQueue()
        self._tracker = OffsetTracker()
        self._futures: dict[tuple[PartitionKey, int], Future[None]] = {}
        self._held: list[_Held] = []  # heap: runs waiting for their start time
        self._handoffs: dict[tuple[PartitionKey, int], str] = {}  # awaiting delivery -> topic
        self._seq = itertools.count()
        self._pool = ThreadPoolExecutor(settings.concurrency, thread_name_prefix="run")
        self._paused: set[PartitionKey] = set()
        self._assigned: set[PartitionKey] = set()
        # Bumped on every assignment: a result or delivery report from an
        # earlier one belongs to offsets this worker no longer decides about,
        # even if the same partition came back to it (Kafka redelivers those).
        self._generation = 0
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._metrics = Metrics()
        self._retry_topic = retry.retry_topic(settings.topic)
        self._dlq_topic = retry.dlq_topic(settings.topic)
        self._producer_failure: str | None = None
        self._max_backoff_hold = max(MIN_BACKOFF_HOLD, timedelta(seconds=2 * settings.retry_cap_s))
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
        kafka.ensure_worker_topics(settings)
        producer_config = kafka.worker_producer_config(settings)
        producer_config["error_cb"] = self._on_producer_error
        self._producer = Producer(producer_config)
        config = kafka.consumer_config(settings)
        config["on_commit"] = self._on_commit
        consumer = Consumer(config)
        self._consumer = consumer
        consumer.subscribe(
            [settings.topic, self._retry_topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        log.info(
            "worker started",
            extra=fields(
                group=settings.group,
                topic=settings.topic,
                retry_topic=self._retry_topic,
                dlq_topic=self._dlq_topic,
                concurrency=settings.concurrency,
                pid=os.getpid(),
            ),
        )
        # Per partition, at most --prefetch runs are taken and not yet finished;
        # held retries count against their own retry partition only, so they
        # never pause the main topic. Taken runs are handed back on rebalance.
        limit = settings.prefetch
        try:
            while not self._stop:
                self._producer.poll(0)
                if self._producer_failure is not None:
                    raise BrokerError(
                        f"fatal Kafka error in the worker's producer: {self._producer_failure}"
                    )
                self._drain_done()
                self._start_held()
                self._flow_control(limit)
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
            self._undecodable(msg, key, offset, exc)
            return
        now = self._clock()
        start_at = self._start_at(run, now)
        if start_at > now:
            heapq.heappush(self._held, _Held(start_at, next(self._seq), run, key, offset))
            return
        self._submit(run, key, offset)

    def _start_at(self, run: RunMessage, now: datetime) -> datetime:
        """When to start ``run``: its schedule, or its backoff if later, within bounds."""
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
            if not_before > now + self._max_backoff_hold:
                log.warning(
                    "retry's not_before is implausibly far ahead; starting it now "
                    "(check clock sync between workers)",
                    extra=fields(job=run.job, run=run.id, not_before=format_time(not_before)),
                )
                not_before = now
            start = max(start, not_before)
        return start

    def _undecodable(self, msg: Message, key: PartitionKey, offset: int, exc: DecodeError) -> None:
        """Not a run: dead-letter the raw bytes, commit once the broker has them."""
        self._metrics.undecodable.inc()
        self._metrics.dead_letters.labels("", retry.DeadKind.UNDECODABLE.value).inc()
        log.error(
            "undecodable message skipped",
            extra=fields(
                topic=key[0],
                partition=key[1],
                offset=offset,
                reason=exc.reason,
                excerpt=exc.excerpt(),
            ),
        )
        source = retry.Source(key[0], key[1], offset)
        record = retry.dead_letter(
            kind=retry.DeadKind.UNDECODABLE,
            reason=f"undecodable message: {exc.reason}",
            dead_at=self._clock(),
            source=source,
            raw=exc.raw,
            key=msg.key(),
        )
        log.error(
            "dead letter",
            extra=fields(
                kind=retry.DeadKind.UNDECODABLE.value,
                reason=record["reason"],
                topic=key[0],
                partition=key[1],
                offset=offset,
            ),
        )
        self._hand_off(key, offset, self._dlq_topic, msg.key(), retry.encode_dead_letter(record))

    def _submit(self, run: RunMessage, key: PartitionKey, offset: int) -> None:
        self._futures[(key, offset)] = self._pool.submit(
            self._execute, run, key, offset, self._generation
        )

    def _start_held(self) -> None:
        """Start held runs whose time has come; never sleeps."""
        now = self._clock()
        while self._held and self._held[0].start_at <= now:
            held = heapq.heappop(self._held)
            self._submit(held.run, held.partition, held.offset)

    def _poll_timeout(self) -> float:
        """Poll long when idle, briefly while runs finish or hand-offs await their
        delivery report, and wake on time for a held run."""
        timeout = 0.05 if self._futures else 0.25
        if self._handoffs:
            timeout = min(timeout, 0.02)
        if self._held:
            until = (self._held[0].start_at - self._clock()).total_seconds()
            timeout = min(timeout, max(0.0, until))
        return timeout

    def _execute(self, msg: RunMessage, key: PartitionKey, offset: int, generation: int) -> None:
        result: executor.ExecResult | None = None
        started: datetime | None = None
        finished: datetime | None = None
        try:
            if self._cancel.is_set():
                return
            started = self._clock()
            lateness = (started - msg.due).total_seconds()
            late = started - msg.due >= LATE_AFTER
            ids = {"job": msg.job, "run": msg.id}
            where = {
                "topic": key[0] if key[0] != self._settings.topic else None,
                "partition": key[1],
                "offset": offset,
            }
            if late:
                self._metrics.late.labels(msg.job).inc()
            log.log(
                logging.WARNING if late else logging.INFO,
                "run started",
                extra=fields(
                    **ids,
                    attempt=msg.attempt,
                    max_attempts=msg.max_attempts if msg.max_attempts > 1 else None,
                    scheduled_for=format_time(msg.scheduled_for),
                    not_before=format_time(msg.not_before) if msg.not_before else None,
                    lateness_ms=_ms(lateness),
                    late=True if late else None,
                    **where,
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
            finished = self._clock()
            self._metrics.runs.labels(msg.job, result.outcome.value).inc()
            self._metrics.lateness.observe(max(0.0, lateness))
            self._metrics.duration.observe(result.duration_s)
            summary = fields(
                **ids,
                outcome=result.outcome.value,
                exit_code=result.exit_code,
                attempt=msg.attempt,
                duration_ms=_ms(result.duration_s),
                lateness_ms=_ms(lateness),
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
                    extra=fields(**ids, timeout_s=msg.timeout_s),
                )
        except Exception:  # a bug here must not kill the pool thread silently
            log.exception("internal error while executing run", extra=fields(run=msg.id))
        finally:
            self._done.put(_Done(key, offset, msg, result, started, finished, generation))

    # -- after a run: commit, retry or dead-letter -------------------------------
    def _drain_done(self) -> None:
        while True:
            try:
                event = self._done.get_nowait()
            except queue.Empty:
                return
            if isinstance(event, _Delivered):
                self._delivered(event)
            else:
                self._futures.pop((event.partition, event.offset), None)
                self._settle(event)

    def _settle(self, done: _Done) -> None:
        result, run, key = done.result, done.run, done.partition
        if result is None or result.outcome is executor.Outcome.CANCELLED:
            return  # not run to the end: leave the offset for redelivery
        self.executed += 1
        if key not in self._assigned or done.generation != self._generation:
            # The partition moved while the run went on (past the grace); its
            # new owner, maybe this worker again, starts from the uncommitted
            # offset and runs it again, retries included.
            if not result.ok:
                log.warning(
                    "run failed after its partition moved; the new owner runs it again",
                    extra=fields(job=run.job, run=run.id),
                )
            return
        now = self._clock()
        finished = done.finished_at or now
        decision = retry.decide(
            run, result, finished, self._settings.retry_base_s, self._settings.retry_cap_s,
            self._rng,
        )  # fmt: skip
        if decision.verdict is retry.Verdict.SUCCEEDED:
            self._finish(key, done.offset)
            return
        attempt = retry.attempt_of(run, result, done.started_at or finished, finished)
        if decision.verdict is retry.Verdict.RETRY:
            assert decision.not_before is not None
            nxt = retry.next_attempt(run, attempt, decision.not_before, now)
            self._metrics.retries.labels(run.job).inc()
            log.warning(
                "retry scheduled",
                extra=fields(
                    job=run.job,
                    run=run.id,
                    attempt=nxt.attempt,
                    max_attempts=nxt.max_attempts,
                    not_before=format_time(decision.not_before),
                    delay_ms=_ms(decision.delay_s),
                    outcome=result.outcome.value,
                    exit_code=result.exit_code,
                ),
            )
            self._hand_off(key, done.offset, self._retry_topic, nxt.key, nxt.encode())
            return
        if decision.verdict is retry.Verdict.DEAD:
            assert decision.kind is not None
            record = retry.dead_letter(
                kind=decision.kind,
                reason=decision.reason,
                dead_at=now,
                source=retry.Source(key[0], key[1], done.offset),
                run=run,
                result=result,
                attempt=attempt,
            )
            self._metrics.dead_letters.labels(run.job, decision.kind.value).inc()
            log.error(
                "dead letter",
                extra=fields(
                    job=run.job,
                    run=run.id,
                    kind=decision.kind.value,
                    reason=decision.reason,
                    attempts=record["attempts"],
                    exit_code=result.exit_code,
                ),
            )
            value = retry.encode_dead_letter(record)
            self._hand_off(key, done.offset, self._dlq_topic, run.key, value)

    def _hand_off(
        self, key: PartitionKey, offset: int, topic: str, record_key: bytes | None, value: bytes
    ) -> None:
        """Produce the record that replaces the run at ``key``/``offset``; its
        delivery report (through the done queue) decides whether to commit."""
        producer = self._producer
        assert producer is not None

        generation = self._generation

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            # Served by producer.poll/flush on the main thread; still queued, so
            # offsets are only ever touched from one place.
            error = None if err is None else str(err)
            self._done.put(_Delivered(key, offset, topic, error, generation))

        self._handoffs[(key, offset)] = topic
        while True:
            try:
                producer.produce(topic, key=record_key, value=value, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.1)  # local queue full: wait for deliveries, never drop
            except KafkaException as exc:  # refused before sending, e.g. too large
                self._done.put(_Delivered(key, offset, topic, str(exc.args[0]), generation))
                break
        producer.poll(0)

    def _delivered(self, event: _Delivered) -> None:
        self._handoffs.pop((event.partition, event.offset), None)
        if event.error is not None:
            self._metrics.handoff_failures.labels(event.topic).inc()
            log.error(
                "retry or dead letter not delivered; the run stays uncommitted and is "
                "delivered again after a restart or rebalance",
                extra=fields(
                    to=event.topic,
                    topic=event.partition[0],
                    partition=event.partition[1],
                    offset=event.offset,
                    error=event.error,
                ),
            )
            return
        if event.generation == self._generation:
            self._finish(event.partition, event.offset)

    def _flush_handoffs(self) -> None:
        """Wait for pending retries and dead letters, so their runs can be committed."""
        producer = self._producer
        if producer is not None and len(producer):
            left = producer.flush(HANDOFF_FLUSH_S)
            if left:
                log.error(
                    "retries or dead letters still unconfirmed; their runs stay uncommitted",
                    extra=fields(pending=left),
                )
        self._drain_done()

    def _finish(self, key: PartitionKey, offset: int) -> None:
        position = self._tracker.finished(key, offset)
        if position is not None and key in self._assigned and self._consumer is not None:
            self._consumer.store_offsets(offsets=[TopicPartition(key[0], key[1], position)])

    def _flow_control(self, limit: int) -> None:
        """Pause a partition with ``limit`` runs taken and not finished (queued,
        running, held or being handed off); resume it once half are gone."""
        consumer = self._consumer
        if consumer is None or not self._assigned:
            return
        load = self._tracker.in_flight
        pause = [k for k in self._assigned - self._paused if load(k) >= limit]
        resume = [k for k in self._paused & self._assigned if load(k) <= limit // 2]
        if pause:
            consumer.pause([TopicPartition(t, p) for t, p in pause])
            self._paused.update(pause)
            log.debug("fetching paused", extra=fields(partitions=[f"{t}:{p}" for t, p in pause]))
        if resume:
            consumer.resume([TopicPartition(t, p) for t, p in resume])
            self._paused.difference_update(resume)
            log.debug("fetching resumed", extra=fields(partitions=[f"{t}:{p}" for t, p in resume]))

    def _on_producer_error(self, err: KafkaError) -> None:
        """Served by producer.poll on the main thread. A fatal error (e.g. the
        idempotent producer lost its sequence) makes every later retry and dead
        letter fail, so the worker stops instead of stalling its partitions."""
        if err.fatal():
            self._producer_failure = str(err)
            log.error("kafka error", extra=fields(error=str(err), client="producer"))
        else:
            log.warning("kafka error", extra=fields(error=str(err), client="producer"))

    # -- commits ---------------------------------------------------------------
    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if err is not None:
            if err.code() != KafkaError._NO_OFFSET:
                log.warning("commit failed", extra=fields(error=str(err)))
            return
        _log_committed(partitions)

    def _commit(self, consumer: Consumer, what: str) -> None:
        try:
            committed = consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:
                log.warning(f"{what} failed", extra=fields(error=str(exc.args[0])))
            return
        _log_committed(committed or [])

    # -- rebalance -----------------------------------------------------------
    def _split(self, keys: Iterable[PartitionKey]) -> dict[str, list[int]]:
        """Partition numbers for logs: ``partitions`` of the main topic, and of its retry topic."""
        keys = list(keys)
        return {
            "partitions": sorted(p for t, p in keys if t == self._settings.topic),
            "retry_partitions": sorted(p for t, p in keys if t == self._retry_topic),
        }

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned = {(tp.topic, tp.partition) for tp in partitions}
        self._generation += 1
        # librdkafka keeps a partition paused across a rebalance, also when it
        # comes back to this worker: one paused by flow control before would
        # never be fetched again. Assign here (else the client does it after
        # this callback) so that resume applies to the new assignment.
        consumer.assign(partitions)
        if partitions:
            consumer.resume(partitions)
        self._paused = set()
        log.info("partitions assigned", extra=fields(**self._split(self._assigned)))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = {(tp.topic, tp.partition) for tp in partitions}
        log.info("partitions revoked", extra=fields(**self._split(keys)))
        self._release(keys, wait_s=self._settings.grace_s)
        self._flush_handoffs()
        self._commit(consumer, "commit on revoke")
        self._forget(keys)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = {(tp.topic, tp.partition) for tp in partitions}
        log.warning(
            "partitions lost; their unfinished runs will be redelivered",
            extra=fields(**self._split(keys)),
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
            if self._producer is not None:
                self._producer.poll(0)
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
        self._paused -= keys

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
            self._paused = set(self._assigned)
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
        self._flush_handoffs()
        self._commit(consumer, "final commit")


def _log_committed(partitions: list[TopicPartition]) -> None:
    """DEBUG: which offsets the group now has; fault tests use it to bound duplicates."""
    if not log.isEnabledFor(logging.DEBUG):
        return
    offsets = {
        f"{tp.topic}:{tp.partition}": tp.offset
        for tp in partitions
        if tp.error is None and tp.offset >= 0
    }
    if offsets:
        log.debug("offsets committed", extra=fields(offsets=offsets))
