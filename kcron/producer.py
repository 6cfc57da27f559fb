"""The scheduler: job file in, one Kafka message per due run out."""

from __future__ import annotations

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

from confluent_kafka import KafkaError, Message, Producer

from kcron import jobfile, kafka
from kcron.errors import BrokerError, JobFileError, KcronError
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
DELIVERY_POLL_S = 0.02

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
    """Writes run messages to Kafka and reports each delivery."""

    def __init__(
        self, settings: Settings, log_each: bool = True, metrics: Metrics | None = None
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._producer = Producer(kafka.producer_config(settings))
        self._log_each = log_each
        self.delivered = 0
        self.failed = 0

    def send(self, run: Run, now: datetime) -> RunMessage:
        msg = build_message(run, now)
        topic = self._settings.topic

        def on_delivery(err: KafkaError | None, record: Message) -> None:
            if err is not None:
                self.failed += 1
                if self._metrics:
                    self._metrics.delivery_failures.labels(msg.job).inc()
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
                return
            self.delivered += 1
            if self._metrics:
                self._metrics.dispatched.labels(msg.job).inc()
            if self._log_each:
                log.info(
                    "run dispatched",
                    extra=fields(
                        job=msg.job,
                        run=msg.id,
                        scheduled_for=format_time(msg.scheduled_for),
                        partition=record.partition(),
                        offset=record.offset(),
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

    def poll(self, timeout: float = 0) -> None:
        self._producer.poll(timeout)

    @property
    def pending(self) -> int:
        """Messages not yet acknowledged by the broker."""
        return len(self._producer)

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


class ProducerService:
    """The long-running scheduler loop behind ``kcron produce``."""

    def __init__(self, settings: Settings, jobs_path: str, clock: Clock = utc_now) -> None:
        self._settings = settings
        self._path = Path(jobs_path)
        self._clock = clock
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
        jobs = jobfile.load(self._path).jobs  # a bad file refuses to start: JobFileError
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        kafka.wait_for_broker(self._settings)
        kafka.ensure_topic(self._settings)
        metrics = Metrics()
        if self._settings.metrics_port:
            metrics.serve(self._settings.metrics_port, self._settings.metrics_addr)
        dispatcher = Dispatcher(self._settings, metrics=metrics)
        stamp = _FileStamp.of(self._path)
        now = self._clock()
        log.info(
            "producer started",
            extra=fields(
                jobs=len(jobs),
                file=str(self._path),
                topic=self._settings.topic,
                timezone=self._settings.timezone,
                pid=os.getpid(),
            ),
        )
        for job in jobs:
            if job.is_reboot:
                dispatcher.send(Run(now, job), now)
        scheduler = Scheduler(jobs, now, self._settings.tz)
        self._log_next(scheduler)
        last_check = time.monotonic()

        ahead = timedelta(seconds=self._settings.dispatch_ahead_s)
        while not self._stop:
            now = self._clock()
            for run in scheduler.pop_due(now + ahead):
                dispatcher.send(run, now)
            dispatcher.poll(0)

            if self._reload or time.monotonic() - last_check >= self._settings.watch_interval_s:
                last_check = time.monotonic()
                new_stamp = _FileStamp.of(self._path)
                if self._reload or new_stamp != stamp:
                    reason = "SIGHUP" if self._reload else "file changed"
                    self._reload = False
                    stamp = new_stamp
                    reloaded = self._reloaded(scheduler, jobs, reason)
                    if reloaded is not None:
                        scheduler, jobs = reloaded

            next_due = scheduler.next_due()
            # While sends are unacknowledged, wake often enough to report them.
            sleep = DELIVERY_POLL_S if dispatcher.pending else MAX_SLEEP_S
            if next_due is not None:
                wake_at = next_due - ahead
                sleep = min(sleep, max(0.0, (wake_at - self._clock()).total_seconds()))
            if sleep > 0:
                self._wake.wait(sleep)
                self._wake.clear()

        log.info("stopping: flushing pending runs")
        left = dispatcher.flush()
        if left:
            log.error("runs not delivered at shutdown", extra=fields(undelivered=left))
            raise BrokerError(f"{left} runs were not delivered to Kafka before shutdown")
        log.info(
            "producer stopped",
            extra=fields(delivered=dispatcher.delivered, failed=dispatcher.failed),
        )
        return 0

    def _reloaded(
        self, scheduler: Scheduler, old: Sequence[Job], reason: str
    ) -> tuple[Scheduler, tuple[Job, ...]] | None:
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
        self._log_next(replacement)
        return replacement, new

    def _log_next(self, scheduler: Scheduler) -> None:
        nxt = scheduler.next_due()
        if nxt is not None:
            log.info("next run", extra=fields(at=format_time(nxt)))


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
    dispatcher = Dispatcher(settings, log_each=False)
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


def parse_when(text: str, now: datetime, default_tz: object = UTC) -> datetime:
    """``now``, ``now-2h``, ``-30m``, ``+1d`` or an ISO 8601 time (naive = default zone)."""
    value = text.strip()
    if value.startswith("now"):
        value = value[3:] or "+0s"
    if value[:1] in "+-":
        sign = -1 if value[0] == "-" else 1
        seconds = jobfile.parse_duration(value[1:]) if value[1:] not in ("0s", "0") else 0.0
        return now + sign * timedelta(seconds=seconds)
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"'{text}' is not a time: use ISO 8601 (2026-11-28T09:00), now, now-1h or -30m"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=default_tz)  # type: ignore[arg-type]
    return moment.astimezone(UTC)
