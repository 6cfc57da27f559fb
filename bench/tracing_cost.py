"""What tracing costs a run when it is off, and when it is on: ``python -m bench.tracing_cost``.

A run meets kcron.tracing's hooks seven times: the producer's dispatch, its
headers and its end; the worker's taken, started, finished and settled. With
tracing off each is a call to NoTracing that returns at once. This times that
sequence per run against the same loop without the calls, and, for scale, the
same hooks on OpenTelemetry's SDK (spans made, none exported).
Quick (seconds, one core): no broker, no processes.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from datetime import UTC, datetime

from kcron.executor import ExecResult, Outcome
from kcron.message import RunMessage
from kcron.tracing import NO_TRACING, Tracer
from kcron.worker.runner import Done, Job, Started

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def a_job() -> tuple[RunMessage, Job, Started, Done]:
    run = RunMessage(
        id="00000000-0000-4000-8000-000000000000",
        job="backup",
        command="true",
        scheduled_for=T0,
        produced_at=T0,
        queue="kcron.jobs",
    )
    job = Job(run, ("kcron.jobs", 0), 0, 1)
    result = ExecResult(Outcome.SUCCEEDED, 0, 0.1, 0, False, b"", None)
    return run, job, Started(job, T0, 0), Done(job, result, T0, T0)


def hooks(tracer: Tracer, n: int) -> int:
    """ns for ``n`` runs through every hook, as dispatch.py, loop.py and settle.py call them."""
    run, _job, started, done = a_job()
    runs = [run]
    begin = time.perf_counter_ns()
    for _ in range(n):
        trace = tracer.dispatch(runs)
        headers = trace.headers(run.id)
        trace.end()
        tracer.taken(headers, T0)
        tracer.started(started)
        tracer.finished(done)
        tracer.settled(done, "committed", T0)
    return time.perf_counter_ns() - begin


def bare(_tracer: Tracer, n: int) -> int:
    """ns for the same loop without the hooks: what kcron did before them."""
    run, _job, _started, _done = a_job()
    runs = [run]
    begin = time.perf_counter_ns()
    for _ in range(n):
        _ = runs
    return time.perf_counter_ns() - begin


def best(measure: Callable[[Tracer, int], int], tracer: Tracer, n: int, repeat: int) -> float:
    """ns per run, the best of ``repeat`` rounds (the least disturbed by other processes)."""
    return min(measure(tracer, n) for _ in range(repeat)) / n


def sdk_tracer() -> Tracer:
    from opentelemetry.sdk.trace import TracerProvider

    from kcron.otel import OtelTracing

    return OtelTracing(TracerProvider())  # spans made and ended, no processor exports them


def measure(runs: int = 200_000, repeat: int = 5) -> dict[str, float]:
    """The bench's step (bench/run.py, seconds): tracing-off hooks against no hooks.

    Best of ``repeat`` rounds each, interleaved, so a busy moment hits both alike.
    """
    without, off = [], []
    for _ in range(repeat):
        without.append(bare(NO_TRACING, runs) / runs)
        off.append(hooks(NO_TRACING, runs) / runs)
    return {
        "runs": runs,
        "repeat": repeat,
        "hooks": 7,
        "no_hooks_ns": min(without),
        "off_ns": min(off),
        "cost_off_ns": min(off) - min(without),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-sdk", action="store_true", help="skip the tracing-on figure")
    args = parser.parse_args(argv)
    without = best(bare, NO_TRACING, args.runs, args.repeat)
    off = best(hooks, NO_TRACING, args.runs, args.repeat)
    print(f"no hooks:          {without:8.0f} ns per run")
    print(f"tracing off:       {off:8.0f} ns per run (7 hook calls)")
    print(f"cost when off:     {off - without:8.0f} ns per run")
    if not args.no_sdk:
        on = best(hooks, sdk_tracer(), max(1, args.runs // 20), args.repeat)
        print(f"tracing on (SDK):  {on:8.0f} ns per run (4 spans, none exported)")


if __name__ == "__main__":
    main()
