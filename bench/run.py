"""kcron vs Debian cron on this machine, in one run: `python -m bench.run [--quick]`.

P1 precision and P2 herd fire the same command lines from kcron (1 producer
+ 2 consumers under supervisord, as `make run` starts them, on the embedded
broker) and from cron, in alternating minutes; P3 backfills runs of `true`
and compares with the machine's spawn limit measured in the same repeat
(bench/spawnlimit.py); P4 runs a generated 100,000-job file through
`kcron check` and `kcron produce`. kcron serves metrics, scraped every 5 s,
as it does by default under supervisord; extra P3 repeats with metrics off,
interleaved with the others, give what metrics cost.

Results go to bench/results/ (bench/results/quick/ with --quick): results.json,
summary.md and kcron-vs-cron.png. The quick mode overlaps kcron and cron in
the same minutes and runs P3 and P4 in the gaps between them, to finish in
under 3 minutes; its figures are a smoke check, not the published ones.

Extra kcron settings go to every kcron process: ``--kcron-env KEY=VALUE``
(repeatable) or BENCH_KCRON_ENV="KEY=VALUE ..."; every kcron flag has a
KCRON_* variable, e.g. --kcron-env KCRON_CONCURRENCY=4.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from bench import precision, report, scale, throughput, tracing_cost
from bench.common import (
    RESULTS,
    BenchError,
    Busy,
    Env,
    distribution,
    kcron_info,
    load_average,
    machine_info,
    machine_lock,
    next_boundary,
    say,
    sleep_until,
    spread,
)
from bench.stack import Broker, KcronStack
from bench.syscron import SystemCron

# The dev broker answers a fetch only when fetch.wait.max.ms expires (real Kafka
# answers as soon as data arrives), so an idle worker sees a new run up to this
# late. The bench sets 10 ms to approximate real Kafka; say so in the results.
DEFAULT_FETCH_WAIT_MS = "10"
# The dev broker makes the first group join wait about session.timeout/2.
SESSION_TIMEOUT_MS = "6000"
FIRST_SLOT_LEAD_S = 12.0  # job file reloaded and crontab installed before the first minute
GAP_MARGIN_S = 8.0  # a filler must end this long before the next measured minute
SLOT_TIMEOUT_S = 50.0  # after a minute boundary, how long its runs may take to arrive


@dataclass
class Filler:
    """Work that may run in the gap between two measured minutes if it fits."""

    name: str
    estimate_s: float
    run: Callable[[], None]
    not_before_slot: int = 0  # index of the first measured minute it may precede


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="reduced sizes, under 3 minutes")
    p.add_argument("--only", default="p1,p2,p3,p4", help="comma-separated subset of p1..p4")
    p.add_argument("--out", type=Path, help="results directory [bench/results(/quick)]")
    p.add_argument("--p1-jobs", type=int)
    p.add_argument("--p1-minutes", type=int, help="measured minutes per scheduler")
    p.add_argument("--p2-jobs", type=int)
    p.add_argument("--p2-minutes", type=int)
    p.add_argument(
        "--layout",
        choices=("alternate", "overlap", "single"),
        help="kcron and cron in alternate minutes, both in the same minutes, or "
        "everything in one minute (a smoke check)",
    )
    p.add_argument("--p3-runs", type=int)
    p.add_argument("--p3-repeats", type=int)
    p.add_argument(
        "--spawn-seconds",
        type=float,
        help="how long each way of measuring the spawn limit runs (3 ways)",
    )
    p.add_argument(
        "--p3-metrics-off",
        type=int,
        help="P3 repeats with metrics off, interleaved with the others (the overhead)",
    )
    p.add_argument(
        "--metrics",
        choices=("on", "off"),
        default="on",
        help="metrics for P1/P2 and the main P3 repeats (on: as supervisord runs kcron)",
    )
    p.add_argument("--p4-jobs", type=int)
    p.add_argument("--p4-repeats", type=int)
    p.add_argument("--consumers", type=int, default=2)
    p.add_argument("--launcher", choices=("supervisord", "direct"), default="supervisord")
    p.add_argument(
        "--kcron-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra setting for every kcron process (repeatable)",
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    p.add_argument(
        "--report-only",
        type=Path,
        metavar="RESULTS_JSON",
        help="measure nothing: rewrite summary.md and the chart from a results.json",
    )
    args = p.parse_args(argv)
    quick = args.quick
    defaults = {
        "p1_jobs": 10,
        "p1_minutes": 1 if quick else 3,
        "p2_jobs": 200 if quick else 1000,
        "p2_minutes": 1 if quick else 3,
        "layout": "overlap" if quick else "alternate",
        "p3_runs": 1000 if quick else 20000,
        "p3_repeats": 1 if quick else 3,
        "spawn_seconds": 1.5 if quick else 5.0,
        "p3_metrics_off": 1 if quick else 2,
        "p4_jobs": 10000 if quick else 100000,
        "p4_repeats": 1 if quick else 3,
        "out": RESULTS / "quick" if quick else RESULTS,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.only = {x.strip().lower() for x in args.only.split(",") if x.strip()}
    extra = shlex.split(os.environ.get("BENCH_KCRON_ENV", "")) + args.kcron_env
    env = {
        "KCRON_SESSION_TIMEOUT_MS": SESSION_TIMEOUT_MS,
        "KCRON_FETCH_WAIT_MAX_MS": DEFAULT_FETCH_WAIT_MS,
    }
    for item in extra:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("KCRON_"):
            p.error(f"--kcron-env wants KCRON_NAME=VALUE, got {item!r}")
        env[key] = value
    args.kcron_env = env
    return args


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.bench_id = uuid.uuid4().hex[:8]
        self.results: dict[str, Any] = {}
        self.fillers: deque[Filler] = deque()
        self.p3_rows: list[dict[str, Any]] = []
        self.p4_rows: list[dict[str, Any]] = []
        self.p4_checks: list[dict[str, Any]] = []
        self.p4_pending: list[scale.ProducerRun] = []

    # -- the timeline -----------------------------------------------------------------
    def run_fillers(self, until: float | None, slot_index: int = 0) -> None:
        """Run queued fillers that fit before ``until`` (None: all of them, in order).

        A filler pinned to this slot (it must precede it) goes first.
        """
        while self.fillers:
            ready = [f for f in self.fillers if f.not_before_slot <= slot_index]
            ready.sort(key=lambda f: -f.not_before_slot)  # pinned to this slot first
            if until is not None:
                ready = [f for f in ready if time.time() + f.estimate_s <= until - GAP_MARGIN_S][:1]
            if not ready:
                return
            self.fillers.remove(ready[0])
            self.guarded(ready[0].name, ready[0].run)

    def guarded(self, what: str, work: Callable[[], None]) -> None:
        """Run one phase; a failure is reported in the results, the others still run."""
        try:
            work()
        except BenchError as exc:
            say(f"{what} failed: {exc}")
            self.results.setdefault("errors", []).append(f"{what}: {exc}")

    def run(self) -> dict[str, Any]:
        args = self.args
        with contextlib.ExitStack() as stack:
            cron: SystemCron | None = None
            if args.only & {"p1", "p2"}:
                cron = stack.enter_context(SystemCron(self.bench_id))
                self.results["cron_version"] = cron.version
            self.guarded("tracing cost", self._tracing_cost)  # seconds, before any load
            broker = Broker(self.workdir)  # P1/P2 and the P4 producers (own topics)
            stack.callback(broker.stop)
            self.env = Env(broker.bootstrap, tuple(args.kcron_env.items()))
            self._queue_fillers()
            if cron is not None:
                self.guarded("P1/P2", lambda: self._precision(cron))
            self.run_fillers(None)
            for producer in self.p4_pending:
                self.guarded("P4 producer", partial(self._p4_finish, producer))
            self._collect()
        return self.results

    def _tracing_cost(self) -> None:
        """What the tracing hooks cost a run with tracing off (the bench sets no OTEL_*)."""
        runs = 50_000 if self.args.quick else 200_000
        row = tracing_cost.measure(runs, 3 if self.args.quick else 5)
        say(f"tracing off: {row['cost_off_ns']:.0f} ns per run ({row['hooks']} hook calls)")
        self.results["tracing"] = row

    def _kcron(
        self, workdir: Path, env: Env, jobs: Path, name: str, metrics: bool | None = None
    ) -> KcronStack:
        """1 producer + N consumers on their own topic and group, started and settled."""
        topic, group = f"kcron.bench.{name}.{self.bench_id}", f"kcron-bench-{name}-{self.bench_id}"
        kstack = KcronStack(
            workdir,
            env,
            jobs,
            topic=topic,
            group=group,
            consumers=self.args.consumers,
            launcher=self.args.launcher,
            metrics=self.args.metrics == "on" if metrics is None else metrics,
        )
        try:
            kstack.wait_ready()
        except BaseException:
            kstack.stop()
            raise
        return kstack

    def _p3(self, repeat: int, metrics: bool | None = None) -> None:
        """One P3 repeat on a fresh broker and kcron: the dev broker slows down as a topic
        grows (memory storage), and earlier runs must not weigh on this one. A repeat
        with ``metrics`` given measures the overhead and skips the spawn limit."""
        args = self.args
        main = metrics is None
        metrics = args.metrics == "on" if metrics is None else metrics
        workdir = self.workdir / f"p3-r{repeat}"
        workdir.mkdir()
        say(
            f"P3 repeat {repeat}: a fresh broker and kcron "
            f"(1 producer + {args.consumers} consumers, metrics {'on' if metrics else 'off'})"
        )
        broker = Broker(workdir)
        try:
            jobs = workdir / "idle.cron"
            jobs.write_text("# P3 backfills its runs; the producer idles\n")
            env = Env(broker.bootstrap, tuple(args.kcron_env.items()))
            kstack = self._kcron(workdir, env, jobs, f"p3r{repeat}", metrics)
            try:
                row = throughput.run_repeat(
                    kstack, workdir, args.p3_runs, repeat, args.spawn_seconds if main else None
                )
            finally:
                kstack.stop()
            row["main"] = main
            row["scrapes"] = kstack.scrapes
            self.p3_rows.append(row)
        finally:
            broker.stop()

    def _queue_fillers(self) -> None:
        """P3 and P4 work, in order. The quick mode fits it between measured minutes and
        starts the P4 producer just before the last one (the P2 minute), which it measures."""
        args = self.args
        p4_file = self.workdir / "p4-jobs.cron"
        per_job = 0.0012  # seconds of parsing per job on this machine, with headroom
        measured = {f"p{i}": getattr(args, f"p{i}_minutes") for i in (1, 2) if f"p{i}" in args.only}
        last_slot = precision.minutes_used(args.layout, measured) - 1
        if "p4" in args.only:
            say(f"P4: generating {args.p4_jobs:,} jobs")
            self.p4_specs = scale.generate(p4_file, args.p4_jobs)
            for _ in range(args.p4_repeats):
                self.fillers.append(
                    Filler("P4 check", 5 + per_job * args.p4_jobs, partial(self._p4_check, p4_file))
                )
                if not args.quick:
                    self.fillers.append(
                        Filler("P4 producer", math.inf, partial(self._p4_full, p4_file))
                    )
        if "p3" in args.only:
            estimate = 25 + 3 * args.spawn_seconds + args.p3_runs / 40
            self.fillers.extend(Filler("P3", estimate, work) for work in self._p3_order())
        if "p4" in args.only and args.quick:
            if last_slot <= 0:  # one measured minute (or none): start the producer right away
                self._p4_start(p4_file)
            else:
                self.fillers.append(
                    Filler(
                        "P4 producer",
                        5 + per_job * args.p4_jobs,
                        partial(self._p4_start, p4_file),
                        not_before_slot=last_slot,
                    )
                )
        if not args.quick:  # full mode: nothing runs between measured minutes
            for filler in self.fillers:
                filler.estimate_s = math.inf

    def _p3_order(self) -> list[Callable[[], None]]:
        """The main repeats, the opposite-metrics ones in between (on, off, on, off, on)."""
        args = self.args
        other = args.metrics != "on"
        main = [partial(self._p3, rep) for rep in range(1, args.p3_repeats + 1)]
        extra = [
            partial(self._p3, args.p3_repeats + n, other) for n in range(1, args.p3_metrics_off + 1)
        ]
        order: list[Callable[[], None]] = []
        while main or extra:
            order += [main.pop(0)] if main else []
            order += [extra.pop(0)] if extra else []
        return order

    def _p4_check(self, path: Path) -> None:
        say(f"P4: kcron check on {self.args.p4_jobs:,} jobs")
        row = scale.measure_check(path)
        say(
            f"P4: kcron check took {row['seconds']:.1f} s, peak RSS "
            f"{row['peak_rss_mib']:.0f} MiB, load {row['load_average']}"
        )
        self.p4_checks.append(row)

    def _p4_start(self, path: Path) -> None:
        repeat = len(self.p4_rows) + len(self.p4_pending) + 1
        say(f"P4: starting a producer on {self.args.p4_jobs:,} jobs (repeat {repeat})")
        producer = scale.ProducerRun(self.workdir, self.env, path, self.p4_specs, repeat)
        producer.wait_ready()
        self.p4_pending.append(producer)

    def _p4_finish(self, producer: scale.ProducerRun) -> None:
        self.p4_rows.append(producer.finish())

    def _p4_full(self, path: Path) -> None:
        self._p4_start(path)
        producer = self.p4_pending.pop()
        assert producer.boundary is not None
        sleep_until(producer.boundary)
        self.p4_rows.append(producer.finish())

    # -- P1 and P2 ------------------------------------------------------------------------
    def _precision(self, cron: SystemCron) -> None:
        args = self.args
        phases = [
            precision.Phase(name, jobs)
            for name, jobs in (("p1", args.p1_jobs), ("p2", args.p2_jobs))
            if name in args.only
        ]
        if not phases:
            return
        jobs = self.workdir / "kcron.cron"
        jobs.write_text("# filled in once the measured minutes are known\n")
        kstack = self._kcron(self.workdir, self.env, jobs, "p12")
        try:
            self._measure_minutes(kstack, cron, phases)
        finally:
            kstack.stop()
            self.results["p12_metrics"] = {"on": kstack.metrics, "scrapes": kstack.scrapes}

    def _measure_minutes(
        self, kstack: KcronStack, cron: SystemCron, phases: list[precision.Phase]
    ) -> None:
        args = self.args
        stamp = self.workdir / "stamp.sh"
        stamp.write_text(precision.STAMP_SCRIPT)
        stamp.chmod(0o755)
        for phase in phases:
            phase.out = self.workdir / f"{phase.name}.out"
        first = next_boundary(time.time(), lead_s=FIRST_SLOT_LEAD_S)
        repeats = {"p1": args.p1_minutes, "p2": args.p2_minutes}
        slots = precision.plan(first, phases, repeats, args.layout)
        kcron_lines = [line for ph in phases for line in precision.kcron_lines(ph, stamp)]
        cron_lines = [line for ph in phases for line in precision.cron_lines(ph, stamp)]
        tmp = kstack.jobs.with_suffix(".tmp")
        tmp.write_text("\n".join(kcron_lines) + "\n")
        tmp.replace(kstack.jobs)  # the producer notices the new file and reloads it
        cron.set_block(cron_lines)
        kstack.wait_for(
            lambda recs: any(
                r.get("msg") == "job file reloaded" and r.get("jobs") == len(kcron_lines)
                for r in recs
            ),
            30,
            "the producer to reload the job file",
        )
        say(
            f"P1/P2: {len(slots)} measured minutes from "
            f"{time.strftime('%H:%M', time.gmtime(first))} UTC ({args.layout})"
        )
        kept: list[dict[str, Any]] = []
        kstack.keep = lambda r: str(r.get("job", ""))[:3] in ("p1-", "p2-")
        kstack.kept = kept
        loads: dict[int, list[float]] = {}
        by_name = {ph.name: ph for ph in phases}
        for index, slot in enumerate(slots):
            self.run_fillers(slot.at, index)
            sleep_until(slot.at)
            phase = by_name[slot.phase]
            minute = time.strftime("%H:%M", time.gmtime(slot.at))
            with contextlib.suppress(BenchError):  # missing runs are counted and reported
                kstack.wait_for(
                    partial(_slot_done, phase, slot),
                    slot.at + SLOT_TIMEOUT_S - time.time(),
                    f"{slot.phase} runs of {minute}",
                )
            time.sleep(0.5)
            kstack.poll()
            loads[slot.at] = load_average()
            say(
                f"{slot.phase} minute {minute} "
                f"({'+'.join(slot.schedulers)}): {_slot_line(phase, slot)}; "
                f"load {loads[slot.at]}"
            )
        cron.set_block([])
        kstack.keep = None
        for phase in phases:
            self.results[phase.name] = precision.analyse(phase, kept, loads)

    # -- results ------------------------------------------------------------------------
    def _collect(self) -> None:
        if self.p3_rows:
            self.results["p3"] = throughput.summary(self.p3_rows)
        if self.p4_rows or self.p4_checks:
            rows = self.p4_rows
            p4: dict[str, Any] = {
                "jobs": self.args.p4_jobs,
                "checks": self.p4_checks,
                "producers": rows,
                "check_s": spread([c["seconds"] for c in self.p4_checks]),
                "check_rss_mib": spread([c["peak_rss_mib"] for c in self.p4_checks]),
            }
            for key in ("parse_s", "startup_s", "due", "first_delivered_s", "last_delivered_s"):
                p4[key] = spread([r[key] for r in rows if r[key] is not None])
            p4["producer_rss_mib"] = spread(
                [r["peak_rss_mib"] for r in rows if r["peak_rss_mib"] is not None]
            )
            if self.args.quick and self.args.layout == "overlap":
                p4["note"] = (
                    "Quick mode: the P4 producer's measured minute is the P2 minute, "
                    "so both share the 2 cores."
                )
            self.results["p4"] = p4


def _slot_line(phase: precision.Phase, slot: precision.Slot) -> str:
    """Each scheduler's lateness at one slot, for the progress line."""
    parts = []
    stamps = [s for s in precision.read_stamps(phase.out) if s.scheduled == slot.at]
    for name in slot.schedulers:
        late = sorted(s.lateness for s in stamps if s.scheduler == name)
        if late:
            d = distribution(late)
            parts.append(
                f"{name} n={d['n']} p50={report.dur(d['p50'])} "
                f"p99={report.dur(d['p99'])} max={report.dur(d['max'])}"
            )
        else:
            parts.append(f"{name}: no runs")
    return "; ".join(parts)


