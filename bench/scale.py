"""P4 scale: a generated N-job file through `kcron check` and `kcron produce`.

The file mixes what large crontabs hold (every minute, every quarter hour,
hourly, daily, weekdays, monthly, per-job time zones, macros), spread so that
about 2.4 % of the jobs are due in any minute (2,360 of 100,000), plus the
@hourly ones at minute 0. Because the bench wrote every schedule itself, it
knows exactly which jobs are due at a minute without asking kcron's evaluator.

Figures: wall time and peak RSS of `kcron check FILE`; the producer's
start-up (process start -> its first "producer started..." line: file parsed,
broker reached; -> "next run": schedule built, ready to dispatch, which also
covers any wait to become the active producer where producers elect one);
its peak RSS (VmHWM); and, at the next minute boundary, when the first and the
last run due at that minute were acknowledged by Kafka (the producer's
"run dispatched" lines), relative to the minute: negative when the producer
dispatches ahead.
"""

from __future__ import annotations

import os
import random
import subprocess
import time
import zoneinfo
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import (
    BIN,
    REPO,
    BenchError,
    Env,
    load_average,
    next_boundary,
    peak_rss_mib,
    say,
)
from tools.harness import Process, parse_ts

ZONES = ("Europe/Paris", "America/New_York", "Asia/Kolkata", "Australia/Sydney")
ALL = None  # a field that matches everything


@dataclass(frozen=True)
class Spec:
    minutes: frozenset[int]
    hours: frozenset[int] | None = ALL
    days: frozenset[int] | None = ALL  # day of month
    weekdays: frozenset[int] | None = ALL  # cron numbering, 0 = Sunday
    tz: str | None = None

    def due(self, when: datetime) -> bool:
        local = when.astimezone(zoneinfo.ZoneInfo(self.tz)) if self.tz else when
        return (
            local.minute in self.minutes
            and (self.hours is ALL or local.hour in self.hours)
            and (self.days is ALL or local.day in self.days)
            and (self.weekdays is ALL or (local.isoweekday() % 7) in self.weekdays)
        )


def _one(value: int) -> frozenset[int]:
    return frozenset((value,))


def generate(path: Path, count: int, seed: int = 6) -> list[Spec]:
    """Write ``count`` jobs to ``path``; return each job's schedule as a Spec."""
    rng = random.Random(seed)
    specs: list[Spec] = []
    lines = [f"# kcron bench P4: {count} generated jobs (seed {seed})"]
    for i in range(count):
        m, h = rng.randrange(60), rng.randrange(24)
        name = f"name=p4-{i:06d}"
        cmd = f"/opt/jobs/task.sh --job {i:06d} --quiet"
        roll = i % 100  # fixed shares, so every file size has the same mix
        if roll < 1:
            spec, sched = Spec(frozenset(range(60))), "* * * * *"
        elif roll < 11:
            q = m % 15
            spec = Spec(frozenset((q, q + 15, q + 30, q + 45)))
            sched = f"{q},{q + 15},{q + 30},{q + 45} * * * *"
        elif roll < 51:
            m = i % 60  # hourly jobs spread evenly over the hour
            spec, sched = Spec(_one(m)), f"{m} * * * *"
        elif roll < 81:
            spec, sched = Spec(_one(m), _one(h)), f"{m} {h} * * *"
        elif roll < 91:
            spec = Spec(_one(m), _one(h), weekdays=frozenset(range(1, 6)))
            sched = f"{m} {h} * * 1-5"
        elif roll < 95:
            d = rng.randrange(1, 29)
            spec, sched = Spec(_one(m), _one(h), _one(d)), f"{m} {h} {d} * *"
        elif roll < 99:
            tz = ZONES[i % len(ZONES)]
            spec, sched = Spec(_one(m), _one(h), tz=tz), f"{m} {h} * * *"
            name += f" tz={tz}"
        else:
            macro = ("@hourly", "@daily", "@weekly")[i % 3]
            spec = {
                "@hourly": Spec(_one(0)),
                "@daily": Spec(_one(0), _one(0)),
                "@weekly": Spec(_one(0), _one(0), weekdays=_one(0)),
            }[macro]
            sched = macro
        specs.append(spec)
        lines.append(f"{name} {sched} {cmd}")
    path.write_text("\n".join(lines) + "\n")
    return specs


def due_count(specs: list[Spec], boundary: int) -> int:
    when = datetime.fromtimestamp(boundary, UTC)
    return sum(1 for s in specs if s.due(when))


