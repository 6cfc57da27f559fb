"""``kcron dlq``: the dead-letter commands.

Kafka is imported only when a command runs (kcron.deadletter), so that
``kcron check`` and ``--help`` load no Kafka client.
"""

from __future__ import annotations

import json
from typing import Any

import click

from kcron.options import build_settings, common_options, handle_errors, setting

idle_option = setting(
    "--idle",
    "read_idle_s",
    field="read_idle_s",
    env="DLQ_IDLE",
    type=click.FloatRange(0.1),
    help="Stop reading once nothing has arrived for this many seconds.",
)


@click.group("dlq")
def dlq() -> None:
    """Dead letters: runs that failed for good, and messages that were not runs.

    They live in the topic <topic>.dlq, one JSON record each: reason, exit
    code, the tail of the output, every attempt's times, and the run itself
    (or, for an undecodable message, its raw bytes in base64).
    """


@dlq.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the records as a JSON array.")
@click.option("--limit", type=click.IntRange(1), help="Show only the N most recent dead letters.")
@idle_option
@common_options
@handle_errors
def list_command(as_json: bool, limit: int | None, **values: Any) -> None:
    """List the dead letters, oldest first."""
    from kcron import deadletter, retry

    # stdout is for the listing (and --json); logs go to stderr.
    settings = build_settings("dlq-list", values, log_to_stderr=True)
    letters = deadletter.read_dead_letters(settings, settings.read_idle_s)
    total = len(letters)
    if limit is not None:
        letters = letters[-limit:]
    if as_json:
        click.echo(json.dumps([deadletter.record_for_json(x) for x in letters], indent=2))
        return
    if letters:
        click.echo(deadletter.format_table(deadletter.table_rows(letters)))
    shown = f"{len(letters)} of {total}" if len(letters) != total else str(total)
    noun = "dead letter" if total == 1 else "dead letters"
    click.echo(f"{shown} {noun} in {retry.dlq_topic(settings.topic)}", err=True)


@dlq.command("requeue")
@click.argument("run_id")
@idle_option
@common_options
@handle_errors
def requeue_command(run_id: str, **values: Any) -> None:
    """Send dead run RUN_ID back to the topic as attempt 1 (history kept).

    Exits 66 if no dead letter has that id, 65 if it is an undecodable
    message (there is no run to send back).
    """
    from kcron import deadletter

    settings = build_settings("dlq-requeue", values, log_to_stderr=True)
    fresh, letter = deadletter.requeue(settings, run_id, settings.read_idle_s)
    click.echo(
        f"requeued run {fresh.id} (job {fresh.job}, dead at {letter.dead_at}) to "
        f"{settings.topic} as attempt 1 of {fresh.max_attempts}"
    )
