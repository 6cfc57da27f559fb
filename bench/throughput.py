"""P3 throughput: backfill N runs of `true` and time the 2 consumers end to end.

The yardstick is measured in the same repeat, right before: one Python loop
per core doing ``subprocess.run(["true"])`` for a fixed time, i.e. how many
processes this machine can spawn per second from Python when doing nothing
else. kcron's figure is N / (last run finished - backfill command started),
from the workers' own "run succeeded" log lines.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import BIN, REPO, BenchError, load_average, say
from bench.stack import KcronStack
from tools.harness import parse_ts

WINDOW_START = datetime(2026, 1, 1, tzinfo=UTC)
JOBS = 100  # runs = JOBS x minutes of the backfill window

_SPAWN_LOOP = """
import subprocess, sys, time
end = time.monotonic() + float(sys.argv[1])
n = 0
while time.monotonic() < end:
    subprocess.run(["true"])
    n += 1
print(n)
"""


def raw_spawn_rate(seconds: float, loops: int | None = None) -> dict[str, Any]:
    """Spawns per second of ``loops`` concurrent ``subprocess.run(["true"])`` loops."""
    loops = loops or os.cpu_count() or 1
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _SPAWN_LOOP, str(seconds)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(loops)
    ]
    counts = [int(p.communicate()[0].strip() or 0) for p in procs]
    return {
        "loops": loops,
        "seconds": seconds,
        "spawns": sum(counts),
        "per_s": sum(counts) / seconds,
        "per_s_per_loop": [c / seconds for c in counts],
    }


def job_file(path: Path, repeat: int) -> list[str]:
    names = [f"p3-r{repeat}-{i:03d}" for i in range(JOBS)]
    path.write_text("".join(f"name={n} * * * * * true\n" for n in names))
    return names


def run_repeat(
    stack: KcronStack, workdir: Path, runs: int, repeat: int, spawn_seconds: float
) -> dict[str, Any]:
    say(f"P3 repeat {repeat}: raw spawn rate ({spawn_seconds:g} s, one loop per core)")
    raw = raw_spawn_rate(spawn_seconds)
    minutes = max(1, runs // JOBS)
    total = minutes * JOBS
    jobs = workdir / f"p3-r{repeat}.cron"
    prefix = f"p3-r{repeat}-"
    job_file(jobs, repeat)
    stack.poll()  # skip older records
    say(f"P3 repeat {repeat}: backfilling {total} runs of `true` for the 2 consumers")
    started = time.time()
    backfill = subprocess.run(
        [
            str(BIN / "kcron"),
            "backfill",
            "--jobs",
            str(jobs),
            "--from",
            WINDOW_START.strftime("%Y-%m-%dT%H:%M"),
            "--to",
            (WINDOW_START + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M"),
        ],
        env=stack.env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    backfilled = time.time()
    if backfill.returncode != 0:
        raise BenchError(f"backfill failed:\n{backfill.stdout[-2000:]}{backfill.stderr[-2000:]}")
    finished: dict[str, float] = {}
    first_start: list[float] = []
    failed = 0

    def done(records: list[dict[str, Any]]) -> bool:
        nonlocal failed
        for rec in records:
            if not str(rec.get("job", "")).startswith(prefix):
                continue
            msg = rec.get("msg")
            if msg == "run started" and not first_start:
                first_start.append(parse_ts(rec["ts"]))
            elif msg in ("run succeeded", "run failed"):
                finished.setdefault(rec["run"], parse_ts(rec["ts"]))
                failed += msg == "run failed"
        return len(finished) >= total

    stack.wait_for(done, timeout_s=120 + total / 20, what=f"{total} P3 runs to finish")
    last = max(finished.values())
    elapsed = last - started
    rate = total / elapsed
    result = {
        "repeat": repeat,
        "runs": total,
        "failed": failed,
        "raw_spawn": raw,
        "backfill_s": backfilled - started,
        "end_to_end_s": elapsed,
        "runs_per_s": rate,
        "consumer_runs_per_s": total / (last - first_start[0]) if first_start else None,
        "ratio_to_raw": rate / raw["per_s"],
        "load_average": load_average(),
    }
    say(
        f"P3 repeat {repeat}: {rate:.0f} runs/s end to end vs raw {raw['per_s']:.0f} spawns/s "
        f"({100 * rate / raw['per_s']:.0f} %), load {result['load_average']}"
    )
    return result