def measure_check(path: Path) -> dict[str, Any]:
    """`kcron check FILE` as a user runs it (output discarded): wall time and peak RSS."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [str(BIN / "kcron"), "check", str(path)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _pid, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise BenchError(
            f"kcron check failed ({proc.returncode}): "
            f"{proc.stderr.read().decode()[-2000:] if proc.stderr else ''}"
        )
    if proc.stderr:
        proc.stderr.close()
    return {
        "seconds": elapsed,
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "load_average": load_average(),
    }


class ProducerRun:
    """One `kcron produce` on the generated file; measures start-up, then one boundary."""

    def __init__(self, workdir: Path, env: Env, jobs: Path, specs: list[Spec], repeat: int):
        self.specs = specs
        self.repeat = repeat
        self.topic = f"kcron.bench.p4.{os.getpid()}.{repeat}"
        self.log_path = workdir / f"p4-producer-r{repeat}.log"
        self.started = time.time()
        self.proc = Process(
            [str(BIN / "kcron"), "produce", "--jobs", str(jobs), "--instance", "p4-producer"],
            env.for_kcron(KCRON_TOPIC=self.topic),
            self.log_path,
            name="P4 producer",
            append=True,
            keep_records=False,
            failure=BenchError,
        )
        self.parsed_at: float | None = None
        self.ready_at: float | None = None
        self.boundary: int | None = None
        # Records read while waiting for "next run" that came after it: with
        # dispatch-ahead, the boundary's runs can be in the same read.
        self._unread: list[dict[str, Any]] = []

    def _poll(self) -> list[dict[str, Any]]:
        self.proc.check_alive("its runs")
        unread, self._unread = self._unread, []
        return unread + self.proc.poll()

    def wait_ready(self, timeout_s: float = 600) -> None:
        deadline = time.monotonic() + timeout_s
        while self.ready_at is None:
            records = self._poll()
            for index, rec in enumerate(records):
                if str(rec.get("msg", "")).startswith("producer started"):
                    self.parsed_at = parse_ts(rec["ts"])
                elif rec.get("msg") == "next run":
                    self.ready_at = parse_ts(rec["ts"])
                    self._unread = records[index + 1 :]
                    break
            if time.monotonic() > deadline:
                raise BenchError("P4 producer never became ready")
            time.sleep(0.1)
        # The first boundary the producer is ready for (a second of margin).
        self.boundary = next_boundary(self.ready_at, lead_s=1.0)
        say(
            f"P4 producer r{self.repeat} ready after {self.ready_at - self.started:.1f} s; "
            f"measuring {time.strftime('%H:%M', time.gmtime(self.boundary))}"
        )

    def finish(self) -> dict[str, Any]:
        """Wait for every run due at the boundary to be delivered, then stop the producer."""
        assert self.boundary is not None and self.ready_at is not None
        expected = due_count(self.specs, self.boundary)
        stamp = datetime.fromtimestamp(self.boundary, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        delivered: list[float] = []
        deadline = self.boundary + 55
        # Read the log before looking at the clock: in the quick mode this is called
        # after P1-P3, often more than 55 s past the boundary, when every line is
        # long written (checking the deadline first read nothing: "delivered: 0").
        while True:
            for rec in self._poll():
                if rec.get("msg") == "run dispatched" and rec.get("scheduled_for") == stamp:
                    delivered.append(parse_ts(rec["ts"]) - self.boundary)
            if len(delivered) >= expected or time.time() >= deadline:
                break
            time.sleep(0.1)
        rss = peak_rss_mib(self.proc.pid)
        load = load_average()
        code = self.proc.stop(60)
        result = {
            "repeat": self.repeat,
            "minute": time.strftime("%H:%M", time.gmtime(self.boundary)),
            "parse_s": (self.parsed_at or self.ready_at) - self.started,
            "startup_s": self.ready_at - self.started,
            "peak_rss_mib": rss,
            "due": expected,
            "delivered": len(delivered),
            "first_delivered_s": min(delivered) if delivered else None,
            "last_delivered_s": max(delivered) if delivered else None,
            "exit_code": code,
            "load_average": load,
        }
        if len(delivered) < expected:
            say(f"P4: only {len(delivered)} of {expected} due runs were delivered in time")
        say(
            f"P4 r{self.repeat}: start-up {result['startup_s']:.1f} s, peak RSS {rss:.0f} MiB, "
            f"{expected} due runs, last delivered {result['last_delivered_s']} s after the "
            f"minute, load {load}"
        )
        return result
