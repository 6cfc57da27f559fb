"""The scheduler: job file in, one Kafka message per due run out.

``ProducerService`` is the loop, one method per phase: start, wait for the
role, take over, dispatch what is due, reload, stop. The election
(kcron/election.py), the dispatch (kcron/dispatch.py) and the state read
(kcron/state.py) reach it through ``ProducerKafka``; the process (clock,
signals, sleeping) through ``Host``. Unit tests give it fakes of both.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from kcron import jobfile, kafka, misfire, state
from kcron.dispatch import TransactionalDispatcher, transactional_id
from kcron.election import Elector, KafkaElector
from kcron.errors import BrokerError, JobFileError, KcronError
from kcron.jobfile import Job
from kcron.log import fields
from kcron.message import RunMessage, format_time
from kcron.metrics import ProducerMetrics
from kcron.probe import Probe
from kcron.schedule import Run, Scheduler
from kcron.settings import Settings

log = logging.getLogger("kcron.producer")

# Upper bound on one sleep, so a wall-clock jump or a changed file is noticed soon.
MAX_SLEEP_S = 1.0
# How often a stopping producer checks for a second signal while it leaves the group.
LEAVE_SLICE_S = 0.1
# A reload whose new queue topics could not be created is tried again after this long.
QUEUE_RETRY_S = 10.0

SignalHandler = Callable[[int, FrameType | None], None]


class TxnDispatcher(Protocol):
    """What the loop needs from kcron.dispatch.TransactionalDispatcher."""

    def dispatch(
        self, runs: Sequence[Run], now: datetime, interrupted: Callable[[], bool]
    ) -> list[RunMessage] | None: ...

    def close(self, interrupted: Callable[[], bool]) -> None: ...


class ProducerKafka(Protocol):
    """Everything the producer service does with Kafka."""

    def prepare(self) -> None:
        """Wait for the broker; create the run topic and the state topic if missing."""

    def ensure_queues(self, queues: Collection[str]) -> None:
        """Create the queues' topics if missing; raise BrokerError if one cannot be."""

    def elector(self) -> Elector: ...

    def dispatcher(self, metrics: ProducerMetrics, sleep: Callable[[float], None]) -> TxnDispatcher:
        """A transactional dispatcher; creating it fences older producers with the same id."""

    def read_state(self, keep_alive: Callable[[], None]) -> dict[str, datetime]: ...


class KafkaPorts:
    """ProducerKafka on confluent_kafka."""

    def __init__(self, settings: Settings, producer_id: str) -> None:
        self._settings = settings
        self._producer_id = producer_id
        self._state_topic = state.state_topic(settings)

    def prepare(self) -> None:
        settings = self._settings
        kafka.wait_for_broker(settings)
        kafka.ensure_topic(settings)
        kafka.ensure_topic(settings, self._state_topic, 1, config={"cleanup.policy": "compact"})

    def ensure_queues(self, queues: Collection[str]) -> None:
        for queue in queues:
            # --partitions and the replication factor, as for the default topic.
            kafka.ensure_topic(self._settings, queue)

    def elector(self) -> Elector:
        group = transactional_id(self._settings, self._producer_id)
        return KafkaElector(self._settings, group, self._state_topic)

    def dispatcher(self, metrics: ProducerMetrics, sleep: Callable[[float], None]) -> TxnDispatcher:
        return TransactionalDispatcher.connect(
            self._settings, self._producer_id, self._state_topic, metrics, sleep
        )

    def read_state(self, keep_alive: Callable[[], None]) -> dict[str, datetime]:
        reader = state.open_reader(self._settings)
        return state.read_state(reader, self._state_topic, self._producer_id, keep_alive)


class Host(Protocol):
    """The process around the loop: time, signals, sleeping, exiting."""

    def now(self) -> datetime: ...

    def monotonic(self) -> float: ...

    def install(self, on_stop: SignalHandler, on_hup: SignalHandler) -> None: ...

    def restore(self) -> None: ...

    def wait(self, timeout: float) -> None:
        """Sleep up to ``timeout`` seconds; return early when a signal arrives."""

    def exit_now(self, code: int) -> None:
        """End the process at once, skipping the Kafka clients' goodbyes."""


