"""The partitions experiment: what 1, 2 or 3 partitions do to a group of workers.

For each case: a fresh topic with P partitions, C real ``kcron consume``
processes in one new consumer group (JSON logs, one file each), a backfill of
a fixed one-job file so that exactly ``runs`` runs arrive, each keyed by a
fresh UUID, then a wait until every run has executed. Everything measured
comes from the workers' own log lines ("partitions assigned", "run started",
"run succeeded"), never from offsets or watermarks, so it holds on any
Kafka-protocol broker.

The extra cases are the ones an operator meets: as many workers as
partitions, more workers than partitions, a worker stopped mid-run, and a
topic grown while the group runs (where the broker has CreatePartitions).

This module imports no Kafka client at import time (``kcron`` imports it for
every command); the Kafka work goes through kcron.kafka and kcron.dispatch.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kcron.errors import BrokerError, ExitCode, KcronError
from kcron.settings import Settings
from tools.harness import Process, kcron_argv, parse_ts

Progress = Callable[[str], None]

# Backfilled runs are scheduled once a minute from here: a fixed, known window.
WINDOW_START = datetime(2026, 1, 1, tzinfo=UTC)
FAST_COMMAND = "true"
# Long enough that the stopped worker is caught with a run in flight.
SLOW_COMMAND = "sleep 0.05"
# The dev broker makes the first join of a group wait about session.timeout/2.
SESSION_TIMEOUT_MS = 6000
FETCH_WAIT_MAX_MS = 20
GRACE_S = 10
# One run at a time per worker, so a worker's run count is its share of the
# partitions' runs, and a stop catches at most one run in flight.
CONCURRENCY = 1
STABLE_TIMEOUT_S = 60.0
# After the last expected run, how long to keep watching for a duplicate.
SETTLE_S = 1.0
POLL_S = 0.05
MIN_RUNS = 120
_END_MESSAGES = ("run succeeded", "run failed")
DEFAULT_PARTITIONS = (1, 2, 3)
REPORT_NAME = "partitions-experiment"


class ExperimentError(KcronError):
    """A case could not be carried out (a worker died, the group never settled)."""

    exit_code = ExitCode.FAILURE


# -- results --------------------------------------------------------------------


@dataclass(frozen=True)
class ConsumerResult:
    name: str
    partitions: tuple[int, ...]  # owned once the group was stable, before any run arrived
    final_partitions: tuple[int, ...]  # owned at the end (a stopped worker: when stopped)
    runs: int  # runs it executed to the end ("run succeeded" or "run failed")
    runs_by_partition: dict[int, int]
    stopped: bool = False  # stopped mid-run by the experiment
    exit_code: int | None = None

    @property
    def idle(self) -> bool:
        return not self.partitions and not self.final_partitions


@dataclass(frozen=True)
class Recovery:
    """A worker stopped with SIGTERM mid-run; seconds are counted from the signal."""

    stopped: str
    moved_partitions: tuple[int, ...]
    runs_before_stop: int  # runs executed by the whole group when the signal was sent
    in_flight: bool  # the stopped worker had a run going when it got the signal
    in_flight_finished: bool  # ... and finished it itself before leaving
    exited_s: float | None  # the stopped worker had finished its run, committed and exited
    noticed_s: float | None  # a survivor's partitions were revoked for the rebalance
    reassigned_s: float | None  # the survivors owned every partition again
    resumed_s: float | None  # a survivor started a run of a moved partition


@dataclass(frozen=True)
class CaseResult:
    name: str
    partitions: int
    consumers: tuple[ConsumerResult, ...]
    runs: int  # runs backfilled
    executed: int  # distinct runs executed
    duplicates: int  # executions beyond the first of a run
    failed: int  # executions that ended in "run failed"
    lost: int  # runs backfilled but never executed
    group_stable_s: float  # consumers started -> every partition owned
    drain_s: float  # backfill started -> last run done
    topic: str
    group: str
    command: str
    recovery: Recovery | None = None
    grown_from: int | None = None  # the topic was grown from this many partitions mid-case
    runs_after_growth: dict[int, int] | None = None  # per partition, of runs sent after it
    log_dir: str = ""

    @property
    def exactly_once(self) -> bool:
        return self.executed == self.runs and not (self.duplicates or self.failed or self.lost)

    @property
    def ok(self) -> bool:
        """No run lost or failed; a duplicate is tolerated only where a worker was stopped."""
        allowed = self.recovery is not None
        return not self.lost and not self.failed and (allowed or not self.duplicates)

    @property
    def runs_by_partition(self) -> dict[int, int]:
        total: Counter[int] = Counter()
        for consumer in self.consumers:
            total.update(consumer.runs_by_partition)
        return {p: total.get(p, 0) for p in range(self.partitions)}

    @property
    def busy(self) -> tuple[ConsumerResult, ...]:
        return tuple(c for c in self.consumers if c.runs)

    @property
    def idle(self) -> tuple[ConsumerResult, ...]:
        return tuple(c for c in self.consumers if c.idle)


@dataclass(frozen=True)
class Skipped:
    name: str
    partitions: int
    consumers: int
    reason: str


@dataclass(frozen=True)
class Failed:
    name: str
    partitions: int
    consumers: int
    error: str


Row = CaseResult | Skipped | Failed


# -- worker processes and their logs ----------------------------------------------


class _Worker(Process):
    """One real ``kcron consume`` process whose JSON log lines go to a file."""

    def __init__(self, name: str, env: dict[str, str], log_path: Path) -> None:
        super().__init__(kcron_argv("consume"), env, log_path, name=name, failure=ExperimentError)

    def wait(self, timeout: float = GRACE_S + 20.0) -> int:
        return super().wait(timeout)


def _kcron_parent() -> str:
    import kcron

    return str(Path(kcron.__file__).resolve().parent.parent)


def worker_env(
    bootstrap: str,
    topic: str,
    group: str,
    instance: str,
    partitions: int,
    kafka_options: Sequence[str] = (),
) -> dict[str, str]:
    """The environment of one experiment worker: nothing of the caller's KCRON_* leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KCRON_")}
    env.update(
        KCRON_BOOTSTRAP_SERVERS=bootstrap,
        KCRON_TOPIC=topic,
        KCRON_GROUP=group,
        KCRON_INSTANCE=instance,
        KCRON_PARTITIONS=str(partitions),
        KCRON_LOG_FORMAT="json",
        KCRON_LOG_LEVEL="INFO",
        KCRON_ALLOW_ROOT_JOBS="true",  # the experiment's own jobs, perhaps as root
        KCRON_SESSION_TIMEOUT_MS=str(SESSION_TIMEOUT_MS),
        KCRON_CONCURRENCY=str(CONCURRENCY),
        KCRON_FETCH_WAIT_MAX_MS=str(FETCH_WAIT_MAX_MS),
        KCRON_GRACE=str(GRACE_S),
        PYTHONUNBUFFERED="1",
        # The workers run the same kcron as this process, installed or not.
        PYTHONPATH=os.pathsep.join(p for p in (_kcron_parent(), env.get("PYTHONPATH")) if p),
    )
    if kafka_options:
        env["KCRON_KAFKA_OPTIONS"] = " ".join(kafka_options)
    return env


