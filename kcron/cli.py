"""The ``kcron`` command line. Every option also reads a ``KCRON_*`` variable."""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import click

from kcron import __version__, jobfile, misfire, schedule
from kcron.deadletter import build_dlq_group
from kcron.errors import ExitCode, JobFileError, KcronError
from kcron.experiment import experiment_group
from kcron.log import configure, fields
from kcron.message import format_time
from kcron.settings import LOG_FORMATS, LOG_LEVELS, Settings
from kcron.when import parse_when

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("kcron.cli")
_CHECK_ECHO_LINES = 5000


def _option(*names: str, env: str, **kwargs: Any) -> Callable[[F], F]:
    return click.option(*names, envvar=f"KCRON_{env}", show_envvar=True, **kwargs)


def common_options(func: F) -> F:
    """Options every Kafka-facing command shares."""
    decorators = [
        _option(
            "--bootstrap-servers",
            env="BOOTSTRAP_SERVERS",
            metavar="HOST:PORT[,...]",
            help="Kafka bootstrap servers.  [default: 127.0.0.1:9092]",
        ),
        _option("--topic", env="TOPIC", help="Topic that carries runs.  [default: kcron.jobs]"),
        _option(
            "-X",
            "--kafka-option",
            "kafka_options",
            env="KAFKA_OPTIONS",
            multiple=True,
            metavar="KEY=VALUE",
            help="Extra librdkafka property, e.g. -X security.protocol=SASL_SSL. Repeatable; "
            "in the env var, separate with spaces.",
        ),
        _option(
            "--log-format",
            env="LOG_FORMAT",
            type=click.Choice(LOG_FORMATS),
            help="Log as text lines or JSON objects.  [default: text]",
        ),
        _option(
            "--log-level",
            env="LOG_LEVEL",
            type=click.Choice(LOG_LEVELS, case_sensitive=False),
            help="Minimum level to log.  [default: INFO]",
        ),
        _option(
            "--instance",
            env="INSTANCE",
            help="Name on every log line.  [default: supervisord's process name, else COMMAND-PID]",
        ),
    ]
    for decorate in reversed(decorators):
        func = decorate(func)
    return func


def metrics_options(func: F) -> F:
    func = _option(
        "--metrics-addr",
        env="METRICS_ADDR",
        help="Address for --metrics-port (0.0.0.0 in a container).  [default: 127.0.0.1]",
    )(func)
    return _option(
        "--metrics-port",
        env="METRICS_PORT",
        type=click.IntRange(1, 65535),
        help="Serve Prometheus metrics on this port.  [default: off]",
    )(func)


def partitions_option(func: F) -> F:
    return _option(
        "--partitions",
        env="PARTITIONS",
        type=click.IntRange(1),
        help="Partitions when creating the topic.  [default: 2]",
    )(func)


def schedule_options(func: F) -> F:
    """The job file and how its topic is created: shared by produce and backfill."""
    func = _option(
        "--timezone", env="TIMEZONE", help="Zone the schedules are evaluated in.  [default: UTC]"
    )(func)
    func = _option(
        "--replication-factor",
        env="REPLICATION_FACTOR",
        type=click.IntRange(1),
        help="Replication factor when creating the topic.  [default: 1]",
    )(func)
    func = partitions_option(func)
    return click.option(
        "--jobs",
        envvar="KCRON_JOBS",
        show_envvar=True,
        required=True,
        type=click.Path(dir_okay=False, path_type=str),
        help="The job file.",
    )(func)


def _parse_kafka_options(values: tuple[str, ...] | None) -> tuple[tuple[str, str], ...] | None:
    if not values:
        return None
    pairs = []
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"'{value}' is not KEY=VALUE", param_hint="-X/--kafka-option")
        pairs.append((key.strip(), val))
    return tuple(pairs)