class ProcessHost:
    """Host for the real process.

    Signals wake the sleeping loop through ``signal.set_wakeup_fd``: the
    interpreter writes to a socket at C level, so the handlers themselves only
    set flags (an Event.set() in a handler takes a lock and can deadlock).
    """

    def __init__(self) -> None:
        self._wake: tuple[socket.socket, socket.socket] | None = None  # (read, write)
        self._old_fd = -1
        self._old_handlers: dict[int, Any] = {}

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    def install(self, on_stop: SignalHandler, on_hup: SignalHandler) -> None:
        self._wake = socket.socketpair()
        for end in self._wake:
            end.setblocking(False)
        self._old_fd = signal.set_wakeup_fd(self._wake[1].fileno(), warn_on_full_buffer=False)
        for signum, handler in (
            (signal.SIGTERM, on_stop),
            (signal.SIGINT, on_stop),
            (signal.SIGHUP, on_hup),
        ):
            self._old_handlers[signum] = signal.signal(signum, handler)

    def restore(self) -> None:
        for signum, handler in self._old_handlers.items():
            signal.signal(signum, handler)
        self._old_handlers.clear()
        if self._wake is not None:
            signal.set_wakeup_fd(self._old_fd)
            for end in self._wake:
                end.close()
            self._wake = None

    def wait(self, timeout: float) -> None:
        if self._wake is None:  # not installed: nothing can wake it
            time.sleep(max(0.0, timeout))
            return
        if timeout > 0:
            select.select([self._wake[0]], [], [], timeout)
        try:
            while self._wake[0].recv(64):
                pass
        except BlockingIOError:
            pass

    def exit_now(self, code: int) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


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


class _JobFileWatcher:
    """Says when to reload the job file: on SIGHUP, or when it changed."""

    def __init__(self, path: Path, interval_s: float, monotonic: Callable[[], float]) -> None:
        self._path = path
        self._interval_s = interval_s
        self._monotonic = monotonic
        self._stamp = _FileStamp.of(path)
        self._last_check = monotonic()

    def reason(self, hup: bool) -> str | None:
        """Why to reload now, or None; the file is looked at once per watch interval."""
        now = self._monotonic()
        if not hup and now - self._last_check < self._interval_s:
            return None
        self._last_check = now
        new_stamp = _FileStamp.of(self._path)
        if not hup and new_stamp == self._stamp:
            return None
        self._stamp = new_stamp
        return "SIGHUP" if hup else "file changed"

    def again(self, after_s: float) -> None:
        """Reload again in ``after_s`` seconds, even if the file stays as it is."""
        self._stamp = None
        self._last_check = self._monotonic() + after_s - self._interval_s


def _load_or_keep(path: Path, reason: str, max_queues: int) -> tuple[Job, ...] | None:
    """The reloaded jobs, or None (logged) when the file is bad: the last good set stays."""
    try:
        return jobfile.load(path, max_queues=max_queues).jobs
    except JobFileError as exc:
        log.error(
            "reload failed; keeping the last good job set",
            extra=fields(reason=reason, file=str(path), errors=len(exc.errors)),
        )
        for err in exc.errors:
            log.error(str(err))
    except KcronError as exc:
        log.error(
            "reload failed; keeping the last good job set",
            extra=fields(reason=reason, error=str(exc)),
        )
    return None


class _QueueTopics:
    """Creates the topics of the job file's queues, each once per producer."""

    def __init__(self, kafka_ports: ProducerKafka, default: str) -> None:
        self._kafka = kafka_ports
        self._default = default  # made by prepare(), with the state topic
        self._made: set[str] = set()

    def make(self, jobs: Sequence[Job]) -> None:
        """Create the topics of queues new to this producer; BrokerError if one cannot be."""
        named = jobfile.queues(jobs, self._default)
        wanted = [q for q in named if q != self._default and q not in self._made]
        if wanted:
            self._kafka.ensure_queues(wanted)
            self._made.update(wanted)
            log.info("queues ready", extra=fields(queues=wanted))