def _assignment(records: Sequence[dict[str, Any]], until: float | None = None) -> set[int] | None:
    """Partitions a worker owns after ``records`` (None: it never got an assignment)."""
    owned: set[int] | None = None
    for rec in records:
        if until is not None and parse_ts(rec["ts"]) > until:
            break
        msg = rec.get("msg", "")
        if msg == "partitions assigned":
            owned = set(rec["partitions"])
        elif owned is not None and _is_revoke(msg):
            owned -= set(rec["partitions"])
    return owned


def _is_revoke(msg: str) -> bool:
    return msg == "partitions revoked" or msg.startswith("partitions lost")


def _stable(workers: Sequence[_Worker], partitions: int) -> dict[str, tuple[int, ...]] | None:
    """Each worker's partitions once every worker got an assignment and they cover the
    topic exactly once between them; else None."""
    owned: dict[str, tuple[int, ...]] = {}
    for worker in workers:
        got = _assignment(worker.records())
        if got is None:
            return None
        owned[worker.name] = tuple(sorted(got))
    every = sorted(p for parts in owned.values() for p in parts)
    return owned if every == list(range(partitions)) else None


def _wait_stable(
    workers: Sequence[_Worker], partitions: int, timeout: float = STABLE_TIMEOUT_S
) -> dict[str, tuple[int, ...]]:
    deadline = time.monotonic() + timeout
    seen: dict[str, tuple[int, ...]] | None = None
    while time.monotonic() < deadline:
        for worker in workers:
            worker.check_alive("the group to settle")
        now = _stable(workers, partitions)
        if now is not None and now == seen:  # the same on two looks in a row
            return now
        seen = now
        time.sleep(0.2)
    tails = "\n".join(f"--- {w.name} ({w.log_path}):\n{w.tail.text_tail(800)}" for w in workers)
    raise ExperimentError(
        f"the group did not settle on {partitions} partitions in {timeout:g}s\n{tails}"
    )


