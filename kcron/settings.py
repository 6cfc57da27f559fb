"""The one settings object.

Built once per process by the CLI: the defaults below, overridden by
``KCRON_*`` environment variables, overridden by command-line flags (click
resolves env vs. flag; ``from_values`` fills the rest from the defaults).
Everything downstream receives it explicitly; nothing reads the environment
on import.
"""

from __future__ import annotations

import dataclasses
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import tzinfo
from typing import Any

from kcron.errors import ConfigError
from kcron.topics import queue_name_problem
from kcron.tracing import TracingConfig

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
MISFIRE_POLICIES = ("skip", "once", "all")  # the values of kcron.misfire.Policy
_AT_LEAST_ONE = (
    "partitions",
    "replication_factor",
    "concurrency",
    "prefetch",
    "max_output_bytes",
    "session_timeout_ms",
    "fetch_wait_max_ms",
    "max_queues",
    "metrics_max_jobs",
)
DEFAULT_TOPIC = "kcron.jobs"
DEFAULT_GROUP = "kcron"


def group_for(queue: str, group: str | None = None) -> str:
    """The workers' group of ``queue`` (``group``: --group, when the deployment
    sets one): Settings.consumer_group, and the producer's view of each queue's
    group for its metrics (kcron/lag.py)."""
    if group:
        return group
    return DEFAULT_GROUP if queue == DEFAULT_TOPIC else f"{DEFAULT_GROUP}-{queue}"