def _slot_done(phase: precision.Phase, slot: precision.Slot, _records: object) -> bool:
    return precision.slot_complete(phase, slot)


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds: crontab block removed, processes stopped


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # ignored in the background
        signal.signal(signal.SIGINT, _terminate)
    if args.report_only:
        results = json.loads(args.report_only.read_text())
        out = args.out if "--out" in (argv or sys.argv) else args.report_only.parent
        paths = report.write(results, out)
        say("wrote " + ", ".join(str(p) for p in paths.values()))
        print(report.readme_table(results))
        return 0
    started = time.time()
    machine = machine_info()
    say(
        f"machine: {machine['cores']} cores, Python {machine['python']}, {machine['broker']}; "
        f"load {load_average()}"
    )
    try:
        with machine_lock():
            workdir = Path(tempfile.mkdtemp(prefix="kcron-bench-"))
            try:
                bench = Bench(args, workdir)
                load_start = load_average()
                results = bench.run()
            finally:
                if args.keep:
                    say(f"logs kept in {workdir}")
                else:
                    shutil.rmtree(workdir, ignore_errors=True)
    except Busy as exc:
        say(str(exc))
        return 75
    except BenchError as exc:
        say(f"failed: {exc}")
        return 1
    command = "make bench-quick" if args.quick else "make bench"
    if sys.argv[1:] and argv is None and sys.argv[1:] != ["--quick"]:
        command = "python -m bench.run " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    results.update(
        machine=machine,
        kcron=kcron_info(),
        started=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        elapsed_s=time.time() - started,
        load_average={"start": load_start, "end": load_average()},
        command=command,
        config={
            "quick": args.quick,
            "layout": args.layout,
            "consumers": args.consumers,
            "launcher": args.launcher,
            "kcron_env": args.kcron_env,
            "p1_jobs": args.p1_jobs,
            "p1_minutes": args.p1_minutes,
            "p2_jobs": args.p2_jobs,
            "p2_minutes": args.p2_minutes,
            "p3_runs": args.p3_runs,
            "p3_repeats": args.p3_repeats,
            "spawn_seconds": args.spawn_seconds,
            "p3_metrics_off": args.p3_metrics_off,
            "metrics": args.metrics,
            "p4_jobs": args.p4_jobs,
            "p4_repeats": args.p4_repeats,
        },
    )
    paths = report.write(results, args.out)
    print(paths["summary"].read_text())
    say(
        "wrote "
        + ", ".join(str(p) for p in paths.values())
        + f" in {(time.time() - started) / 60:.1f} min"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
