"""P3 throughput: backfill N runs of `true` and time the 2 consumers end to end.

The yardstick is the machine's spawn limit (bench/spawnlimit.py), measured
in the same repeat, right before: the best of parallel ``subprocess.run``
loops, parallel ``os.posix_spawn`` + ``waitpid`` loops and ``xargs -P`` over
shell loops, one per core. kcron's figure is N / (last run finished -
backfill command started), from the workers' own "run succeeded" log lines.
A repeat with metrics off (for the overhead figure) skips the limit.
"""

from __future__ import annotations

import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench import spawnlimit
from bench.common import BIN, REPO, BenchError, load_average, median, say, spread
from bench.stack import KcronStack
from tools.harness import parse_ts

WINDOW_START = datetime(2026, 1, 1, tzinfo=UTC)
JOBS = 100  # runs = JOBS x minutes of the backfill window


def job_file(path: Path, repeat: int) -> list[str]:
    names = [f"p3-r{repeat}-{i:03d}" for i in range(JOBS)]
    path.write_text("".join(f"name={n} * * * * * true\n" for n in names))
    return names


def run_repeat(
    stack: KcronStack, workdir: Path, runs: int, repeat: int, spawn_seconds: float | None
) -> dict[str, Any]:
    """One repeat; ``spawn_seconds`` None: no spawn limit measured (metrics-off repeats)."""
    limit = None
    if spawn_seconds:
        say(f"P3 repeat {repeat}: the spawn limit ({spawn_seconds:g} s per method, every core)")
        limit = spawnlimit.measure(spawn_seconds)
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
        "metrics": stack.metrics,
        "spawn_limit": limit,
        "backfill_s": backfilled - started,
        "end_to_end_s": elapsed,
        "runs_per_s": rate,
        "consumer_runs_per_s": total / (last - first_start[0]) if first_start else None,
        "share_of_limit": rate / limit["per_s"] if limit else None,
        "load_average": load_average(),
    }
    versus = (
        f" vs the limit {limit['per_s']:.0f}/s ({limit['best']}): "
        f"{100 * rate / limit['per_s']:.0f} %"
        if limit
        else ""
    )
    say(
        f"P3 repeat {repeat} (metrics {'on' if stack.metrics else 'off'}): "
        f"{rate:.0f} runs/s end to end{versus}, load {result['load_average']}"
    )
    return result


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the main repeats; the other repeats give what metrics cost."""
    main = [r for r in rows if r.get("main", True)]
    limits = [r["spawn_limit"] for r in main if r.get("spawn_limit")]
    out: dict[str, Any] = {
        "runs": rows[0]["runs"],
        "repeats": rows,
        "spawn_limit_per_s": spread([lim["per_s"] for lim in limits]),
        "spawn_methods_per_s": {
            name: spread([lim["methods"][name]["per_s"] for lim in limits])
            for name in spawnlimit.METHODS
        },
        "runs_per_s": spread([r["runs_per_s"] for r in main]),
        "consumer_runs_per_s": spread([r["consumer_runs_per_s"] for r in main]),
        "share_of_limit": spread([r["share_of_limit"] for r in main if r["share_of_limit"]]),
    }
    on = [r["runs_per_s"] for r in rows if r.get("metrics")]
    off = [r["runs_per_s"] for r in rows if r.get("metrics") is False]
    out["metrics_on_runs_per_s"] = spread(on)
    out["metrics_off_runs_per_s"] = spread(off)
    if on and off:
        # What metrics cost: the throughput lost with them on, medians of each set.
        out["metrics_cost"] = 1 - median(on) / median(off)
    return out
