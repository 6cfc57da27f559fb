"""``kcron runs``, ``kcron jobs`` and ``kcron trigger``: what ran, what runs, run now.

They read the run events the workers write to ``<queue>.events``
(kcron/events.py) without joining a consumer group. Kafka is imported only
when a command runs (kcron.runlog), so ``--help`` loads no Kafka client.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import click

from kcron import events, history, jobfile
from kcron.cli_dlq import covered_queues, idle_option
from kcron.cli_dlq import jobs_option as optional_jobs_option
from kcron.errors import NotFound
from kcron.options import (
    build_settings,
    common_options,
    handle_errors,
    jobs_option,
    max_queues_option,
    option,
    setting,
    timezone_option,
)
from kcron.settings import Settings
from kcron.when import parse_when


def _duration(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return jobfile.parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


# For kcron consume: the worker creates <topic>.events with this retention.
events_retention_option = setting(
    "--events-retention",
    "events_retention_s",
    field="events_retention_s",
    env="EVENTS_RETENTION",
    metavar="DURATION",
    callback=_duration,
    help="How long <topic>.events keeps run events (kcron runs, kcron jobs), set when the "
    "worker creates it: 7d, 12h, 3600.",
    default_text="7d",
)

json_option = option("--json", "as_json", env="JSON", is_flag=True, help="Print JSON for scripts.")


def _queues(settings: Settings, jobs: str | None, queue: str | None) -> list[str]:
    return [queue] if queue else covered_queues(settings, jobs)


def _since(text: str | None, settings: Settings) -> datetime | None:
    if text is None:
        return None
    try:
        return parse_when(text, datetime.now(UTC), settings.tz)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None


@click.command("runs")
@click.argument("run_id", required=False)
@option("--job", env="RUNS_JOB", help="Only the runs of this job.")
@option(
    "--queue",
    env="RUNS_QUEUE",
    help="Only this queue's runs (default: --topic's, or every queue of --jobs).",
)
@option("--outcome", env="RUNS_OUTCOME", help="Only runs now in this state: failed, running, ...")
@option("--since", env="RUNS_SINCE", metavar="TIME", help="Only runs with events since TIME: "
        "ISO 8601, now-1h, -24h.")  # fmt: skip
@option("--limit", env="RUNS_LIMIT", type=click.IntRange(1), default=50, show_default=True,
        help="Show at most N runs, the newest.")  # fmt: skip
@json_option
@optional_jobs_option
@max_queues_option
@timezone_option
@idle_option
@common_options
@handle_errors
def runs(
    run_id: str | None,
    job: str | None,
    queue: str | None,
    outcome: str | None,
    since: str | None,
    limit: int,
    as_json: bool,
    jobs: str | None,
    **values: Any,
) -> None:
    """Recent runs, newest first, one line each (its latest attempt); RUN_ID: every attempt
    of that run, with output tails.

    Read from <queue>.events: of --topic, or with a job file (--jobs) of the default topic
    and every queue it names, or of --queue alone. Exits 66 if RUN_ID is not there.
    """
    from kcron import runlog

    settings = build_settings("runs", values, log_to_stderr=True)
    queues = _queues(settings, jobs, queue)
    start = _since(since, settings)
    views = events.fold(runlog.read_events(settings, queues, start))
    if run_id is not None:
        view = events.find(views, run_id)
        if view is None:
            where = ", ".join(events.events_topic(q) for q in queues)
            raise NotFound(f"no run with id {run_id} in {where} ({len(views)} runs read)")
        click.echo(json.dumps(view.events, indent=2) if as_json else history.run_detail(view))
        return
    shown = events.select(views, job=job, outcome=outcome, since=start, limit=limit)
    if as_json:
        click.echo(json.dumps([v.to_json() for v in shown], indent=2))
        return
    if shown:
        click.echo(history.runs_table(shown, with_queue=len(queues) > 1))
    where = ", ".join(events.events_topic(q) for q in queues)
    click.echo(f"{len(shown)} of {len(views)} runs in {where}", err=True)


@click.command("jobs")
@jobs_option
@json_option
@max_queues_option
@timezone_option
@idle_option
@common_options
@handle_errors
def jobs_command(jobs: str, as_json: bool, **values: Any) -> None:
    """Every job of the file: schedule, queue, next run, last run, last outcome, active runs.

    Like kubectl get cronjobs. The last run and ACTIVE (runs started and not
    finished) come from the events of the default topic and every queue of the file.
    """
    from kcron import runlog

    settings = build_settings("jobs", values, log_to_stderr=True)
    parsed = jobfile.load(jobs, max_queues=settings.max_queues)
    queues = covered_queues(settings, jobs)
    views = events.fold(runlog.read_events(settings, queues))
    rows = history.job_rows(parsed.jobs, views, datetime.now(UTC), settings.tz, settings.topic)
    click.echo(json.dumps(rows, indent=2) if as_json else history.jobs_table(rows))


@click.command("trigger")
@click.argument("job_name", metavar="JOB")
@jobs_option
@max_queues_option
@common_options
@handle_errors
def trigger(job_name: str, jobs: str, **values: Any) -> None:
    """Run JOB of the job file now, once, through its queue (its attempts, timeout).

    The run is marked manual (trigger "manual" in its message and its events)
    and leaves the schedule alone. Exits 66 if the file has no such job.
    """
    from kcron import runlog

    settings = build_settings("trigger", values, log_to_stderr=True)
    parsed = jobfile.load(jobs, max_queues=settings.max_queues)
    job = next((j for j in parsed.jobs if j.name == job_name), None)
    if job is None:
        names = ", ".join(j.name for j in parsed.jobs[:10])
        raise NotFound(f"no job named {job_name} in {jobs} (jobs: {names})")
    msg = runlog.trigger(settings, job)
    click.echo(f"triggered run {msg.id} of job {job.name} on {msg.queue} (manual)")