def _ends(workers: Sequence[_Worker]) -> list[dict[str, Any]]:
    return [r for w in workers for r in w.records() if r.get("msg") in _END_MESSAGES]


def _wait_runs(
    workers: Sequence[_Worker],
    runs: int,
    timeout: float,
    progress: Progress,
    label: str,
    until: Callable[[], bool] | None = None,
) -> None:
    """Until ``runs`` distinct runs ended (or ``until`` holds), reporting progress."""
    deadline = time.monotonic() + timeout
    last_report = time.monotonic()
    while time.monotonic() < deadline:
        done = len({r["run"] for r in _ends(workers)})
        if done >= runs or (until is not None and until()):
            return
        for worker in workers:
            worker.check_alive("runs")
        if time.monotonic() - last_report >= 2.0:
            progress(f"{label}{done}/{runs} runs executed")
            last_report = time.monotonic()
        time.sleep(POLL_S)


# -- one case ---------------------------------------------------------------------


def _say_nothing(_text: str) -> None:
    pass


@contextlib.contextmanager
def _workdir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="kcron-experiment-") as tmp:
        yield Path(tmp)


def job_line(command: str) -> str:
    """The experiment's one job: a run every minute, so a window of N minutes is N runs."""
    return f"name=tick * * * * * {command}"


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def case_name(partitions: int, consumers: int) -> str:
    return f"{plural(partitions, 'partition')}, {plural(consumers, 'consumer')}"


def _settings(
    bootstrap: str, topic: str, partitions: int, kafka_options: Sequence[str]
) -> Settings:
    pairs = []
    for option in kafka_options:
        key, sep, value = option.partition("=")
        if not sep or not key:
            raise ExperimentError(f"kafka option '{option}' is not KEY=VALUE")
        pairs.append((key.strip(), value))
    return Settings(
        bootstrap_servers=bootstrap,
        topic=topic,
        partitions=partitions,
        kafka_options=tuple(pairs),
        instance="experiment",
    )


def _backfill(settings: Settings, job_file: Path, first: int, count: int) -> int:
    """Produce runs ``first`` .. ``first+count-1`` of the one-a-minute job file."""
    from kcron import dispatch, jobfile, schedule

    jobs = jobfile.load(job_file).jobs
    start = WINDOW_START + timedelta(minutes=first)
    planned = schedule.runs_between(jobs, start, start + timedelta(minutes=count))
    if len(planned) != count:
        raise ExperimentError(f"the job file yields {len(planned)} runs, not {count}")
    return dispatch.backfill(settings, planned)