def _made_or_keep(
    queues: _QueueTopics, jobs: Sequence[Job], reason: str, watcher: _JobFileWatcher | None
) -> bool:
    """Whether the reloaded jobs' queue topics exist; if not (logged), the last good
    job set stays, and the watcher tries the reload again a little later.

    Runs for a queue without a topic would fail every dispatch transaction, and
    so hold back the runs of every queue.
    """
    try:
        queues.make(jobs)
    except KcronError as exc:
        log.error(
            "reload failed; keeping the last good job set",
            extra=fields(reason=reason, error=str(exc)),
        )
        if watcher is not None:
            watcher.again(QUEUE_RETRY_S)
        return False
    return True


def default_producer_id(jobs_path: str) -> str:
    """The job file's name: two producers on the same file fence each other."""
    return jobfile.name_stem(jobs_path)


def load_while_joining(
    ports: ProducerKafka, path: Path, max_queues: int
) -> tuple[Elector, tuple[Job, ...]]:
    """Parse the job file while the election group is being joined.

    A new group's first join waits for the broker's initial rebalance delay
    (3 s by default on Apache Kafka), and a 100,000-job file takes about as
    long to parse: side by side, the producer is ready sooner. The join runs
    in a helper thread (librdkafka works in its own threads); a bad job file is
    reported at once, without waiting for the broker.
    """
    joined: Future[Elector] = Future()

    def join() -> None:
        try:
            ports.prepare()
            joined.set_result(ports.elector())
        except BaseException as exc:
            joined.set_exception(exc)

    threading.Thread(target=join, name="kcron-join", daemon=True).start()
    try:
        jobs = jobfile.load(path, max_queues=max_queues).jobs
    except BaseException:
        if joined.done() and joined.exception() is None:
            joined.result().close()
        raise
    return joined.result(), jobs


