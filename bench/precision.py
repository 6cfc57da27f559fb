"""P1 (precision) and P2 (herd): when do jobs due at a minute actually start?

kcron and cron get the *same command line*: a tiny script that appends the
time its own process started (``date +%s.%N``), the run's scheduled time
(``KCRON_SCHEDULED_FOR``, which only kcron sets) and the job id to a file::

    /tmp/kcron-bench-XXXX/stamp.sh p1-0003 /tmp/kcron-bench-XXXX/p1.out

Lateness = that start time minus the scheduled minute: KCRON_SCHEDULED_FOR
for kcron, the wall-clock minute floored for cron (cron runs a job in the
minute it is due, seconds late at most). A script rather than an inline
``date +%s.%N``: cron turns every ``%`` of a crontab line into a newline, so
only a line without ``%`` is byte-for-byte the same in both files.

Each measured minute ("slot") fires one scheduler's jobs (``alternate``,
the default: kcron and cron never compete for the 2 cores) or both at once
(``overlap``, used by the quick mode to save minutes).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import distribution, spread
from tools.harness import parse_ts

STAMP_SCRIPT = """#!/bin/sh
# kcron bench: record when this job's process started, its scheduled time
# (only kcron sets KCRON_SCHEDULED_FOR) and the job id.
echo "$(date +%s.%N) ${KCRON_SCHEDULED_FOR:-cron} $1" >> "$2"
"""
SCHEDULERS = ("kcron", "cron")


@dataclass(frozen=True)
class Slot:
    at: int  # the minute boundary, epoch seconds
    phase: str  # "p1" or "p2"
    schedulers: tuple[str, ...]
    repeat: int  # 1-based, per phase and scheduler

    @property
    def minute(self) -> int:
        return time.gmtime(self.at).tm_min


@dataclass
class Phase:
    """One of P1/P2: ``jobs`` jobs per minute, fired in ``slots``."""

    name: str
    jobs: int
    slots: list[Slot] = field(default_factory=list)
    out: Path = Path()

    def minutes(self, scheduler: str) -> list[int]:
        return [s.minute for s in self.slots if scheduler in s.schedulers]

    def command(self, stamp: Path, index: int) -> str:
        return f"{stamp} {self.job_id(index)} {self.out}"

    def job_id(self, index: int) -> str:
        return f"{self.name}-{index:04d}"


def plan(first: int, phases: list[Phase], repeats: dict[str, int], layout: str) -> list[Slot]:
    """Measured minutes from ``first``: per phase, ``repeats`` minutes per scheduler.

    ``alternate``: kcron and cron in turn, one minute each; ``overlap``: both in the
    same minutes; ``single``: every phase and both schedulers in one minute (a smoke
    check of the plumbing, not a measurement).
    """
    slots: list[Slot] = []
    at = first
    for phase in phases:
        if layout == "single":
            slot = Slot(first, phase.name, SCHEDULERS, 1)
            phase.slots.append(slot)
            slots.append(slot)
            continue
        for rep in range(1, repeats[phase.name] + 1):
            groups = [SCHEDULERS] if layout == "overlap" else [(s,) for s in SCHEDULERS]
            for group in groups:
                slot = Slot(at, phase.name, group, rep)
                phase.slots.append(slot)
                slots.append(slot)
                at += 60
    if slots and slots[-1].at - first >= 3600:
        raise ValueError("more than 60 measured minutes: minute fields would repeat")
    return slots


def minutes_used(layout: str, phases: dict[str, int]) -> int:
    """How many distinct minutes :func:`plan` uses for ``phases`` (name -> repeats)."""
    if layout == "single":
        return 1 if phases else 0
    return sum(phases.values()) * (1 if layout == "overlap" else 2)


def kcron_lines(phase: Phase, stamp: Path) -> list[str]:
    minutes = ",".join(str(m) for m in phase.minutes("kcron"))
    if not minutes:
        return []
    return [
        f"name={phase.job_id(i)} {minutes} * * * * {phase.command(stamp, i)}"
        for i in range(phase.jobs)
    ]


def cron_lines(phase: Phase, stamp: Path) -> list[str]:
    minutes = ",".join(str(m) for m in phase.minutes("cron"))
    if not minutes:
        return []
    return [f"{minutes} * * * * {phase.command(stamp, i)}" for i in range(phase.jobs)]


@dataclass(frozen=True)
class Stamp:
    started: float
    scheduler: str
    scheduled: float
    job: str

    @property
    def lateness(self) -> float:
        return self.started - self.scheduled


def read_stamps(path: Path) -> list[Stamp]:
    stamps = []
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 3:
            continue
        started = float(parts[0])
        if parts[1] == "cron":
            stamps.append(Stamp(started, "cron", math.floor(started / 60) * 60, parts[2]))
        else:
            stamps.append(Stamp(started, "kcron", parse_ts(parts[1]), parts[2]))
    return stamps


def slot_complete(phase: Phase, slot: Slot) -> bool:
    seen: dict[str, int] = defaultdict(int)
    for stamp in read_stamps(phase.out):
        if stamp.scheduled == slot.at:
            seen[stamp.scheduler] += 1
    return all(seen[s] >= phase.jobs for s in slot.schedulers)


def kcron_breakdown(records: list[dict[str, Any]], slot: Slot, phase: str) -> dict[str, Any]:
    """Where kcron's lateness goes, from its own logs (millisecond timestamps)."""
    due = slot.at
    dispatched, started = [], []
    for rec in records:
        job = str(rec.get("job", ""))
        if not job.startswith(phase + "-"):
            continue
        if rec.get("scheduled_for") and parse_ts(rec["scheduled_for"]) != due:
            continue
        if rec.get("msg") == "run dispatched":
            dispatched.append(parse_ts(rec["ts"]) - due)
        elif rec.get("msg") == "run started":
            started.append(float(rec.get("lateness_ms", math.nan)) / 1000)
    return {
        "dispatched_last_s": max(dispatched) if dispatched else None,
        "dispatched": len(dispatched),
        "worker_started_p50_s": distribution(started)["p50"] if started else None,
        "worker_started_max_s": max(started) if started else None,
    }


