"""The scheduler: job file in, one Kafka message per due run out."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from kcron import jobfile, kafka, misfire
from kcron.errors import BrokerError, FencedError, JobFileError, KcronError
from kcron.jobfile import Job
from kcron.log import fields
from kcron.message import RunMessage, format_time, new_run_id
from kcron.metrics import Metrics
from kcron.schedule import Run, Scheduler
from kcron.settings import Settings

log = logging.getLogger("kcron.producer")

FLUSH_TIMEOUT_S = 30.0
# Upper bound on one sleep, so a wall-clock jump or a changed file is noticed soon.
MAX_SLEEP_S = 1.0
TXN_TIMEOUT_S = 30.0
TXN_ATTEMPTS = 5
# How long the state topic must stay quiet before its end is taken as reached.
STATE_QUIET_S = 1.5
STATE_BATCH = 1000  # state records read per call

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def build_message(run: Run, produced_at: datetime) -> RunMessage:
    job = run.job
    return RunMessage(
        id=new_run_id(),
        job=job.name,
        command=job.command,
        scheduled_for=run.scheduled_for,
        produced_at=produced_at,
        source=job.source,
        shell=job.shell,
        attempt=1,
        max_attempts=job.attempts,
        timeout_s=job.timeout,
    )


class Dispatcher:
    """Writes run messages to Kafka outside any transaction (backfill) and counts deliveries."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._producer = Producer(kafka.producer_config(settings))
        self.delivered = 0
        self.failed = 0

    def send(self, run: Run, now: datetime) -> RunMessage:
        msg = build_message(run, now)
        topic = self._settings.topic

        def on_delivery(err: KafkaError | None, _record: Message) -> None:
            if err is None:
                self.delivered += 1
                return
            self.failed += 1
            log.error(
                "delivery failed",
                extra=fields(
                    job=msg.job,
                    run=msg.id,
                    topic=topic,
                    error=str(err),
                    scheduled_for=format_time(msg.scheduled_for),
                ),
            )

        while True:
            try:
                self._producer.produce(
                    topic, key=msg.key, value=msg.encode(), on_delivery=on_delivery
                )
                break
            except BufferError:
                # Local queue full (broker slow or down): wait for deliveries, never drop.
                self._producer.poll(0.1)
        self._producer.poll(0)
        return msg

    def flush(self, timeout: float = FLUSH_TIMEOUT_S) -> int:
        """Wait for outstanding deliveries; return how many are still undelivered."""
        return int(self._producer.flush(timeout))


@dataclass
class _FileStamp:
    mtime_ns: int
    size: int
    inode: int

    @classmethod
    def of(cls, path: Path) -> _FileStamp | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return cls(st.st_mtime_ns, st.st_size, st.st_ino)


