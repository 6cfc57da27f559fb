"""Prometheus metrics (docs/monitoring.md has the table; /work contract: METRICS.md).

Each process builds its own registry (no module-level globals), so tests and
several workers in one interpreter never share counters. ``ProducerMetrics``
and ``WorkerMetrics`` hold what each role exports; both carry the metrics
every process has (``ProcessMetrics``). The job-name label is ``kcron_job``:
a label ``job`` would clash with the scrape job's and be renamed at scrape.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, tzinfo
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from kcron import __version__
from kcron.errors import ConfigError
from kcron.jobfile import Job
from kcron.jobtimes import JobTimes
from kcron.log import fields
from kcron.signing import Refusal

log = logging.getLogger("kcron.metrics")

DEFAULT_QUEUE = "kcron.jobs"
# A standby producer never takes the role: it computes its jobs' times after this.
AFTER_WAIT_S = 30.0
OTHER_JOBS = "_other"  # kcron_job of the names past a worker's metrics_max_jobs
# Lateness and duration both span milliseconds (a healthy tick) to hours (a
# backfill, a long job), hence the wide buckets.
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600)
_JOB = ["kcron_job", "queue"]
_LOADED_HELP = "When this producer process first loaded the job."
_INTERVAL_HELP = "Longest gap between consecutive runs among the job's next 64."
_NEXT_HELP = "When the job is next due."
REFUSALS = tuple(v for k, v in vars(Refusal).items() if k.isupper() and isinstance(v, str))


@contextlib.contextmanager
def _listening(port: int, addr: str) -> Iterator[None]:
    """A port that cannot be bound is a setting to fix, said as such (exit 78)."""
    try:
        yield
    except OSError as exc:
        raise ConfigError(
            f"cannot serve metrics on {addr}:{port}: {exc.strerror or exc}; another "
            "process holds it? (--metrics-port, KCRON_METRICS_PORT_OFFSET, KCRON_METRICS=false)"
        ) from exc


class ProcessMetrics:
    """What every process exports: who it is, and whether it reaches the broker."""

    def __init__(self, role: str, queue: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.queue = queue
        r = self.registry
        info = Gauge(
            "kcron_info", "Who this target is (always 1).", ["role", "queue", "version"], registry=r
        )
        info.labels(role, queue, __version__).set(1)
        self.broker_up = Gauge(
            "kcron_broker_up", "1 if the last broker probe answered, else 0.", registry=r
        )
        self.broker_last_seen = Gauge(
            "kcron_broker_last_seen_timestamp_seconds",
            "Unix time of the last broker probe that answered.",
            registry=r,
        )

    def broker_answered(self, answered: bool, now: float) -> None:
        self.broker_up.set(1 if answered else 0)
        if answered:
            self.broker_last_seen.set(now)

    def serve(self, port: int, addr: str) -> None:
        with _listening(port, addr):
            start_http_server(port, addr=addr, registry=self.registry)


class _JobSeries(Collector):
    """The producer's per-job series, kept in plain dicts and turned into samples
    only at scrape: a 100,000-job file would otherwise cost seconds of label
    objects at every load. Counts are written by the producer's thread only;
    a scrape reads copies. ``text`` is what the HTTP endpoint serves: the same
    samples as ``collect`` gives the registry, written from label strings made
    once per load (prometheus_client's writer takes seconds for 500,000)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.jobs: dict[str, str] = {}  # name -> queue
        self.loaded: dict[str, float] = {}
        self.dispatched: dict[tuple[str, str], float] = {}
        self.failed: dict[tuple[str, str], float] = {}
        self.times: JobTimes | None = None
        # (name, queue) -> '{kcron_job="...",queue="..."}', made once per load
        self._labels: dict[tuple[str, str], str] = {}

    def load(self, jobs: Sequence[Job], default_queue: str) -> None:
        now = self._clock()
        # Cheap on purpose (about 0.1 s for 100,000 jobs): schedules are the
        # background computation's (JobTimes), label strings the next scrape's.
        named = {j.name: j.queue or default_queue for j in jobs}
        old_loaded, old_dispatched, old_failed = self.loaded, self.dispatched, self.failed
        self.loaded = {name: old_loaded.get(name, now) for name in named}
        self.dispatched = {(n, q): old_dispatched.get((n, q), 0.0) for n, q in named.items()}
        self.failed = {(n, q): old_failed.get((n, q), 0.0) for n, q in named.items()}
        self._labels = {}  # made by the next scrape: not on the producer's thread
        self.jobs = named

    def count(self, counts: dict[tuple[str, str], float], job: str, queue: str, n: int) -> None:
        counts[(job, queue)] = counts.get((job, queue), 0.0) + n

    def collect(self) -> Iterator[Metric]:
        dispatched = CounterMetricFamily(
            "kcron_runs_dispatched", "Runs the producer delivered to Kafka.", labels=_JOB
        )
        for (job, queue), value in self.dispatched.copy().items():
            dispatched.add_metric([job, queue], value)
        failed = CounterMetricFamily(
            "kcron_delivery_failures", "Runs Kafka did not accept.", labels=_JOB
        )
        for (job, queue), value in self.failed.copy().items():
            failed.add_metric([job, queue], value)
        yield dispatched
        yield failed
        yield from self._times()

    def _times(self) -> Iterator[Metric]:
        jobs, loaded, times = self.jobs, self.loaded, self.times
        loaded_at = GaugeMetricFamily(
            "kcron_job_loaded_timestamp_seconds", _LOADED_HELP, labels=_JOB
        )
        interval = GaugeMetricFamily("kcron_job_interval_seconds", _INTERVAL_HELP, labels=_JOB)
        next_run = GaugeMetricFamily(
            "kcron_job_next_run_timestamp_seconds", _NEXT_HELP, labels=_JOB
        )
        now = datetime.fromtimestamp(self._clock(), UTC)
        for name, queue in jobs.items():
            loaded_at.add_metric([name, queue], loaded.get(name, 0.0))
            key = times.key(name) if times is not None else None
            if times is None or key is None:
                continue  # the run times are still being computed, or @reboot
            gap = times.interval_s(key)
            if gap is not None:
                interval.add_metric([name, queue], gap)
            nxt = times.next_at(key, now)
            if nxt is not None:
                next_run.add_metric([name, queue], nxt.timestamp())
        yield from (loaded_at, interval, next_run)

    def text(self) -> str:
        """``collect``'s samples in the text format, written fast."""
        jobs, times = self.jobs, self.times
        labels = self._labels
        if not labels and jobs:
            labels = {(n, q): _labelled(n, q) for n, q in jobs.items()}
            if jobs is self.jobs:  # not reloaded meanwhile
                self._labels = labels
        out: list[str] = []
        for name, counts, what in (
            ("kcron_runs_dispatched", self.dispatched, "Runs the producer delivered to Kafka."),
            ("kcron_delivery_failures", self.failed, "Runs Kafka did not accept."),
        ):
            out.append(f"# HELP {name}_total {what}\n# TYPE {name}_total counter\n")
            out.extend(
                f"{name}_total{labels.get(pair) or _labelled(*pair)} {value!r}\n"
                for pair, value in counts.copy().items()
            )
        loaded = self.loaded
        out.append(_header("kcron_job_loaded_timestamp_seconds", _LOADED_HELP))
        out.extend(
            f"kcron_job_loaded_timestamp_seconds{labels[n, q]} {loaded.get(n, 0.0)!r}\n"
            for n, q in jobs.items()
        )
        if times is not None:
            out.extend(self._times_text(jobs, labels, times))
        return "".join(out)

    def _times_text(
        self,
        jobs: dict[str, str],
        labels: dict[tuple[str, str], str],
        times: JobTimes,
    ) -> Iterator[str]:
        now = datetime.fromtimestamp(self._clock(), UTC)
        keyed = [(labels[n, q], k) for n, q in jobs.items() if (k := times.key(n)) is not None]
        yield _header("kcron_job_interval_seconds", _INTERVAL_HELP)
        for lbl, key in keyed:
            gap = times.interval_s(key)
            if gap is not None:
                yield f"kcron_job_interval_seconds{lbl} {gap!r}\n"
        yield _header("kcron_job_next_run_timestamp_seconds", _NEXT_HELP)
        for lbl, key in keyed:
            nxt = times.next_at(key, now)
            if nxt is not None:
                yield f"kcron_job_next_run_timestamp_seconds{lbl} {nxt.timestamp()!r}\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labelled(job: str, queue: str) -> str:
    return f'{{kcron_job="{_escape(job)}",queue="{_escape(queue)}"}}'


def _header(name: str, help_text: str) -> str:
    return f"# HELP {name} {help_text}\n# TYPE {name} gauge\n"


class _Bridge(Collector):
    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        yield from self._registry.collect()


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged."""


class _Superseded(Exception):
    pass


class ProducerMetrics(ProcessMetrics):
    """The scheduler's: its role, what it dispatched, its jobs' times, its queues' groups."""

    def __init__(
        self,
        queue: str = DEFAULT_QUEUE,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__("producer", queue, registry)
        r = self.registry
        self.active = Gauge(
            "kcron_producer_active",
            "1: this process is the active producer; 0: standby or not yet elected.",
            registry=r,
        )
        self.consumers = Gauge(
            "kcron_queue_consumers", "Members of the queue's worker group.", ["queue"], registry=r
        )
        self.lag = Gauge(
            "kcron_queue_lag_messages",
            "Messages of the queue topic its worker group has not committed yet.",
            ["queue"],
            registry=r,
        )
        self._jobs = _JobSeries(clock)
        # Served: the registry above, then the job series' own fast text. The
        # registry tests and callers see holds both.
        self._served = r
        self.registry = CollectorRegistry()
        self.registry.register(_Bridge(r))
        self.registry.register(self._jobs)
        self._generation = 0  # of the job set: a late computation of an old one is dropped

    def serve(self, port: int, addr: str) -> None:
        def app(_environ: object, start_response: Callable[..., object]) -> list[bytes]:
            body = generate_latest(self._served) + self._jobs.text().encode()
            start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
            return [body]

        with _listening(port, addr):
            server = make_server(addr, port, app, ThreadingWSGIServer, handler_class=_Quiet)
        threading.Thread(target=server.serve_forever, name="kcron-metrics", daemon=True).start()

    def set_active(self, active: bool) -> None:
        self.active.set(1 if active else 0)

    def dispatched(self, job: str, queue: str, n: int = 1) -> None:
        self._jobs.count(self._jobs.dispatched, job, queue, n)

    def delivery_failed(self, job: str, queue: str, n: int = 1) -> None:
        self._jobs.count(self._jobs.failed, job, queue, n)

    def load(self, jobs: Sequence[Job], default_queue: str) -> None:
        """Every job of the file at 0 (on load and on each reload): ``increase()`` of
        a counter born at its first failure would miss that failure."""
        self._jobs.load(jobs, default_queue)
        self._generation += 1

    def compute_times(
        self,
        jobs: Iterable[Job],
        now: datetime,
        default_tz: tzinfo,
        pause: Callable[[int], None] | None = None,
    ) -> None:
        """The jobs' intervals and next runs (seconds for a big file; see kcron/jobtimes.py)."""
        generation = self._generation
        times = JobTimes(jobs, now, default_tz, pause)
        if generation == self._generation:
            self._jobs.times = times

    def compute_times_in_background(
        self,
        jobs: Sequence[Job],
        clock: Callable[[], datetime],
        default_tz: tzinfo,
        after: threading.Event | None = None,
    ) -> threading.Thread:
        """``compute_times`` in a daemon thread, once ``after`` is set (the producer
        took its role: a take-over is not slowed down) or after AFTER_WAIT_S. It
        sleeps as long as it works, so a tick never waits long for the interpreter."""
        last = [time.monotonic()]
        generation = self._generation

        def pause(done: int) -> None:
            if self._generation != generation:
                raise _Superseded  # reloaded meanwhile: that load's thread computes
            if done % 10 == 0:
                worked = time.monotonic() - last[0]
                time.sleep(worked)
                last[0] = time.monotonic()

        def compute() -> None:
            if after is not None:
                after.wait(AFTER_WAIT_S)
            last[0] = time.monotonic()
            with contextlib.suppress(_Superseded):
                self.compute_times(jobs, clock(), default_tz, pause)

        thread = threading.Thread(target=compute, name="kcron-job-times", daemon=True)
        thread.start()
        return thread

    def queue_seen(self, queue: str, consumers: int | None, lag: int | None) -> None:
        """One queue's group as the last probe saw it; None: not known (series removed)."""
        for gauge, value in ((self.consumers, consumers), (self.lag, lag)):
            if value is not None:
                gauge.labels(queue).set(value)
            else:
                with contextlib.suppress(KeyError):  # never seen, or already removed
                    gauge.remove(queue)


class WorkerMetrics(ProcessMetrics):
    """A worker's: runs by outcome, timing, load, hand-offs, refused messages.

    ``queue`` is the worker's topic. Job names come from the messages, so at
    most ``max_jobs`` distinct ones become labels; later ones are ``_other``.
    """

    def __init__(
        self,
        queue: str = DEFAULT_QUEUE,
        max_jobs: int = 500,
        registry: CollectorRegistry | None = None,
    ) -> None:
        super().__init__("worker", queue, registry)
        self._max_jobs = max_jobs
        self._seen: set[str] = set()
        self._warned = False
        self._build(self.registry, queue)

    def _build(self, r: CollectorRegistry, q: str) -> None:
        self.runs = Counter(
            "kcron_runs", "Runs finished, by outcome (skipped: overlap=forbid, not started).",
            [*_JOB, "outcome"], registry=r,
        )  # fmt: skip
        self.duration = Histogram(
            "kcron_run_duration_seconds", "How long runs took.", _JOB, buckets=_SECONDS, registry=r
        )
        self.lateness = Histogram(
            "kcron_run_lateness_seconds", "Start time minus the due time.", ["queue"],
            buckets=_SECONDS, registry=r,
        ).labels(q)  # fmt: skip
        self.late = Counter(
            "kcron_runs_late", "Runs started well after they were due.", _JOB, registry=r
        )
        self.running = Gauge(
            "kcron_runs_running", "Runs executing now.", ["queue"], registry=r
        ).labels(q)
        self.waiting = Gauge(
            "kcron_runs_waiting", "Runs taken from Kafka and not started yet.", ["queue"],
            registry=r,
        ).labels(q)  # fmt: skip
        self.slots = Gauge(
            "kcron_worker_slots", "Runs this worker may execute at once.", ["queue"], registry=r
        ).labels(q)
        self.partitions = Gauge(
            "kcron_worker_partitions", "Partitions assigned to this worker now.", ["queue"],
            registry=r,
        ).labels(q)  # fmt: skip
        self.last_success = Gauge(
            "kcron_job_last_success_timestamp_seconds",
            "Unix time the job last succeeded on this worker.", _JOB, registry=r,
        )  # fmt: skip
        self.retries = Counter(
            "kcron_retries", "Failed runs sent to the retry topic.", _JOB, registry=r
        )
        self.dead_letters = Counter(
            "kcron_dead_letters",
            "Runs and messages sent to the dead-letter topic, by kind "
            "(exhausted, permanent, undecodable, rejected).",
            [*_JOB, "kind"], registry=r,
        )  # fmt: skip
        self.undecodable = Counter(
            "kcron_undecodable_messages", "Messages skipped as not a valid run.", ["queue"],
            registry=r,
        ).labels(q)  # fmt: skip
        self.rejected = Counter(
            "kcron_runs_rejected", "Messages a worker refused to run, by reason.",
            ["queue", "reason"], registry=r,
        )  # fmt: skip
        for reason in REFUSALS:
            self.rejected.labels(q, reason)
        self.handoff_failures = Counter(
            "kcron_handoff_failures",
            "Retries, dead letters and run events Kafka did not accept.", ["topic"], registry=r,
        )  # fmt: skip
        self.delivery_failures = Counter(
            "kcron_delivery_failures", "Retries and dead letters Kafka did not accept.", _JOB,
            registry=r,
        )  # fmt: skip

    def job(self, name: str) -> str:
        """The label for job ``name``; a new one starts with succeeded and failed at 0."""
        if name in self._seen:
            return name
        if len(self._seen) >= self._max_jobs:
            if not self._warned:
                self._warned = True
                log.warning(
                    "too many distinct job names for metric labels; counting the rest as _other",
                    extra=fields(max_jobs=self._max_jobs, job=name),
                )
            name = OTHER_JOBS
        self._seen.add(name)
        for outcome in ("succeeded", "failed"):
            self.runs.labels(name, self.queue, outcome)
        return name

    def finished(self, job: str, outcome: str, duration_s: float, ended_at: float | None) -> None:
        """A run's end; ``ended_at`` (unix time) when it succeeded."""
        name = self.job(job)
        self.runs.labels(name, self.queue, outcome).inc()
        if outcome != "skipped":
            self.duration.labels(name, self.queue).observe(duration_s)
        if ended_at is not None:
            self.last_success.labels(name, self.queue).set(ended_at)

    def started(self, job: str, lateness_s: float, late: bool) -> None:
        self.lateness.observe(max(0.0, lateness_s))
        if late:
            self.late.labels(self.job(job), self.queue).inc()

    def retried(self, job: str) -> None:
        self.retries.labels(self.job(job), self.queue).inc()

    def dead_lettered(self, job: str, kind: str) -> None:
        """``job`` "" for a message that had none (or was not ours to trust)."""
        self.dead_letters.labels(self.job(job) if job else "", self.queue, kind).inc()

    def refused(self, reason: str) -> None:
        self.rejected.labels(self.queue, reason).inc()

    def delivery_failed(self, job: str) -> None:
        self.delivery_failures.labels(self.job(job), self.queue).inc()


# The old name, for the dispatchers' callers written before the split (the tracing
# tests on main build TransactionalDispatcher(..., Metrics(), ...)); new code names
# ProducerMetrics or WorkerMetrics.
Metrics = ProducerMetrics
