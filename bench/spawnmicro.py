"""Micro-benchmark of kcron's executor: posix_spawn (kcron/spawn.py) vs Popen.

``python -m bench.spawnmicro [ROUNDS]`` runs ``executor.run("true")`` both
ways, interleaved in the same process, and prints medians over the rounds:

- cpu µs/run: this process's user+system CPU per run, one thread (what a
  worker pays per run, its children excluded);
- runs/s with 8 threads (a worker's default concurrency);
- spin: how far a pure-Python thread counts meanwhile, relative to no
  spawning at all (the GIL left to the worker's other threads).
Not part of `make bench`; docs/performance.md quotes it.
"""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

from kcron import executor

SPEC = executor.ExecSpec("true", env=dict(os.environ))


@contextmanager
def popen_only() -> Iterator[None]:
    original = executor._posix_spawn
    executor._posix_spawn = lambda argv, env: None
    try:
        yield
    finally:
        executor._posix_spawn = original


def one() -> None:
    executor.run(SPEC, lambda _stream, _line: None)


def cpu_per_run(n: int) -> float:
    before = os.times()
    for _ in range(n):
        one()
    after = os.times()
    return (after.user - before.user + after.system - before.system) / n * 1e6


def threaded_rate(threads: int, seconds: float) -> float:
    stop = time.monotonic() + seconds
    counts = [0] * threads

    def loop(i: int) -> None:
        while time.monotonic() < stop:
            one()
            counts[i] += 1

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    started = time.monotonic()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(counts) / (time.monotonic() - started)


def spin(seconds: float, work: Callable[[], None] | None) -> float:
    stop = time.monotonic() + seconds
    count = [0]

    def count_up() -> None:
        while time.monotonic() < stop:
            count[0] += 1

    thread = threading.Thread(target=count_up)
    thread.start()
    while work is not None and time.monotonic() < stop:
        work()
    thread.join()
    return count[0] / seconds


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    rows: dict[str, dict[str, list[float]]] = {"posix_spawn": {}, "Popen": {}}
    for _ in range(rounds):
        idle = spin(0.5, None)
        for name in rows:
            with popen_only() if name == "Popen" else nullcontext():
                got = rows[name]
                got.setdefault("cpu µs/run", []).append(cpu_per_run(300))
                got.setdefault("runs/s, 8 threads", []).append(threaded_rate(8, 1.5))
                got.setdefault("spin vs idle", []).append(spin(1.0, one) / idle)
    for name, got in rows.items():
        print(name, {k: round(statistics.median(v), 2) for k, v in got.items()})
    for key in rows["Popen"]:
        a, b = (statistics.median(rows[n][key]) for n in ("posix_spawn", "Popen"))
        print(f"{key}: posix_spawn / Popen = {a / b:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