class TransactionalDispatcher:
    """Writes one tick's runs and the jobs' dispatch state in one transaction.

    Either the runs and the new state are both visible (to read_committed
    workers and to the next producer) or neither is: a producer that dies
    mid-tick leaves nothing behind, and its successor re-dispatches the tick.
    """

    def __init__(
        self, settings: Settings, producer_id: str, state_topic: str, metrics: Metrics
    ) -> None:
        self._settings = settings
        self._producer_id = producer_id
        self._state_topic = state_topic
        self._metrics = metrics
        self._producer = Producer(
            kafka.transactional_producer_config(settings, transactional_id(settings, producer_id))
        )
        try:
            # Fences any older producer with the same id and aborts its open transaction.
            self._producer.init_transactions(TXN_TIMEOUT_S)
        except KafkaException as exc:
            raise BrokerError(f"cannot start a Kafka transaction: {exc.args[0]}") from None

    def dispatch(self, runs: Sequence[Run], now: datetime) -> list[RunMessage]:
        """Commit ``runs`` and their state; raise FencedError or BrokerError on failure."""
        messages = [build_message(run, now) for run in runs]
        last: dict[str, datetime] = {}
        for msg in messages:
            last[msg.job] = max(msg.scheduled_for, last.get(msg.job, msg.scheduled_for))
        placed: dict[str, tuple[int | None, int | None]] = {}

        def on_delivery(err: KafkaError | None, record: Message) -> None:
            if err is None and record.topic() == self._settings.topic:
                placed[(record.key() or b"").decode()] = (record.partition(), record.offset())

        producer = self._producer
        for attempt in range(1, TXN_ATTEMPTS + 1):
            try:
                producer.begin_transaction()
                for msg in messages:
                    producer.produce(
                        self._settings.topic, key=msg.key, value=msg.encode(),
                        on_delivery=on_delivery,
                    )  # fmt: skip
                for job_name, when in last.items():
                    producer.produce(
                        self._state_topic,
                        key=misfire.state_key(self._producer_id, job_name),
                        value=misfire.encode_state(job_name, when, now),
                    )
                producer.commit_transaction(TXN_TIMEOUT_S)
                break
            except KafkaException as exc:
                err = exc.args[0]
                if err.fatal() or err.code() == KafkaError._FENCED:
                    raise FencedError(
                        "another producer with the same producer id took over "
                        f"({err.str()}); this one stops dispatching"
                    ) from None
                if err.txn_requires_abort():
                    with contextlib.suppress(KafkaException):
                        producer.abort_transaction(TXN_TIMEOUT_S)
                log.warning(
                    "transaction failed; retrying",
                    extra=fields(attempt=attempt, runs=len(messages), error=err.str()),
                )
                if attempt == TXN_ATTEMPTS:
                    raise BrokerError(f"cannot commit dispatch transaction: {err}") from None
                time.sleep(min(2.0, 0.1 * 2**attempt))
        for msg in messages:
            partition, offset = placed.get(msg.id, (None, None))
            self._metrics.dispatched.labels(msg.job).inc()
            log.info(
                "run dispatched",
                extra=fields(
                    job=msg.job, run=msg.id, scheduled_for=format_time(msg.scheduled_for),
                    partition=partition, offset=offset,
                ),
            )  # fmt: skip
        return messages

    def close(self) -> None:
        self._producer.flush(FLUSH_TIMEOUT_S)


def transactional_id(settings: Settings, producer_id: str) -> str:
    return f"kcron-producer.{settings.topic}.{producer_id}"


def read_state(
    settings: Settings,
    state_topic: str,
    producer_id: str,
    keep_alive: Callable[[], None] | None = None,
) -> dict[str, datetime]:
    """Last dispatched ``scheduled_for`` per job of this producer id.

    Reads the compacted state topic from the start until it has been quiet for
    a moment. High watermarks would say where the end is, but some
    Kafka-compatible brokers report them wrongly, and a state read that stops
    early would dispatch runs twice. ``keep_alive`` is called between batches:
    a big state takes seconds to read, and the elector must keep polling.
    """
    prefix = f"{producer_id}/".encode()
    reader = Consumer(kafka.state_reader_config(settings))
    state: dict[str, datetime] = {}
    try:
        reader.assign([TopicPartition(state_topic, 0, OFFSET_BEGINNING)])
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < STATE_QUIET_S:
            if keep_alive is not None:
                keep_alive()
            records = reader.consume(STATE_BATCH, 0.1)
            for record in records:
                if record.error() is not None:
                    continue
                quiet_since = time.monotonic()
                key = record.key() or b""
                if not key.startswith(prefix):
                    continue
                decoded = misfire.decode_state(record.value())
                job_name = key[len(prefix) :].decode(errors="replace")
                if decoded is None:
                    state.pop(job_name, None)
                else:
                    state[job_name] = decoded[1]
    finally:
        reader.close()
    return state


