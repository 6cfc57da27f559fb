"""What ``kcron runs`` and ``kcron jobs`` print, from folded run events. Pure.

The tables are plain columns, as ``kubectl get`` prints them; ``--json``
gives the same rows as objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, tzinfo
from typing import Any

from kcron import schedule
from kcron.events import RUNNING, RunView
from kcron.jobfile import Job
from kcron.message import format_time


def duration(ms: int | None) -> str:
    """``350ms``, ``1.2s``, ``2m03s``, ``1h05m``; ``-`` when unknown."""
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _or_dash(value: object) -> str:
    return "-" if value is None or value == "" else str(value)


def format_table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def runs_table(views: Sequence[RunView], with_queue: bool = False) -> str:
    """One line per run, newest first: the table of ``kcron runs``."""
    queue_head = ["QUEUE"] if with_queue else []
    head = ["SCHEDULED FOR", *queue_head, "JOB", "RUN ID", "TRY", "OUTCOME", "EXIT", "LATE"]
    rows = [[*head, "DURATION", "WORKER", "TRIGGER"]]
    for v in views:
        queue = [_or_dash(v.queue)] if with_queue else []
        rows.append(
            [
                *(_or_dash(v.scheduled_for), *queue, v.job, v.id, str(v.attempt), v.outcome),
                *(_or_dash(v.exit_code), duration(v.lateness_ms), duration(v.duration_ms)),
                *(_or_dash(v.worker), v.trigger or "schedule"),
            ]
        )
    return format_table(rows)


def _indent(text: str, prefix: str = "    | ") -> list[str]:
    return [prefix + line for line in text.rstrip("\n").splitlines()]


def _event_lines(event: dict[str, Any]) -> list[str]:
    head = f"attempt {event.get('attempt')}/{event.get('max_attempts')}"
    worker = f"worker {_or_dash(event.get('worker'))}"
    if event.get("type") == "started":
        where = f"{event.get('topic')}:{event.get('partition')}@{event.get('offset')}"
        late = f"late {duration(event.get('lateness_ms'))}"
        return [f"{head}  started   {event.get('started_at')}  {worker}  {where}  {late}"]
    step = str(event.get("next") or "-")
    if step == "retry" and event.get("retry_at"):
        step = f"retry at {event.get('retry_at')}"
    lines = [
        f"{head}  finished  {event.get('finished_at')}  {worker}  outcome {event.get('outcome')}"
        f"  exit {_or_dash(event.get('exit_code'))}  took {duration(event.get('duration_ms'))}"
        f"  next: {step}"
    ]
    if event.get("error"):
        lines.append(f"    error: {event['error']}")
    tail = event.get("output_tail")
    if isinstance(tail, str) and tail.strip():
        lines.append("    output (tail):")
        lines.extend(_indent(tail))
    return lines


def run_detail(view: RunView) -> str:
    """Every attempt of one run, with its output tail: ``kcron runs RUN_ID``."""
    lines = [
        f"run {view.id}  job {view.job}  queue {_or_dash(view.queue)}  "
        f"scheduled for {_or_dash(view.scheduled_for)}  trigger {view.trigger or 'schedule'}",
        f"now: {view.outcome}"
        + ("" if view.outcome == RUNNING else f" (exit {_or_dash(view.exit_code)})")
        + f" after attempt {view.attempt}",
    ]
    for event in view.events:
        lines.extend(_event_lines(event))
    return "\n".join(lines)


def job_rows(
    jobs: Sequence[Job], views: Sequence[RunView], now: datetime, tz: tzinfo, default_queue: str
) -> list[dict[str, Any]]:
    """One object per job: ``kcron jobs``, like ``kubectl get cronjobs``.

    ``views`` come newest first; a run started and not finished is active.
    """
    rows = []
    for job in jobs:
        mine = [v for v in views if v.job == job.name]
        upcoming = schedule.next_runs(job, now, 1, tz)
        last = mine[0] if mine else None
        rows.append(
            {
                "name": job.name,
                "schedule": job.schedule,
                "queue": job.queue_or(default_queue),
                "next_run": format_time(upcoming[0]) if upcoming else None,
                "last_run": last.scheduled_for if last else None,
                "last_outcome": last.outcome if last else None,
                "active": sum(1 for v in mine if v.outcome == RUNNING),
            }
        )
    return rows


def jobs_table(rows: Sequence[dict[str, Any]]) -> str:
    table = [["NAME", "SCHEDULE", "QUEUE", "NEXT RUN", "LAST RUN", "LAST OUTCOME", "ACTIVE"]]
    for row in rows:
        table.append(
            [
                row["name"],
                row["schedule"],
                row["queue"],
                _or_dash(row["next_run"]),
                _or_dash(row["last_run"]),
                _or_dash(row["last_outcome"]),
                str(row["active"]),
            ]
        )
    return format_table(table)