class _Observed:
    """The producer's metrics, served with their probe when --metrics-port is set."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.metrics = ProducerMetrics(settings.topic)
        self._jobs: tuple[Job, ...] = ()
        self._probe: Probe | None = None

    def loaded(self, jobs: tuple[Job, ...], now: datetime) -> tuple[Job, ...]:
        """Every job at 0; their run times only when served (seconds of work for a
        big file, done in the background)."""
        settings = self._settings
        self._jobs = jobs
        self.metrics.load(jobs, settings.topic)
        if settings.served_metrics_port:
            self.metrics.compute_times_in_background(jobs, now, settings.tz)
        return jobs

    def start(self, jobs: tuple[Job, ...], now: datetime) -> None:
        settings = self._settings
        self.loaded(jobs, now)
        if settings.served_metrics_port:
            self.metrics.serve(settings.served_metrics_port, settings.metrics_addr)
            self._probe = Probe(settings, self.metrics, self._queues).start()

    def _queues(self) -> Collection[str]:
        """The job file's queues (called from the probe's thread)."""
        # The default queue always: backfill and kcron trigger write to it too.
        return {self._settings.topic, *jobfile.queues(self._jobs, self._settings.topic)}

    def stop(self) -> None:
        if self._probe is not None:
            self._probe.stop()


class ProducerService:
    """The long-running scheduler loop behind ``kcron produce``."""

    def __init__(
        self,
        settings: Settings,
        jobs_path: str,
        kafka_ports: ProducerKafka | None = None,
        host: Host | None = None,
    ) -> None:
        self._settings = settings
        self._path = Path(jobs_path)
        self._producer_id = settings.producer_id or default_producer_id(jobs_path)
        self._kafka = kafka_ports or KafkaPorts(settings, self._producer_id)
        self._host = host or ProcessHost()
        self._policy = misfire.Policy(settings.misfire)
        self._grace = timedelta(seconds=settings.misfire_grace_s)
        self._ahead = timedelta(seconds=settings.dispatch_ahead_s)
        # Set by signal handlers (plain assignments only), read by the loop.
        self._stops = self._stop_signum = 0
        self._reload = False
        self._jobs: tuple[Job, ...] = ()
        self._dispatcher: TxnDispatcher | None = None
        self._scheduler: Scheduler | None = None
        self._pending: list[Run] = []  # popped from the schedule, not yet committed
        self._rebooted = False
        self._watcher: _JobFileWatcher | None = None
        self._queue_topics = _QueueTopics(self._kafka, settings.topic)
        self._observed = _Observed(settings)

    # Signal handlers only set flags; the loop does the work.
    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        self._stops += 1
        self._stop_signum = signum

    def _on_hup(self, signum: int, _frame: FrameType | None) -> None:
        self._reload = True

    def request_stop(self) -> None:
        self._stops = max(self._stops, 1)

    def _stopping_at_once(self) -> bool:
        return self._stops > 1

    def run(self) -> int:
        self._host.install(self._on_stop, self._on_hup)
        try:
            elector = self._start()
            try:
                while not self._stops:
                    self._step(elector)
            except BaseException:
                self._close(elector)
                raise
            return self._stop(elector)
        finally:
            self._observed.stop()
            self._host.restore()

    def _start(self) -> Elector:
        settings = self._settings
        elector, self._jobs = load_while_joining(self._kafka, self._path, settings.max_queues)
        try:
            self._queue_topics.make(self._jobs)  # @reboot and catch-up runs need them at once
            self._observed.start(self._jobs, self._host.now())
        except BaseException:
            elector.close()
            raise
        log.info(
            "producer started; waiting to become the active producer",
            extra=fields(
                jobs=len(self._jobs), file=str(self._path), topic=settings.topic,
                producer_id=self._producer_id, misfire=self._policy.value,
                misfire_grace_s=self._grace.total_seconds(), timezone=settings.timezone,
                pid=os.getpid(),
            ),
        )  # fmt: skip
        self._watcher = _JobFileWatcher(self._path, settings.watch_interval_s, self._host.monotonic)
        return elector

    def _step(self, elector: Elector) -> None:
        """One pass of the loop: role, dispatch, reload, sleep."""
        elector.poll()
        if elector.changed:
            self._role_changed(elector)
            if elector.changed:
                # The role changed while taking over (the take-over keeps
                # polling the elector): act on that before dispatching.
                return
        if self._dispatcher is not None and self._scheduler is not None:
            self._dispatch_due(self._dispatcher, self._scheduler)
        self._watch_job_file()
        self._sleep()

    def _role_changed(self, elector: Elector) -> None:
        elector.changed = False
        self._observed.metrics.set_active(elector.active)
        if elector.active:
            self._drop_role()  # lost and regained during a take-over: start afresh
            # Before the state read: creating it fences any older producer with
            # this id, so nothing is committed behind the state we read.
            self._dispatcher = self._kafka.dispatcher(self._observed.metrics, self._host.wait)
            self._scheduler, self._pending = self._take_over(elector)
            self._rebooted = True
        else:
            log.warning("lost the active role; standing by")
            self._drop_role()

    def _drop_role(self) -> None:
        if self._dispatcher is not None:
            self._dispatcher.close(self._stopping_at_once)
        self._dispatcher, self._scheduler, self._pending = None, None, []

    def _take_over(self, elector: Elector) -> tuple[Scheduler, list[Run]]:
        """Become the active producer: resume from the recorded state, apply the misfire policy.

        Polls the elector between the steps (they take seconds with a big job
        file or state): a member that stops polling for max.poll.interval.ms
        leaves the group and so gives up the role it is taking.
        """
        settings, jobs = self._settings, self._jobs
        last = self._kafka.read_state(elector.poll)
        elector.poll()
        now = self._host.now()
        decided = misfire.plan(jobs, last, now, self._policy, self._grace, settings.tz)
        elector.poll()
        for job_name, count in decided.skipped.items():
            log.warning(
                "missed runs skipped",
                extra=fields(job=job_name, skipped=count, misfire=self._policy.value,
                             last_dispatched=format_time(last[job_name])),
            )  # fmt: skip
        pending = list(decided.runs)
        if not self._rebooted:
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

    def _dispatch_due(self, dispatcher: TxnDispatcher, scheduler: Scheduler) -> None:
        now = self._host.now()
        self._pending.extend(scheduler.pop_due(now + self._ahead))
        if not self._pending:
            return
        try:
            sent = dispatcher.dispatch(self._pending, now, self._stopping_at_once)
        except BrokerError as exc:
            # Kept: the next pass retries them (late, never lost).
            log.error(
                "dispatch failed; will retry",
                extra=fields(runs=len(self._pending), error=str(exc)),
            )
            self._host.wait(1.0)
            return
        if sent is not None:  # None: aborted by a second signal, the loop ends now
            self._pending = []

    def _watch_job_file(self) -> None:
        """Reload on SIGHUP, and when the file changed (checked every watch interval)."""
        reason = self._watcher.reason(self._reload) if self._watcher is not None else None
        if reason is None:
            return
        self._reload = False
        new = _load_or_keep(self._path, reason, self._settings.max_queues)
        if new is None or not _made_or_keep(self._queue_topics, new, reason, self._watcher):
            return
        old_names = {j.name for j in self._jobs}
        new_names = {j.name for j in new}
        if self._scheduler is not None:
            # Resume from the old cursor: runs already handed out are not repeated,
            # and runs due between the last tick and now are not skipped.
            self._scheduler = Scheduler(new, self._scheduler.cursor, self._settings.tz)
        self._jobs = self._observed.loaded(new, self._host.now())
        log.info(
            "job file reloaded",
            extra=fields(
                reason=reason,
                jobs=len(new),
                added=len(new_names - old_names),
                removed=len(old_names - new_names),
            ),
        )
        if self._scheduler is not None:
            self._log_next(self._scheduler)

    def _sleep(self) -> None:
        sleep = MAX_SLEEP_S
        next_due = self._scheduler.next_due() if self._scheduler is not None else None
        if next_due is not None:
            wake_at = next_due - self._ahead
            sleep = min(sleep, max(0.0, (wake_at - self._host.now()).total_seconds()))
        if sleep > 0 and not self._pending:
            self._host.wait(sleep)

    def _log_next(self, scheduler: Scheduler) -> None:
        nxt = scheduler.next_due()
        if nxt is not None:
            log.info("next run", extra=fields(at=format_time(nxt)))

    def _stop(self, elector: Elector) -> int:
        """Flush and leave the group; a second SIGTERM/SIGINT skips all that."""
        if not self._stopping_at_once() and self._dispatcher is not None:
            self._dispatcher.close(self._stopping_at_once)
            self._dispatcher = None
        if not self._stopping_at_once():
            self._leave_group(elector)
        if self._stopping_at_once():
            code = 128 + self._stop_signum
            log.warning(
                "second signal: stopping at once, without flushing or leaving the group",
                extra=fields(signal=signal.Signals(self._stop_signum).name, exit_code=code),
            )
            self._host.exit_now(code)
            return code
        log.info("producer stopped", extra=fields(producer_id=self._producer_id))
        return 0

    def _leave_group(self, elector: Elector) -> None:
        """Close the elector in a helper thread, waiting for it in wake-able slices.

        Leaving the group can take seconds (a join in flight holds it back),
        and a second signal must not wait for that.
        """
        failed: list[BaseException] = []

        def close() -> None:
            try:
                elector.close()
            except BaseException as exc:  # handed to the main thread below
                failed.append(exc)

        leaving = threading.Thread(target=close, name="kcron-leave-group", daemon=True)
        leaving.start()
        while leaving.is_alive() and not self._stopping_at_once():
            self._host.wait(LEAVE_SLICE_S)
        if failed:
            raise failed[0]

    def _close(self, elector: Elector) -> None:
        if self._dispatcher is not None:
            self._dispatcher.close(self._stopping_at_once)
        elector.close()