@dataclass
class _Case:
    """A case while it runs: its topic, its workers and what happened to them."""

    bootstrap: str
    settings: Settings
    options: list[str]
    workdir: Path
    tag: str
    partitions: int
    runs: int
    command: str
    stop_one_after: int | None
    grow_to: int | None
    say: Progress
    workers: list[_Worker] = field(default_factory=list)
    stable: dict[str, tuple[int, ...]] = field(default_factory=dict)
    stable_s: float = 0.0
    drain_s: float = 0.0
    teardown: float = 0.0
    victim: _Worker | None = None
    stop_at: float | None = None
    runs_before_stop: int = 0
    in_flight_run: str | None = None
    exited_s: float | None = None
    codes: dict[str, int] = field(default_factory=dict)

    @property
    def topic(self) -> str:
        return self.settings.topic

    @property
    def group(self) -> str:
        return f"kcron-experiment-{self.tag}"

    @property
    def job_file(self) -> Path:
        return self.workdir / f"{self.tag}.cron"

    @property
    def timeout(self) -> float:
        return 30.0 + self.runs * 0.25

    @property
    def first_half(self) -> int:
        return self.runs if self.grow_to is None else self.runs // 2


def _check_case(
    partitions: int, consumers: int, runs: int, stop: int | None, grow: int | None
) -> None:
    if partitions < 1 or consumers < 1 or runs < 1:
        raise ValueError("partitions, consumers and runs must be at least 1")
    if stop is not None and consumers < 2:
        raise ValueError("stopping a worker mid-run needs a survivor: consumers >= 2")
    if grow is not None and grow <= partitions:
        raise ValueError("grow_to must be more than partitions")


def run_case(
    bootstrap: str,
    partitions: int,
    consumers: int,
    runs: int = MIN_RUNS,
    *,
    stop_one_after: int | None = None,
    grow_to: int | None = None,
    command: str | None = None,
    name: str | None = None,
    kafka_options: Sequence[str] = (),
    workdir: Path | None = None,
    progress: Progress = _say_nothing,
) -> CaseResult:
    """Run one case end to end on the broker at ``bootstrap`` and measure it.

    ``stop_one_after``: once the group executed that many runs, SIGTERM one
    busy worker while it has a run in flight, and measure how its partitions
    move to the survivors. ``grow_to``: backfill half the runs, grow the
    topic to that many partitions (raises UnsupportedByBroker where the
    broker cannot), then backfill the other half.
    """
    _check_case(partitions, consumers, runs, stop_one_after, grow_to)
    command = command or (SLOW_COMMAND if stop_one_after is not None else FAST_COMMAND)
    kind = "stop" if stop_one_after is not None else "grow" if grow_to is not None else "share"
    name = name or Case(partitions, consumers, kind, grow_to).name
    tag = uuid.uuid4().hex[:10]
    options = list(kafka_options)
    if grow_to is not None:
        # librdkafka notices new partitions at its next metadata refresh (5 min by default).
        options.append("topic.metadata.refresh.interval.ms=1000")
    with _workdir(workdir) as wd:
        case = _Case(
            bootstrap=bootstrap,
            settings=_settings(bootstrap, f"kcron.experiment.{tag}", partitions, kafka_options),
            options=options,
            workdir=wd,
            tag=tag,
            partitions=partitions,
            runs=runs,
            command=command,
            stop_one_after=stop_one_after,
            grow_to=grow_to,
            say=progress,
        )
        _prepare_topic(case)
        try:
            _start_group(case, [f"c{i + 1}" for i in range(consumers)])
            _drive(case)
        finally:
            for worker in case.workers:
                worker.terminate()
            case.codes = {w.name: w.wait() for w in case.workers}
    result = _measure(case, name, str(workdir) if workdir is not None else "")
    progress(
        f"{result.executed}/{runs} runs executed in {case.drain_s:.1f} s, "
        f"{result.duplicates} duplicates, {result.lost} lost"
    )
    return result