def analyse(
    phase: Phase, records: list[dict[str, Any]], loads: dict[int, list[float]]
) -> dict[str, Any]:
    """Per slot and scheduler: the lateness distribution; then medians over repeats."""
    stamps = read_stamps(phase.out)
    by_slot: dict[tuple[int, str], list[float]] = defaultdict(list)
    for stamp in stamps:
        by_slot[(int(stamp.scheduled), stamp.scheduler)].append(stamp.lateness)
    per_repeat: dict[str, list[dict[str, Any]]] = {s: [] for s in SCHEDULERS}
    pooled: dict[str, list[float]] = {s: [] for s in SCHEDULERS}
    for slot in phase.slots:
        for scheduler in slot.schedulers:
            values = by_slot.get((slot.at, scheduler), [])
            pooled[scheduler].extend(values)
            row: dict[str, Any] = {
                "repeat": slot.repeat,
                "minute": time.strftime("%H:%M", time.gmtime(slot.at)),
                "expected": phase.jobs,
                "missing": max(0, phase.jobs - len(values)),
                **distribution(values),
                "load_average": loads.get(slot.at),
            }
            if scheduler == "kcron":
                row["kcron_logs"] = kcron_breakdown(records, slot, phase.name)
            per_repeat[scheduler].append(row)
    summary: dict[str, Any] = {"jobs": phase.jobs, "schedulers": {}}
    for scheduler in SCHEDULERS:
        rows = per_repeat[scheduler]
        summary["schedulers"][scheduler] = {
            "repeats": rows,
            **{k: spread([r[k] for r in rows]) for k in ("first", "p50", "p99", "max")},
            "missing": sum(r["missing"] for r in rows),
            "pooled": distribution(pooled[scheduler]),
        }
    pairs = zip(per_repeat["kcron"], per_repeat["cron"], strict=False)
    summary["cron_p99_over_kcron_p99"] = spread(
        [c["p99"] / k["p99"] for k, c in pairs if k["p99"] and k["p99"] > 0]
    )
    summary["samples"] = {s: sorted(pooled[s]) for s in SCHEDULERS}
    return summary