class _Elector:
    """Leader election through a consumer group on the one-partition state topic."""

    def __init__(self, settings: Settings, group: str, state_topic: str) -> None:
        self.active = False
        self.changed = False
        self._consumer = Consumer(kafka.elector_config(settings, group))
        self._consumer.subscribe(
            [state_topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )  # fmt: skip

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if partitions and not self.active:
            self.active, self.changed = True, True
        elif not partitions and not self.active:
            log.info("standing by: another producer with the same producer id is active")

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if partitions and self.active:
            self.active, self.changed = False, True

    def poll(self) -> None:
        # Messages of the state topic are read by read_state; here only the
        # membership matters, and poll() is what keeps it (and runs callbacks).
        self._consumer.poll(0)

    def close(self) -> None:
        self._consumer.close()  # leaves the group: a standby takes over at once


class ProducerService:
    """The long-running scheduler loop behind ``kcron produce``."""

    def __init__(
        self,
        settings: Settings,
        jobs_path: str,
        clock: Clock = utc_now,
    ) -> None:
        self._settings = settings
        self._path = Path(jobs_path)
        self._clock = clock
        self._producer_id = settings.producer_id or default_producer_id(jobs_path)
        self._policy = misfire.Policy(settings.misfire)
        self._grace = timedelta(seconds=settings.misfire_grace_s)
        self._stop = False
        self._reload = False
        self._wake = threading.Event()

    # Signal handlers only set flags; the loop does the work.
    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        self._stop = True
        self._wake.set()

    def _on_hup(self, signum: int, _frame: FrameType | None) -> None:
        self._reload = True
        self._wake.set()

    def request_stop(self) -> None:
        self._stop = True
        self._wake.set()

    def run(self) -> int:
        settings = self._settings
        jobs = jobfile.load(self._path).jobs  # a bad file refuses to start: JobFileError
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        kafka.wait_for_broker(settings)
        kafka.ensure_topic(settings)
        state_topic = f"{settings.topic}.state"
        kafka.ensure_topic(settings, state_topic, 1, config={"cleanup.policy": "compact"})
        metrics = Metrics()
        if settings.metrics_port:
            metrics.serve(settings.metrics_port, settings.metrics_addr)
        group = transactional_id(settings, self._producer_id)
        elector = _Elector(settings, group, state_topic)
        log.info(
            "producer started; waiting to become the active producer",
            extra=fields(
                jobs=len(jobs), file=str(self._path), topic=settings.topic,
                producer_id=self._producer_id, misfire=self._policy.value,
                misfire_grace_s=self._grace.total_seconds(), timezone=settings.timezone,
                pid=os.getpid(),
            ),
        )  # fmt: skip
        stamp = _FileStamp.of(self._path)
        last_check = time.monotonic()
        ahead = timedelta(seconds=settings.dispatch_ahead_s)
        dispatcher: TransactionalDispatcher | None = None
        scheduler: Scheduler | None = None
        pending: list[Run] = []  # popped from the schedule, not yet committed
        rebooted = False
        try:
            while not self._stop:
                elector.poll()
                if elector.changed:
                    elector.changed = False
                    if elector.active:
                        if dispatcher is not None:  # lost and regained during a take-over
                            dispatcher.close()
                        dispatcher = TransactionalDispatcher(
                            settings, self._producer_id, state_topic, metrics
                        )
                        scheduler, pending = self._take_over(jobs, state_topic, rebooted, elector)
                        rebooted = True
                        if elector.changed:
                            # The role changed while taking over (the take-over keeps
                            # polling the elector): act on that before dispatching.
                            continue
                    else:
                        log.warning("lost the active role; standing by")
                        if dispatcher is not None:
                            dispatcher.close()
                        dispatcher, scheduler, pending = None, None, []

                if dispatcher is not None and scheduler is not None:
                    now = self._clock()
                    pending.extend(scheduler.pop_due(now + ahead))
                    if pending:
                        try:
                            dispatcher.dispatch(pending, now)
                            pending = []
                        except BrokerError as exc:
                            # Kept: the next pass retries them (late, never lost).
                            log.error(
                                "dispatch failed; will retry",
                                extra=fields(runs=len(pending), error=str(exc)),
                            )
                            self._wake.wait(1.0)

                if self._reload or time.monotonic() - last_check >= settings.watch_interval_s:
                    last_check = time.monotonic()
                    new_stamp = _FileStamp.of(self._path)
                    if self._reload or new_stamp != stamp:
                        reason = "SIGHUP" if self._reload else "file changed"
                        self._reload = False
                        stamp = new_stamp
                        reloaded = self._reloaded(scheduler, jobs, reason)
                        if reloaded is not None:
                            scheduler, jobs = reloaded

                sleep = MAX_SLEEP_S
                next_due = scheduler.next_due() if scheduler is not None else None
                if next_due is not None:
                    wake_at = next_due - ahead
                    sleep = min(sleep, max(0.0, (wake_at - self._clock()).total_seconds()))
                if sleep > 0 and not pending:
                    self._wake.wait(sleep)
                    self._wake.clear()
        finally:
            if dispatcher is not None:
                dispatcher.close()
            elector.close()
        log.info("producer stopped", extra=fields(producer_id=self._producer_id))
        return 0

    def _take_over(
        self, jobs: Sequence[Job], state_topic: str, rebooted: bool, elector: _Elector
    ) -> tuple[Scheduler, list[Run]]:
        """Become the active producer: resume from the recorded state, apply the misfire policy.

        Polls the elector between the steps (they take seconds with a big job
        file or state): a member that stops polling for max.poll.interval.ms
        leaves the group and so gives up the role it is taking.
        """
        settings = self._settings
        last = read_state(settings, state_topic, self._producer_id, keep_alive=elector.poll)
        elector.poll()
        now = self._clock()
        decided = misfire.plan(jobs, last, now, self._policy, self._grace, settings.tz)
        elector.poll()
        for job_name, count in decided.skipped.items():
            log.warning(
                "missed runs skipped",
                extra=fields(job=job_name, skipped=count, misfire=self._policy.value,
                             last_dispatched=format_time(last[job_name])),
            )  # fmt: skip
        pending = list(decided.runs)
        if not rebooted:
            pending.extend(Run(now, job) for job in jobs if job.is_reboot)
        scheduler = Scheduler(jobs, now, settings.tz, resume_from=decided.resume_from)
        elector.poll()
        log.info(
            "became the active producer",
            extra=fields(
                producer_id=self._producer_id, jobs_with_state=len(last),
                catch_up_runs=len(decided.runs),
            ),
        )  # fmt: skip
        self._log_next(scheduler)
        return scheduler, pending

    def _reloaded(
        self, scheduler: Scheduler | None, old: Sequence[Job], reason: str
    ) -> tuple[Scheduler | None, tuple[Job, ...]] | None:
        try:
            new = jobfile.load(self._path).jobs
        except JobFileError as exc:
            log.error(
                "reload failed; keeping the last good job set",
                extra=fields(reason=reason, file=str(self._path), errors=len(exc.errors)),
            )
            for err in exc.errors:
                log.error(str(err))
            return None
        except KcronError as exc:
            log.error(
                "reload failed; keeping the last good job set",
                extra=fields(reason=reason, error=str(exc)),
            )
            return None
        old_names = {j.name for j in old}
        new_names = {j.name for j in new}
        replacement = None
        if scheduler is not None:
            # Resume from the old cursor: runs already handed out are not repeated,
            # and runs due between the last tick and now are not skipped.
            replacement = Scheduler(new, scheduler.cursor, self._settings.tz)
        log.info(
            "job file reloaded",
            extra=fields(
                reason=reason,
                jobs=len(new),
                added=len(new_names - old_names),
                removed=len(old_names - new_names),
            ),
        )
        if replacement is not None:
            self._log_next(replacement)
        return replacement, new

    def _log_next(self, scheduler: Scheduler) -> None:
        nxt = scheduler.next_due()
        if nxt is not None:
            log.info("next run", extra=fields(at=format_time(nxt)))


def default_producer_id(jobs_path: str) -> str:
    """The job file's name: two producers on the same file fence each other."""
    return jobfile.name_stem(jobs_path)


def backfill(
    settings: Settings,
    jobs: Sequence[Job],
    runs: Iterable[Run],
    progress: Callable[[int], None] | None = None,
    clock: Clock = utc_now,
) -> int:
    """Produce every given run now, keeping each run's true ``scheduled_for``."""
    kafka.wait_for_broker(settings)
    kafka.ensure_topic(settings)
    dispatcher = Dispatcher(settings)
    count = 0
    for run in runs:
        dispatcher.send(run, clock())
        count += 1
        if progress is not None:
            progress(1)
    left = dispatcher.flush()
    if left or dispatcher.failed:
        raise BrokerError(f"{left + dispatcher.failed} of {count} runs were not delivered")
    return count