def _prepare_topic(case: _Case) -> None:
    from kcron import kafka

    kafka.wait_for_broker(case.settings)
    if case.grow_to is not None:  # ask before starting anything: the dev broker cannot
        kafka.add_partitions(case.settings, _probe_topic(case.settings), 2)
    if kafka.ensure_topic(case.settings) != case.partitions:
        raise ExperimentError(f"topic {case.topic} exists with another partition count")
    case.job_file.write_text(f"# kcron experiment: one run a minute\n{job_line(case.command)}\n")


def _start_group(case: _Case, names: list[str]) -> None:
    case.say(
        f"topic {case.topic} ({plural(case.partitions, 'partition')}); "
        f"starting {', '.join(names)} in group {case.group}"
    )
    started = time.monotonic()
    for n in names:
        env = worker_env(case.bootstrap, case.topic, case.group, n, case.partitions, case.options)
        case.workers.append(_Worker(n, env, case.workdir / f"{case.tag}-{n}.log"))
    case.stable = _wait_stable(case.workers, case.partitions)
    case.stable_s = time.monotonic() - started
    case.say(
        f"group stable after {case.stable_s:.1f} s: "
        + ", ".join(f"{n} owns {fmt_parts(case.stable[n])}" for n in names)
    )


def _drive(case: _Case) -> None:
    """Backfill, stop a worker or grow the topic on the way, wait for every run."""
    backfill_started = time.monotonic()
    _backfill(case.settings, case.job_file, 0, case.first_half)
    case.say(f"backfilled {case.first_half} runs (UUID keys)")
    if case.stop_one_after is not None:
        _stop_one_mid_run(case, case.stop_one_after)
    if case.grow_to is not None:
        _grow(case, case.grow_to)
    _wait_runs(case.workers, case.runs, case.timeout, case.say, "")
    case.drain_s = time.monotonic() - backfill_started
    time.sleep(SETTLE_S)  # a duplicate would show up now
    case.teardown = time.time()


def _last_run_record(worker: _Worker) -> dict[str, Any] | None:
    mine = [r for r in worker.records() if r.get("msg", "").startswith("run ")]
    return mine[-1] if mine else None


def _stop_one_mid_run(case: _Case, after: int) -> None:
    """SIGTERM the last busy worker once ``after`` runs ended and it has one in flight."""
    workers = case.workers
    victim = [w for w in workers if case.stable[w.name]][-1]

    def caught_mid_run() -> bool:
        if len(_ends(workers)) < min(after, case.runs - 1):
            return False
        last = _last_run_record(victim)
        return last is not None and last["msg"] == "run started"

    _wait_runs(workers, case.runs, case.timeout, case.say, "", until=caught_mid_run)
    case.runs_before_stop = len(_ends(workers))
    last = _last_run_record(victim)
    if last is not None and last["msg"] == "run started":
        case.in_flight_run = str(last["run"])
    victim.terminate()
    case.victim, case.stop_at = victim, victim.signalled_at
    case.say(
        f"SIGTERM to {victim.name} (owns {fmt_parts(case.stable[victim.name])}) after "
        f"{case.runs_before_stop} runs" + (", with a run in flight" if case.in_flight_run else "")
    )
    code = victim.wait()
    case.exited_s = time.time() - (case.stop_at or time.time())
    case.say(f"{victim.name} exited with code {code} {case.exited_s:.2f} s after the signal")


