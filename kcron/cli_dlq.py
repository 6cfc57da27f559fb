"""``kcron dlq``: the dead-letter commands.

Kafka is imported only when a command runs (kcron.deadletter), so that
``kcron check`` and ``--help`` load no Kafka client.
"""

from __future__ import annotations

import json
from typing import Any

import click
from click.core import ParameterSource

from kcron import jobfile
from kcron.options import build_settings, common_options, handle_errors, max_queues_option, setting
from kcron.settings import Settings

idle_option = setting(
    "--idle",
    "read_idle_s",
    field="read_idle_s",
    env="DLQ_IDLE",
    type=click.FloatRange(0.1),
    help="Stop reading once nothing has arrived for this many seconds.",
)


jobs_option = click.option(
    "--jobs",
    envvar="KCRON_JOBS",
    show_envvar=True,
    type=click.Path(dir_okay=False, path_type=str),
    help="A job file: cover the default topic and every queue it names, unless --topic "
    "is given on the command line.",
)


def covered_queues(settings: Settings, jobs: str | None) -> list[str]:
    """The queues a dlq command covers: --topic's alone when given on the command
    line (or without a job file), else the default topic and every queue of the
    job file, so that one command shows every dead letter an operator owns."""
    given = click.get_current_context().get_parameter_source("topic")
    if jobs is None or given is ParameterSource.COMMANDLINE:
        return [settings.topic]
    parsed = jobfile.load(jobs, max_queues=settings.max_queues)
    named = jobfile.queues(parsed.jobs, settings.topic)
    return [settings.topic, *(q for q in named if q != settings.topic)]


@click.group("dlq")
def dlq() -> None:
    """Dead letters: runs that failed for good, and messages that were not runs.

    They live in the topic <queue>.dlq of each queue, one JSON record each:
    reason, exit code, the tail of the output, every attempt's times, and the
    run itself (or, for an undecodable message, its raw bytes in base64).
    """


@dlq.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the records as a JSON array.")
@click.option("--limit", type=click.IntRange(1), help="Show only the N most recent dead letters.")
@jobs_option
@max_queues_option
@idle_option
@common_options
@handle_errors
def list_command(as_json: bool, limit: int | None, jobs: str | None, **values: Any) -> None:
    """List the dead letters, oldest first.

    Of the --topic queue; with a job file (--jobs, KCRON_JOBS) and no --topic on
    the command line, of the default topic and every queue of the file, with a
    QUEUE column. --json adds each letter's "queue".
    """
    from kcron import deadletter, retry

    # stdout is for the listing (and --json); logs go to stderr.
    settings = build_settings("dlq-list", values, log_to_stderr=True)
    queues = covered_queues(settings, jobs)
    letters = deadletter.read_dead_letters(settings, settings.read_idle_s, queues)
    total = len(letters)
    if limit is not None:
        letters = letters[-limit:]
    if as_json:
        click.echo(json.dumps([deadletter.record_for_json(x) for x in letters], indent=2))
        return
    if letters:
        rows = deadletter.table_rows(letters, with_queue=len(queues) > 1)
        click.echo(deadletter.format_table(rows))
    shown = f"{len(letters)} of {total}" if len(letters) != total else str(total)
    noun = "dead letter" if total == 1 else "dead letters"
    where = ", ".join(retry.dlq_topic(q) for q in queues)
    click.echo(f"{shown} {noun} in {where}", err=True)


@dlq.command("requeue")
@click.argument("run_id")
@jobs_option
@max_queues_option
@idle_option
@common_options
@handle_errors
def requeue_command(run_id: str, jobs: str | None, **values: Any) -> None:
    """Send dead run RUN_ID back to its own queue as attempt 1 (history kept).

    Its queue is the one its message names, else the one whose dead-letter
    topic held it. Searched: as for list. Exits 66 if no dead letter has that
    id, 65 if it is an undecodable message (there is no run to send back).
    """
    from kcron import deadletter

    settings = build_settings("dlq-requeue", values, log_to_stderr=True)
    queues = covered_queues(settings, jobs)
    fresh, letter, target = deadletter.requeue(settings, run_id, settings.read_idle_s, queues)
    click.echo(
        f"requeued run {fresh.id} (job {fresh.job}, dead at {letter.dead_at}) to "
        f"{target} as attempt 1 of {fresh.max_attempts}"
    )
