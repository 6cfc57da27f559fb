"""Fault tests with real ``kcron consume`` processes: R1 (kill -9), R2 (SIGTERM), R4 (a
frozen broker). Each job appends its run id to a file, so "executed" is what
really ran; each test prints its figures.

Runs are written by the test at a steady pace (as a producer would), so there
is work in flight whenever a consumer is stopped.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from kcron.message import RunMessage
from tests.conftest import Broker
from tests.integration.runs import a_run, create_topics, own_broker, records, ts
from tests.support import Kcron, kcron_env, read_lines

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTITIONS = 6
CONSUMERS = 3
RUNS = 300
RATE = 5.0  # runs per second written to the topic: 300 runs in 60 s
JOB = "sh -c 'sleep 0.2; echo $KCRON_RUN_ID >> {ran}'"


class Ticker(threading.Thread):
    """Writes runs at a steady pace, each due ``ahead`` seconds after it is sent."""

    def __init__(
        self, bootstrap: str, topic: str, command: str, rate: float, count: int | None,
        ahead: float = 0.0,
    ) -> None:  # fmt: skip
        super().__init__(daemon=True)
        self._producer = Producer(
            {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 0}
        )
        self._topic, self._command, self._rate, self._count = topic, command, rate, count
        self._ahead = ahead
        self.stop = threading.Event()
        self.sent: list[RunMessage] = []
        self.acked: set[str] = set()
        self.errors: list[str] = []

    def run(self) -> None:
        started = time.monotonic()
        while not self.stop.is_set() and (self._count is None or len(self.sent) < self._count):
            due = datetime.now(UTC) + timedelta(seconds=self._ahead)
            msg = a_run(self._command, job="fault", scheduled_for=due)

            def on_delivery(err: Any, _m: Any, run_id: str = msg.id) -> None:
                if err is not None:
                    self.errors.append(str(err))
                else:
                    self.acked.add(run_id)

            self._producer.produce(self._topic, key=msg.key, value=msg.encode(),
                                   on_delivery=on_delivery)  # fmt: skip
            self.sent.append(msg)
            self._producer.poll(0)
            next_at = started + len(self.sent) / self._rate
            while not self.stop.is_set() and time.monotonic() < next_at:
                self._producer.poll(min(0.05, max(0.0, next_at - time.monotonic())))
        self._producer.flush(120)


@dataclass
class Group:
    broker: str
    topic: str
    group: str
    tmp_path: Path
    procs: list[Kcron]
    env: dict[str, str]
    slots: list[Kcron] = field(default_factory=list)
    retired: list[Kcron] = field(default_factory=list)

    def start(self) -> Kcron:
        log = self.tmp_path / f"consume-{len(self.procs)}.log"
        proc = Kcron(["consume"], kcron_env(self.broker, self.topic, self.group, **self.env), log)
        self.procs.append(proc)
        return proc

    @property
    def everyone(self) -> list[Kcron]:
        return self.procs

    def wait_stable(self, timeout: float = 60) -> None:
        def stable() -> bool:
            owned = [p for c in self.slots for p in c.assigned()]
            return sorted(owned) == list(range(PARTITIONS))

        self.slots[0].wait_for(stable, timeout, "the group to settle")


def committed_before(workers: list[Kcron], topic: str, moment: float) -> dict[str, int]:
    """Per "topic:partition", the highest offset any worker had committed by ``moment``."""
    out: dict[str, int] = {}
    for r in records(workers, "offsets committed"):
        if ts(r) <= moment:
            for key, offset in r["offsets"].items():
                out[key] = max(out.get(key, 0), offset)
    return out


def in_flight_at(victim: Kcron, workers: list[Kcron], topic: str, moment: float) -> int:
    """Runs the victim had started whose offsets nobody had committed when it died:
    the most that can run again elsewhere."""
    committed = committed_before(workers, topic, moment)
    count = 0
    for r in victim.messages("run started"):
        key = f"{r.get('topic') or topic}:{r['partition']}"
        if r["offset"] >= committed.get(key, 0):
            count += 1
    return count


def chaos(
    broker: Broker, topic: str, group: str, tmp_path: Path, procs: list[Kcron], how: signal.Signals
) -> dict[str, Any]:
    ran = tmp_path / "ran.txt"
    create_topics(broker.bootstrap, topic, PARTITIONS)
    env = {
        "KCRON_CONCURRENCY": "2",
        "KCRON_GRACE": "20",
        "KCRON_PARTITIONS": str(PARTITIONS),
        "KCRON_LOG_LEVEL": "DEBUG",  # "offsets committed", to bound what may run twice
    }
    grp = Group(broker.bootstrap, topic, group, tmp_path, procs, env)
    grp.slots = [grp.start() for _ in range(CONSUMERS)]
    grp.wait_stable()
    rng = random.Random(4242 if how is signal.SIGKILL else 2424)
    ticker = Ticker(broker.bootstrap, topic, JOB.format(ran=ran), RATE, RUNS)
    began = time.monotonic()
    ticker.start()
    kills: list[tuple[Kcron, float]] = []
    stop_times: list[float] = []
    while ticker.is_alive():
        time.sleep(rng.uniform(5, 8))
        if not ticker.is_alive():
            break
        slot = rng.randrange(CONSUMERS)
        victim = grp.slots[slot]
        at = time.time()
        if how is signal.SIGKILL:
            victim.proc.kill()
            victim.proc.wait()
        else:
            victim.signal(signal.SIGTERM)
            assert victim.proc.wait(40) == 0, victim.text()[-2000:]
            stop_times.append(time.time() - at)
        kills.append((victim, at))
        grp.slots[slot] = grp.start()
    ticker.join(150)
    assert not ticker.errors, ticker.errors[:3]
    expected = {m.id for m in ticker.sent}
    assert len(expected) == RUNS
    grp.slots[0].wait_for(lambda: set(read_lines(ran)) >= expected, 120, "every run")
    time.sleep(2)  # a duplicate still running would show up now
    elapsed = time.monotonic() - began
    ids = read_lines(ran)
    counts = Counter(ids)
    lateness = [r["lateness_ms"] for r in records(procs, "run started")]
    figures = {
        "runs": RUNS,
        "kills": len(kills),
        "lost": len(expected - set(ids)),
        "executed": len(ids),
        "duplicated": sum(n - 1 for n in counts.values()),
        "in_flight_at_kills": sum(in_flight_at(v, procs, topic, at) for v, at in kills),
        "max_lateness_s": max(lateness) / 1000,
        "seconds": round(elapsed, 1),
        "stop_s": [round(s, 1) for s in stop_times],
    }
    assert not set(ids) - expected, "a run nobody produced"
    return figures


def test_r1_kill_9_redelivers_in_flight_runs_and_loses_none(
    broker: Broker, topic: str, group: str, tmp_path: Path, procs: list[Kcron]
) -> None:
    figures = chaos(broker, topic, group, tmp_path, procs, signal.SIGKILL)
    print(
        f"\nR1 kill -9: {figures['runs']} runs, {figures['kills']} kills, lost {figures['lost']}, "
        f"duplicated {figures['duplicated']} (in flight at the kills: "
        f"{figures['in_flight_at_kills']}), max lateness {figures['max_lateness_s']:.1f} s, "
        f"{figures['seconds']} s"
    )
    assert figures["kills"] >= 5
    assert figures["lost"] == 0
    assert figures["duplicated"] <= figures["in_flight_at_kills"]


def test_r2_sigterm_loses_nothing_and_doubles_nothing(
    broker: Broker, topic: str, group: str, tmp_path: Path, procs: list[Kcron]
) -> None:
    figures = chaos(broker, topic, group, tmp_path, procs, signal.SIGTERM)
    print(
        f"\nR2 SIGTERM: {figures['runs']} runs, {figures['kills']} stops (each took "
        f"{figures['stop_s']} s), lost {figures['lost']}, duplicated {figures['duplicated']}, "
        f"max lateness {figures['max_lateness_s']:.1f} s, {figures['seconds']} s"
    )
    assert figures["kills"] >= 5
    assert figures["lost"] == 0
    assert figures["duplicated"] == 0


FREEZE_S = 30.0


def test_r4_frozen_broker_loses_no_run_and_late_runs_are_marked_late(
    topic: str, group: str, tmp_path: Path, procs: list[Kcron]
) -> None:
    ran = tmp_path / "ran.txt"
    with own_broker(tmp_path) as embedded:
        assert embedded.process is not None
        bootstrap = embedded.bootstrap
        create_topics(bootstrap, topic, 2)
        env = {"KCRON_PARTITIONS": "2", "KCRON_CONCURRENCY": "2"}
        grp = Group(bootstrap, topic, group, tmp_path, procs, env)
        grp.slots = [grp.start() for _ in range(2)]

        def stable() -> bool:
            return sorted(p for c in grp.slots for p in c.assigned()) == [0, 1]

        grp.slots[0].wait_for(stable, 60, "the group to settle")
        # Like the producer: a run every 0.25 s, sent 1 s before it is due.
        ticker = Ticker(bootstrap, topic, JOB.format(ran=ran), 4.0, None, ahead=1.0)
        ticker.start()
        time.sleep(3)
        frozen_at = time.time()
        os.kill(embedded.process.pid, signal.SIGSTOP)
        time.sleep(FREEZE_S)
        os.kill(embedded.process.pid, signal.SIGCONT)
        resumed_at = time.time()
        time.sleep(3)
        ticker.stop.set()
        ticker.join(150)
        assert not ticker.errors, ticker.errors[:3]
        expected = {m.id for m in ticker.sent}
        acked = len(ticker.acked)
        sent = list(ticker.sent)
        del ticker  # its producer must not outlive the broker
        grp.slots[0].wait_for(lambda: set(read_lines(ran)) >= expected, 90, "every run")
        time.sleep(2)
        done_at = time.time()
        workers_up = all(c.proc.poll() is None for c in grp.slots)
        for proc in grp.slots:
            assert proc.stop() == 0  # while the broker is still there to commit to
        ids = read_lines(ran)
        counts = Counter(ids)
        started = records(procs, "run started")
        late = [r for r in started if r.get("late")]
        due_in_freeze = [m for m in sent if frozen_at <= m.scheduled_for.timestamp() <= resumed_at]
        first_after = min((ts(r) for r in started if ts(r) > resumed_at), default=resumed_at)
        figures = {
            "runs": len(expected),
            "acked": acked,
            "due_while_frozen": len(due_in_freeze),
            "lost": len(expected - set(ids)),
            "duplicated": sum(n - 1 for n in counts.values()),
            "late": len(late),
            "max_lateness_s": max(r["lateness_ms"] for r in started) / 1000,
            "first_run_after_resume_s": round(first_after - resumed_at, 1),
            "all_done_after_resume_s": round(done_at - resumed_at - 2, 1),
        }
        print(
            f"\nR4 broker frozen {FREEZE_S:.0f} s: {figures['runs']} runs "
            f"({figures['due_while_frozen']} due while frozen), lost {figures['lost']}, "
            f"duplicated {figures['duplicated']}, {figures['late']} marked late, max lateness "
            f"{figures['max_lateness_s']:.1f} s, first run {figures['first_run_after_resume_s']} s "
            f"after resume, all done {figures['all_done_after_resume_s']} s after resume"
        )
        assert figures["lost"] == 0
        assert figures["acked"] == figures["runs"]
        assert figures["due_while_frozen"] > 50
        assert figures["late"] >= figures["due_while_frozen"] // 2
        for r in started:
            assert bool(r.get("late")) == (r["lateness_ms"] >= 5000), r
        assert workers_up, "the workers ride it out"