@dataclass(frozen=True)
class Settings:
    # Kafka, common to every command
    bootstrap_servers: str = "127.0.0.1:9092"
    # The default queue: jobs without queue= go here. It also names the
    # producer's <topic>.state, for the runs of every queue.
    topic: str = DEFAULT_TOPIC
    kafka_options: tuple[tuple[str, str], ...] = ()  # extra librdkafka properties (-X k=v)
    log_format: str = "text"
    log_level: str = "INFO"
    instance: str = ""  # tag on every log line; defaults to supervisord's process name or host:pid

    # producer / backfill
    partitions: int = 2
    replication_factor: int = 1
    timezone: str = "UTC"
    watch_interval_s: float = 1.0
    # Send each run this long before it is due; the worker holds it until
    # scheduled_for, so Kafka's latency is not added to the start time.
    dispatch_ahead_s: float = 1.0
    # Producers with the same id elect one active producer and share its
    # dispatch state; None means the job file's name (kcron/producer.py).
    producer_id: str | None = None
    # Ticks missed while no producer ran (kcron/misfire.py): skip, once, all.
    misfire: str = "once"
    # Missed ticks older than this are skipped, and logged.
    misfire_grace_s: float = 3600.0
    # Distinct queue= names a job file may hold (check, produce, backfill, dlq):
    # each is a topic, a retry and a dead-letter topic, and a pool of workers.
    max_queues: int = 50

    # consumer
    # None: one group per queue, see consumer_group.
    group: str | None = None
    # Jobs due at the same minute start together, as under cron, instead of
    # queueing behind one another (or behind one long job) on their worker.
    concurrency: int = 8
    # Runs a worker takes from one partition before it pauses fetching it:
    # queued for a slot, held until due, or waiting out a retry backoff. Large
    # enough that a herd due the same minute is in memory when the minute
    # comes, and that pausing (which drops librdkafka's prefetched batch, so
    # resuming fetches it again) stays rare; small enough to bound memory.
    prefetch: int = 1000
    grace_s: float = 30.0
    max_output_bytes: int = 1024 * 1024
    session_timeout_ms: int = 45000
    # Real Kafka answers a fetch as soon as data arrives; this bounds the idle
    # wait, so keep it short enough not to delay a run that lands while idle.
    fetch_wait_max_ms: int = 100
    metrics_port: int | None = None  # serve Prometheus metrics here when set
    # Added to metrics_port: several kcron nodes sharing one network namespace
    # (host networking) keep their fixed port plans apart.
    metrics_port_offset: int = 0
    metrics_addr: str = "127.0.0.1"
    # False (KCRON_METRICS=false) serves none even with a port: supervisord and
    # the image always pass one (docs/monitoring.md).
    metrics: bool = True
    # Distinct job names a worker labels its metrics with; later ones count as
    # "_other" (job names come from the messages, so they are not bounded).
    metrics_max_jobs: int = 500
    # How often every process checks the broker answers (kcron_broker_up), and
    # the producer reads its queues' groups (consumers, lag); with metrics only.
    broker_probe_interval_s: float = 5.0
    # Backoff between attempts of a failed run (kcron/retry.py): after attempt
    # n the next waits about min(cap, base * 2**(n-1)), half of it jittered.
    retry_base_s: float = 10.0
    retry_cap_s: float = 300.0
    # Whom jobs run as (kcron/runas.py): a worker started as root switches
    # each job to this user, and refuses to run them as root unless
    # allow_root_jobs says that is meant.
    run_as: str | None = None
    allow_root_jobs: bool = False
    # Run events (<topic>.events, kcron/events.py): the topic's retention.ms
    # when the worker creates it; an existing topic keeps its own.
    events_retention_s: float = 7 * 86400.0

    # Commands this worker agrees to run (kcron/allowlist.py); None: any.
    allow_commands: str | None = None

    # Signed runs (kcron/signing.py, docs/security.md): producers, backfill,
    # requeue and workers share the key file; None: unsigned, as before.
    signing_key_file: str | None = None
    # The replay window: with a key, a worker refuses a signed run written
    # (produced_at) longer ago than this. None: no bound (docs/security.md).
    max_run_age_s: float | None = None

    # Commands that read a topic to its end (kcron dlq) stop once nothing has
    # arrived for this long: the end is found by reading, not from watermarks.
    read_idle_s: float = 2.0

    # OpenTelemetry tracing (kcron/tracing.py): read by the CLI from the
    # standard OTEL_* environment, not from a flag; None: off.
    tracing: TracingConfig | None = None

    def __post_init__(self) -> None:
        problems = [*self._choice_problems(), *self._range_problems()]
        if problems:
            raise ConfigError("invalid settings: " + "; ".join(problems))

    def _choice_problems(self) -> list[str]:
        problems: list[str] = []
        if self.log_format not in LOG_FORMATS:
            problems.append(f"log format must be one of {', '.join(LOG_FORMATS)}")
        if self.log_level.upper() not in LOG_LEVELS:
            problems.append(f"log level must be one of {', '.join(LOG_LEVELS)}")
        if self.misfire not in MISFIRE_POLICIES:
            problems.append(f"misfire must be one of {', '.join(MISFIRE_POLICIES)}")
        if not self.bootstrap_servers.strip():
            problems.append("bootstrap servers must not be empty")
        if not self.topic.strip():
            problems.append("topic must not be empty")
        elif (problem := queue_name_problem(self.topic)) is not None:
            problems.append(f"topic '{self.topic[:60]}': {problem}")
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            problems.append(f"unknown time zone '{self.timezone}'")
        return problems

    def _range_problems(self) -> list[str]:
        problems = [
            f"{name.replace('_', '-')} must be at least 1"
            for name in _AT_LEAST_ONE
            if getattr(self, name) < 1
        ]
        if self.grace_s < 0 or self.watch_interval_s <= 0:
            problems.append("grace must be >= 0 and watch interval > 0")
        if self.broker_probe_interval_s < 0.1:
            problems.append("broker probe interval must be at least 0.1 seconds")
        if self.read_idle_s < 0.1:
            problems.append("idle must be at least 0.1 seconds")
        if self.misfire_grace_s < 0:
            problems.append("misfire grace must be >= 0")
        if self.events_retention_s <= 0:
            problems.append("events retention must be > 0")
        if not 0 < self.retry_base_s <= self.retry_cap_s:
            problems.append("retry base must be > 0 and at most the retry cap")
        if self.max_run_age_s is not None and self.max_run_age_s < 1:
            problems.append("max run age must be at least 1 second")
        port = (self.metrics_port or 1) + self.metrics_port_offset
        if not 1 <= port <= 65535:
            problems.append("metrics port plus its offset must be between 1 and 65535")
        if not 0 <= self.dispatch_ahead_s <= 30:
            problems.append("dispatch-ahead must be between 0 and 30 seconds")
        return problems

    @property
    def consumer_group(self) -> str:
        """The workers' group: --group if given, else one per queue.

        Workers of different queues never share a group, so a rebalance in one
        pool does not pause another. The default topic keeps the group kcron
        always had, so existing deployments keep their committed offsets.
        """
        return group_for(self.topic, self.group)

    @property
    def served_metrics_port(self) -> int | None:
        """Where this process serves its metrics, or None."""
        if not self.metrics or self.metrics_port is None:
            return None
        return self.metrics_port + self.metrics_port_offset

    @property
    def tz(self) -> tzinfo:
        return zoneinfo.ZoneInfo(self.timezone)

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> Settings:
        """Defaults, overridden by every value that is not None."""
        known = {f.name for f in dataclasses.fields(cls)}
        given = {k: v for k, v in values.items() if k in known and v is not None}
        if "log_level" in given:
            given["log_level"] = str(given["log_level"]).upper()
        return cls(**given)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)