def build_settings(command: str, values: dict[str, Any]) -> Settings:
    """Defaults < env < flags, resolved once; then logging is configured from it."""
    values = dict(values)
    values["kafka_options"] = _parse_kafka_options(values.get("kafka_options"))
    if not values.get("instance"):
        values["instance"] = os.environ.get("SUPERVISOR_PROCESS_NAME") or f"{command}-{os.getpid()}"
    settings = Settings.from_values(values)
    configure(settings.log_format, settings.log_level, settings.instance)
    return settings


def handle_errors(func: F) -> F:
    """Turn kcron's errors into a clear message and a named exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except JobFileError as exc:
            for err in exc.errors:
                click.echo(str(err), err=True)
            count = len(exc.errors)
            click.echo(f"kcron: {count} error{'s' if count != 1 else ''} in job file", err=True)
            sys.exit(exc.exit_code)
        except KcronError as exc:
            click.echo(f"kcron: error: {exc}", err=True)
            sys.exit(exc.exit_code)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="kcron")
def cli() -> None:
    """kcron: a distributed cron on Apache Kafka.

    One producer turns a job file into run messages; any number of workers
    in one consumer group run them. Start with `kcron check FILE`.
    """


@cli.command()
@click.argument("jobs", type=click.Path(dir_okay=False, path_type=str), envvar="KCRON_JOBS")
@_option(
    "--count",
    env="CHECK_COUNT",
    type=click.IntRange(0, 100),
    default=3,
    show_default=True,
    help="How many upcoming run times to show per job.",
)
@_option(
    "--timezone",
    env="TIMEZONE",
    default="UTC",
    show_default=True,
    help="Zone the schedules are evaluated in (jobs may override with tz=).",
)
@_option(
    "--format",
    "output",
    env="CHECK_FORMAT",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Human-readable listing or JSON.",
)
@handle_errors
def check(jobs: str, count: int, timezone: str, output: str) -> None:
    """Validate a job file and show each job with its next run times.

    Exits 0 when every line is valid; otherwise lists every bad line as
    FILE:LINE: reason and exits 65.
    """
    settings = Settings.from_values({"timezone": timezone})
    parsed = jobfile.load(jobs)
    now = datetime.now(UTC)
    listing: list[dict[str, Any]] = []
    # Big files repeat a few schedules over many jobs: compute each one's times once.
    upcoming_by_schedule: dict[tuple[str, str | None], list[str]] = {}
    for job in parsed.jobs:
        if job.is_reboot:
            upcoming = ["at producer start"]
        else:
            key = (job.cron_expression, job.tz)
            if key not in upcoming_by_schedule:
                times = schedule.next_runs(job, now, count, settings.tz)
                upcoming_by_schedule[key] = [format_time(t) for t in times]
            upcoming = upcoming_by_schedule[key]
        listing.append(
            {
                "name": job.name,
                "schedule": job.schedule,
                "command": job.command,
                "source": job.source,
                "options": job.options(),
                "next": upcoming,
            }
        )
    if output == "json":
        click.echo(json.dumps({"file": jobs, "jobs": listing}, indent=2))
        return
    lines: list[str] = []
    for item in listing:
        lines.append(f"{click.style(item['name'], bold=True)}  ({item['source']})")
        lines.append(f"  schedule: {item['schedule']}")
        lines.append(f"  command:  {item['command']}")
        if item["options"]:
            opts = " ".join(f"{k}={v}" for k, v in item["options"].items())
            lines.append(f"  options:  {opts}")
        if count:
            lines.append(f"  next:     {', '.join(item['next'])}")
        if len(lines) >= _CHECK_ECHO_LINES:  # one echo per line is slow for big files
            click.echo("\n".join(lines))
            lines.clear()
    if lines:
        click.echo("\n".join(lines))
    noun = "job" if len(listing) == 1 else "jobs"
    click.echo(f"{jobs}: OK, {len(listing)} {noun} (times in UTC, schedules in {timezone})")


@cli.command()
@schedule_options
@_option(
    "--dispatch-ahead",
    "dispatch_ahead_s",
    env="DISPATCH_AHEAD",
    type=click.FloatRange(0, 30),
    help="Send runs this many seconds early; workers hold them until they are due, so "
    "broker latency does not delay the start. 0 sends at the due time.  [default: 1]",
)
@_option(
    "--session-timeout-ms",
    env="SESSION_TIMEOUT_MS",
    type=click.IntRange(1),
    help="Session of the producers' election group: how long a crashed active producer "
    "holds its role before a standby takes over.  [default: 45000]",
)
@_option(
    "--producer-id",
    env="PRODUCER_ID",
    help="Identity of this job set: producers with the same id elect one active producer "
    "and fence any other; its dispatch state is kept under this id.  [default: the job "
    "file's name]",
)
@_option(
    "--misfire",
    env="MISFIRE",
    type=click.Choice([p.value for p in misfire.Policy]),
    help="Ticks missed while no producer ran: skip them, run the latest once, or run all."
    "  [default: once]",
)
@_option(
    "--misfire-grace",
    env="MISFIRE_GRACE",
    metavar="DURATION",
    help="Ticks missed by longer than this are skipped (and logged).  [default: 1h]",
)
@metrics_options
@common_options
@handle_errors
def produce(jobs: str, **values: Any) -> None:
    """Run the scheduler: write one message per due run of JOBS.

    Reloads the job file on SIGHUP and when it changes (a bad file keeps the
    last good job set). SIGTERM or SIGINT flushes pending runs and exits 0.
    Producers with the same --producer-id elect one active producer; the
    others stand by and take over when it stops.
    """
    from kcron.producer import ProducerService

    grace_text = values.pop("misfire_grace")
    if grace_text is not None:
        try:
            values["misfire_grace_s"] = jobfile.parse_duration(grace_text)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--misfire-grace") from None
    settings = build_settings("produce", values)
    service = ProducerService(settings, jobs)
    sys.exit(service.run())


@cli.command()
@schedule_options
@click.option(
    "--from",
    "start",
    required=True,
    metavar="TIME",
    help="Window start, inclusive: ISO 8601 (naive = --timezone), now, now-1h, -30m.",
)
@click.option(
    "--to", "end", default="now", show_default=True, metavar="TIME", help="Window end, exclusive."
)
@click.option("--dry-run", is_flag=True, help="List the runs instead of producing them.")
@common_options
@handle_errors
def backfill(jobs: str, start: str, end: str, dry_run: bool, **values: Any) -> None:
    """Produce every run of JOBS due in [--from, --to) now, with true scheduled times.

    For catch-up after an outage, demos and experiments. @reboot jobs are skipped.
    """
    from kcron import producer

    settings = build_settings("backfill", values)
    parsed = jobfile.load(jobs)
    now = datetime.now(UTC)
    try:
        window = (
            parse_when(start, now, settings.tz),
            parse_when(end, now, settings.tz),
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if window[1] <= window[0]:
        raise click.BadParameter("--to must be later than --from")
    if window[1] > now and not dry_run:
        # Future runs are the producer's: backfilling them too would run them twice.
        raise click.BadParameter(
            "--to is in the future; backfill produces runs that are already due "
            "(use --dry-run to preview a future window)"
        )
    runs = schedule.runs_between(parsed.jobs, window[0], window[1], settings.tz)
    if dry_run:
        for run in runs:
            click.echo(f"{format_time(run.scheduled_for)}  {run.job.name}  {run.job.command}")
        click.echo(f"{len(runs)} runs (dry run, nothing produced)", err=True)
        return
    show = sys.stderr.isatty()
    with click.progressbar(
        length=len(runs), label="backfilling", file=sys.stderr, hidden=not show
    ) as bar:
        count = producer.backfill(settings, parsed.jobs, runs, progress=bar.update)
    log.info(
        "backfill done",
        extra=fields(
            runs=count,
            jobs=len(parsed.jobs),
            topic=settings.topic,
            start=format_time(window[0]),
            end=format_time(window[1]),
        ),
    )


@cli.command()
@_option(
    "--group",
    env="GROUP",
    help="Consumer group; workers in one group share the runs.  [default: kcron]",
)
@_option(
    "--concurrency",
    env="CONCURRENCY",
    type=click.IntRange(1),
    help="Runs executed at once by this worker.  [default: 8]",
)
@_option(
    "--prefetch",
    env="PREFETCH",
    type=click.IntRange(1),
    help="Runs taken from one partition ahead of running them (queued, held until due "
    "or waiting to retry) before fetching pauses.  [default: 1000]",
)
@_option(
    "--grace",
    "grace_s",
    env="GRACE",
    type=click.FloatRange(0),
    help="Seconds running jobs get to finish on SIGTERM or rebalance.  [default: 30]",
)
@_option(
    "--max-output-bytes",
    env="MAX_OUTPUT_BYTES",
    type=click.IntRange(1),
    help="Output logged per run; the rest is counted, not kept.  [default: 1048576]",
)
@_option(
    "--session-timeout-ms",
    env="SESSION_TIMEOUT_MS",
    type=click.IntRange(1),
    help="Group session timeout.  [default: 45000]",
)
@_option(
    "--fetch-wait-max-ms",
    env="FETCH_WAIT_MAX_MS",
    type=click.IntRange(1),
    help="Longest idle fetch wait.  [default: 100]",
)
@partitions_option
@_option(
    "--retry-base",
    "retry_base_s",
    env="RETRY_BASE",
    type=click.FloatRange(0, min_open=True),
    help="Backoff before the 2nd attempt of a failed run, in seconds; it doubles for each "
    "further attempt (half of it jittered).  [default: 10]",
)
@_option(
    "--retry-cap",
    "retry_cap_s",
    env="RETRY_CAP",
    type=click.FloatRange(0, min_open=True),
    help="Longest backoff between attempts, in seconds.  [default: 300]",
)
@metrics_options
@common_options
@handle_errors
def consume(**values: Any) -> None:
    """Run a worker: execute runs from the topic, committing only after they finish.

    SIGTERM or SIGINT stops taking runs, lets running ones finish within
    --grace, commits and exits 0.
    """
    from kcron.worker import Worker

    settings = build_settings("consume", values)
    sys.exit(Worker(settings).run())


@cli.command()
@_option(
    "--host",
    env="BROKER_HOST",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on.",
)
@_option(
    "--port",
    env="BROKER_PORT",
    type=click.IntRange(1, 65535),
    default=9092,
    show_default=True,
    help="Port to listen on.",
)
@handle_errors
def broker(host: str, port: int) -> None:
    """Run the embedded dev broker (Tansu, memory storage) in the foreground.

    A Kafka-compatible broker for development and tests: nothing survives a
    restart. Needs the dev extra (requirements-dev.txt).
    """
    from kcron.broker import EmbeddedBroker

    configure("text", "INFO", "broker")
    embedded = EmbeddedBroker(host, port).start()
    click.echo(
        f"kcron: embedded broker listening on {embedded.bootstrap} (memory storage)", err=True
    )
    stop = {"now": False}

    def on_signal(signum: int, _frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    assert embedded.process is not None
    while not stop["now"] and embedded.process.poll() is None:
        time.sleep(0.2)
    code = embedded.process.poll()
    embedded.stop()
    if code not in (None, 0) and not stop["now"]:
        click.echo(f"kcron: error: embedded broker exited with code {code}", err=True)
        sys.exit(ExitCode.UNAVAILABLE)


cli.add_command(experiment_group)
cli.add_command(build_dlq_group())


def main() -> None:
    cli(prog_name="kcron")