def _grow(case: _Case, grow_to: int) -> None:
    """Once the first half ran: grow the topic, let the group settle, send the second half."""
    from kcron import kafka

    _wait_runs(case.workers, case.first_half, case.timeout, case.say, "")
    kafka.add_partitions(case.settings, case.topic, grow_to)
    case.say(f"grew {case.topic} from {case.partitions} to {grow_to} partitions")
    _wait_stable(case.workers, grow_to)
    rest = case.runs - case.first_half
    _backfill(case.settings, case.job_file, case.first_half, rest)
    case.say(f"backfilled {rest} more runs")


def _consumer_result(case: _Case, worker: _Worker) -> ConsumerResult:
    records = worker.records()
    ends = [r for r in records if r.get("msg") in _END_MESSAGES]
    until = case.stop_at if worker is case.victim else case.teardown
    final = _assignment(records, until=until) or set()
    return ConsumerResult(
        name=worker.name,
        partitions=case.stable[worker.name],
        final_partitions=tuple(sorted(final)),
        runs=len(ends),
        runs_by_partition=dict(sorted(Counter(int(r["partition"]) for r in ends).items())),
        stopped=worker is case.victim,
        exit_code=case.codes[worker.name],
    )


def _case_recovery(case: _Case) -> Recovery | None:
    if case.victim is None or case.stop_at is None:
        return None
    return _recovery(
        case.victim,
        [w for w in case.workers if w is not case.victim],
        case.stable[case.victim.name],
        case.grow_to or case.partitions,
        case.stop_at,
        case.runs_before_stop,
        case.in_flight_run,
        case.exited_s,
    )


