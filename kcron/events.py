"""Run events: what every attempt of every run did, and the views built from them. Pure.

A worker writes two small JSON records per attempt to ``<queue>.events``,
keyed by run id: ``started`` when the command starts and ``finished`` when its
fate is settled (outcome, exit code, output tail, next step). The run's offset
is committed only once both are confirmed (kcron/worker/settle.py), so a run
the group has committed always has its events.

``fold`` turns a stream of events into one ``RunView`` per run, its latest
state; ``kcron runs`` and ``kcron jobs`` (kcron/cli_runs.py) print those.
Decoding is lenient: an event this version cannot read is skipped, so the
history never blocks on one bad record.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kcron.message import RunMessage, format_time, parse_time

EVENTS_SUFFIX = ".events"
EVENT_VERSION = 1
MAX_TAIL_CHARS = 2048  # the output tail an event keeps: its last characters
RUNNING = "running"  # the outcome shown for a run started and not finished

# Next steps of a finished attempt.
COMMITTED = "committed"
RETRY = "retry"
DEAD_LETTERED = "dead_lettered"


def events_topic(queue: str) -> str:
    return f"{queue}{EVENTS_SUFFIX}"


def queue_of_topic(topic: str) -> str:
    return topic[: -len(EVENTS_SUFFIX)] if topic.endswith(EVENTS_SUFFIX) else topic


def _run_fields(run: RunMessage, queue: str, worker: str) -> dict[str, Any]:
    return {
        "v": EVENT_VERSION,
        "id": run.id,
        "job": run.job,
        "queue": queue,
        "attempt": run.attempt,
        "max_attempts": run.max_attempts,
        "scheduled_for": format_time(run.scheduled_for),
        "worker": worker,
        "trigger": run.trigger,
    }


def started(
    run: RunMessage,
    *,
    queue: str,
    worker: str,
    partition: tuple[str, int],
    offset: int,
    started_at: datetime,
    lateness_ms: int,
) -> dict[str, Any]:
    event = {"type": "started", **_run_fields(run, queue, worker)}
    event.update(
        topic=partition[0],
        partition=partition[1],
        offset=offset,
        started_at=format_time(started_at),
        lateness_ms=lateness_ms,
    )
    return event


@dataclass(frozen=True)
class Finish:
    """How one attempt ended, and what happens next."""

    outcome: str
    exit_code: int | None
    duration_ms: int | None
    tail: str
    next: str  # COMMITTED, RETRY or DEAD_LETTERED
    finished_at: datetime
    started_at: datetime | None = None
    retry_at: datetime | None = None
    error: str | None = None


def finished(run: RunMessage, *, queue: str, worker: str, finish: Finish) -> dict[str, Any]:
    event = {"type": "finished", **_run_fields(run, queue, worker)}
    event.update(
        outcome=finish.outcome,
        exit_code=finish.exit_code,
        duration_ms=finish.duration_ms,
        output_tail=finish.tail[-MAX_TAIL_CHARS:],
        error=finish.error,
        next=finish.next,
        retry_at=format_time(finish.retry_at) if finish.retry_at else None,
        started_at=format_time(finish.started_at) if finish.started_at else None,
        finished_at=format_time(finish.finished_at),
    )
    return event


def encode(event: dict[str, Any]) -> bytes:
    return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()


def decode(raw: bytes | None) -> dict[str, Any] | None:
    """An event, or None for anything this version cannot read."""
    if not raw:
        return None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("v") != EVENT_VERSION:
        return None
    if data.get("type") not in ("started", "finished"):
        return None
    if not isinstance(data.get("id"), str) or not isinstance(data.get("job"), str):
        return None
    if type(data.get("attempt")) is not int:
        return None
    return data


@dataclass
class RunView:
    """One run's latest state; ``attempts`` holds every event, oldest first."""

    id: str
    job: str
    queue: str | None = None
    attempt: int = 0
    outcome: str = RUNNING
    exit_code: int | None = None
    scheduled_for: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    lateness_ms: int | None = None
    duration_ms: int | None = None
    worker: str | None = None
    trigger: str | None = None
    next: str | None = None
    last_at: str = ""  # the latest event's time: what --since filters on
    events: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "job": self.job,
            "queue": self.queue,
            "attempt": self.attempt,
            "outcome": self.outcome,
            "exit_code": self.exit_code,
            "scheduled_for": self.scheduled_for,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "lateness_ms": self.lateness_ms,
            "duration_ms": self.duration_ms,
            "worker": self.worker,
            "trigger": self.trigger or "schedule",
            "next": self.next,
        }

    def add(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        attempt = event["attempt"]
        if attempt < self.attempt:
            return  # a late record of an earlier attempt changes nothing
        at = event.get("finished_at") or event.get("started_at") or ""
        self.last_at = max(self.last_at, at)
        self.queue = event.get("queue") or self.queue
        self.scheduled_for = event.get("scheduled_for") or self.scheduled_for
        self.worker = event.get("worker") or self.worker
        self.trigger = event.get("trigger") or self.trigger
        if event["type"] == "started":
            # Also after a finish of the same attempt: a run delivered again
            # (its worker died before committing) is running again.
            self._started(event)
        else:
            self._finished(event)
        self.attempt = attempt

    def _started(self, event: dict[str, Any]) -> None:
        self.outcome, self.exit_code, self.finished_at = RUNNING, None, None
        self.duration_ms, self.next = None, None
        self.started_at = event.get("started_at")
        self.lateness_ms = event.get("lateness_ms")

    def _finished(self, event: dict[str, Any]) -> None:
        self.outcome = str(event.get("outcome") or "unknown")
        self.exit_code = event.get("exit_code")
        self.finished_at = event.get("finished_at")
        self.duration_ms = event.get("duration_ms")
        self.next = event.get("next")
        self.started_at = event.get("started_at") or self.started_at


def fold(events: Iterable[dict[str, Any]]) -> list[RunView]:
    """One view per run, newest first: by the time it was due, then by its latest event
    (a backfill runs old runs late; they still list where their schedule puts them)."""
    runs: dict[str, RunView] = {}
    for event in events:
        view = runs.get(event["id"])
        if view is None:
            view = runs[event["id"]] = RunView(event["id"], event["job"])
        view.add(event)
    return sorted(
        runs.values(), key=lambda v: (v.scheduled_for or v.last_at, v.last_at), reverse=True
    )


def select(
    views: Sequence[RunView],
    *,
    job: str | None = None,
    outcome: str | None = None,
    since: datetime | None = None,
    limit: int | None = None,
) -> list[RunView]:
    """The views that pass every given filter, newest first, at most ``limit``."""
    cutoff = format_time(since) if since is not None else None
    chosen = [
        v
        for v in views
        if (job is None or v.job == job)
        and (outcome is None or v.outcome == outcome)
        and (cutoff is None or v.last_at >= cutoff)
    ]
    return chosen if limit is None else chosen[:limit]


def find(views: Sequence[RunView], run_id: str) -> RunView | None:
    wanted = run_id.strip().lower()
    return next((v for v in views if v.id.lower() == wanted), None)


def age(text: str | None) -> datetime | None:
    """An event time back as a datetime (None for a missing or odd one)."""
    try:
        return parse_time(text) if text else None
    except ValueError:
        return None