def _measure(case: _Case, name: str, log_dir: str) -> CaseResult:
    """The case's result, from the workers' logs alone."""
    all_records = [r for w in case.workers for r in w.records()]
    ends = [r for r in all_records if r.get("msg") in _END_MESSAGES]
    per_run = Counter(r["run"] for r in ends)
    scheduled = {r["run"]: r["scheduled_for"] for r in all_records if r.get("msg") == "run started"}
    executed_slots = {scheduled.get(run) for run in per_run}
    lost = len({_slot(i) for i in range(case.runs)} - executed_slots)
    grown = None
    if case.grow_to is not None:
        second_half = _slot(case.runs // 2)
        after = (int(r["partition"]) for r in ends if scheduled.get(r["run"], "") >= second_half)
        grown = dict(sorted(Counter(after).items()))
    return CaseResult(
        name=name,
        partitions=case.grow_to or case.partitions,
        consumers=tuple(_consumer_result(case, w) for w in case.workers),
        runs=case.runs,
        executed=len(per_run),
        duplicates=sum(per_run.values()) - len(per_run),
        failed=sum(1 for r in ends if r["msg"] == "run failed"),
        lost=lost,
        group_stable_s=case.stable_s,
        drain_s=case.drain_s,
        topic=case.topic,
        group=case.group,
        command=case.command,
        recovery=_case_recovery(case),
        grown_from=case.partitions if case.grow_to is not None else None,
        runs_after_growth=grown,
        log_dir=log_dir,
    )


def _slot(index: int) -> str:
    from kcron.message import format_time

    return format_time(WINDOW_START + timedelta(minutes=index))


def _probe_topic(settings: Settings) -> str:
    from kcron import kafka

    probe = f"kcron.experiment.probe.{uuid.uuid4().hex[:10]}"
    kafka.ensure_topic(settings, probe, 1)
    return probe


def _recovery(
    victim: _Worker,
    survivors: Sequence[_Worker],
    moved: tuple[int, ...],
    partitions: int,
    stop_at: float,
    runs_before_stop: int,
    in_flight_run: str | None,
    exited_s: float | None,
) -> Recovery:
    events = sorted(
        ((parse_ts(r["ts"]), w.name, r) for w in survivors for r in w.records()),
        key=lambda e: e[0],
    )
    owned = {w.name: _assignment(w.records(), until=stop_at) or set() for w in survivors}
    noticed: float | None = None
    reassigned: float | None = None
    resumed: float | None = None
    for ts, name, rec in events:
        if ts < stop_at:
            continue
        msg = rec.get("msg", "")
        if msg == "partitions assigned":
            owned[name] = set(rec["partitions"])
        elif _is_revoke(msg):
            owned[name] -= set(rec["partitions"])
        if noticed is None and (msg == "partitions assigned" or _is_revoke(msg)):
            noticed = ts
        every = sorted(p for parts in owned.values() for p in parts)
        if reassigned is None and every == list(range(partitions)):
            reassigned = ts
        if reassigned is not None and msg == "run started" and rec["partition"] in moved:
            resumed = ts
            break
    return Recovery(
        stopped=victim.name,
        moved_partitions=moved,
        runs_before_stop=runs_before_stop,
        in_flight=in_flight_run is not None,
        in_flight_finished=in_flight_run is not None
        and any(
            r.get("msg") == "run succeeded" and r.get("run") == in_flight_run
            for r in victim.records()
        ),
        exited_s=exited_s,
        noticed_s=None if noticed is None else max(0.0, noticed - stop_at),
        reassigned_s=None if reassigned is None else max(0.0, reassigned - stop_at),
        resumed_s=None if resumed is None else max(0.0, resumed - stop_at),
    )


# -- the whole experiment ---------------------------------------------------------


@dataclass(frozen=True)
class Case:
    partitions: int
    consumers: int
    kind: str = "share"  # "share", "stop" or "grow"
    grow_to: int | None = None

    @property
    def name(self) -> str:
        base = case_name(self.partitions, self.consumers)
        if self.kind == "stop":
            return f"{base}, one stopped mid-run"
        if self.kind == "grow":
            return f"{case_name(self.partitions, self.consumers)}, grown to {self.grow_to} live"
        return base


def plan(partitions: Sequence[int], consumers: int, extras: bool = True) -> list[Case]:
    """The sweep over ``partitions`` with ``consumers`` workers, then the operator's cases."""
    cases = [Case(p, consumers) for p in partitions]
    if extras:
        for extra in (Case(3, 3), Case(2, 3), Case(2, 2, "stop"), Case(2, 2, "grow", grow_to=3)):
            if extra not in cases:
                cases.append(extra)
    return cases


def run_experiment(
    bootstrap: str,
    cases: Sequence[Case],
    runs: int,
    *,
    kafka_options: Sequence[str] = (),
    workdir: Path | None = None,
    progress: Progress = _say_nothing,
) -> list[Row]:
    """Every case in order on one broker; a case that cannot run becomes a row saying why."""
    from kcron import kafka
    from kcron.errors import UnsupportedByBroker

    # An unreachable broker fails once, here, instead of once per case.
    kafka.wait_for_broker(_settings(bootstrap, "unused", 1, kafka_options))
    rows: list[Row] = []
    for index, case in enumerate(cases, start=1):
        label = f"[{index}/{len(cases)}] {case.name}"
        progress(label)

        def say(text: str) -> None:
            progress(f"    {text}")

        try:
            rows.append(
                run_case(
                    bootstrap,
                    case.partitions,
                    case.consumers,
                    runs,
                    name=case.name,
                    stop_one_after=runs // 4 if case.kind == "stop" else None,
                    grow_to=case.grow_to,
                    kafka_options=kafka_options,
                    workdir=workdir / f"case{index}" if workdir is not None else None,
                    progress=say,
                )
            )
        except UnsupportedByBroker as exc:
            say(f"skipped: {exc}")
            rows.append(Skipped(case.name, case.partitions, case.consumers, str(exc)))
        except (ExperimentError, BrokerError) as exc:
            say(f"FAILED: {exc}")
            rows.append(Failed(case.name, case.partitions, case.consumers, str(exc)))
    return rows


# -- rendering --------------------------------------------------------------------


def fmt_parts(parts: Iterable[int]) -> str:
    parts = list(parts)
    return ",".join(str(p) for p in parts) if parts else "nothing"
