"""kcron as `make run` starts it: the embedded broker, then 1 producer + 2 consumers.

``supervisord`` (the default) runs etc/supervisord.conf exactly as
etc/run-local.sh does, with every program's JSON log lines relayed into one
file; ``direct`` starts the same three commands as plain child processes,
one log file each (handy for py-spy). Either way the bench uses its own
port, topic, group and run directory, so a `make run` on 9092 is untouched.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import BIN, REPO, BenchError, Env, producer_ready, say
from tools.harness import Process, free_port, wait_port

READY_TIMEOUT_S = 60.0


class Broker:
    """`kcron broker --port P` on a free port, as etc/run-local.sh starts it."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.proc = Process(
            [str(BIN / "kcron"), "broker", "--port", str(self.port)],
            dict(os.environ),
            workdir / "broker.log",
            name="embedded broker",
            append=True,
            new_session=True,
            keep_records=False,
            failure=BenchError,
        )
        try:
            wait_port(self.proc, "127.0.0.1", self.port, 30)
        except BenchError:
            self.stop()
            raise BenchError(
                f"embedded broker did not start; see {workdir / 'broker.log'}"
            ) from None

    def stop(self) -> None:
        self.proc.stop(15)


class KcronStack:
    """One producer and ``consumers`` workers on ``topic``, in group ``group``."""

    def __init__(
        self,
        workdir: Path,
        env: Env,
        jobs: Path,
        topic: str,
        group: str,
        consumers: int = 2,
        launcher: str = "supervisord",
    ) -> None:
        self.workdir = workdir
        self.consumers = consumers
        self.launcher = launcher
        self._procs: list[Process] = []
        run_dir = workdir / "run"
        run_dir.mkdir(exist_ok=True)
        self.env = env.for_kcron(
            KCRON_TOPIC=topic,
            KCRON_GROUP=group,
            KCRON_JOBS=str(jobs),
            KCRON_RUN_DIR=str(run_dir),
            KCRON_PRODUCER="true",
            KCRON_CONSUMERS=str(consumers),
        )
        self.jobs = jobs
        # Records for which ``keep`` returns True are also appended to ``kept``.
        self.keep: Callable[[dict[str, Any]], bool] | None = None
        self.kept: list[dict[str, Any]] = []
        if launcher == "supervisord":
            # As etc/run-local.sh does: the pools file supervisord.conf includes
            # (only the default pool here: KCRON_QUEUES is not set).
            subprocess.run(
                [str(BIN / "python"), str(REPO / "etc" / "render-pools.py"),
                 "--conf", str(REPO / "etc" / "supervisord.conf"),
                 "--out", str(run_dir / "pools.conf")],
                env=self.env, check=True, capture_output=True,
            )  # fmt: skip
            self._spawn(
                [str(BIN / "supervisord"), "-c", str(REPO / "etc" / "supervisord.conf")],
                workdir / "kcron.log",
            )
        elif launcher == "direct":
            for index in range(consumers):
                name = f"kcron-consumer-{index:02d}"
                self._spawn(
                    [str(BIN / "kcron"), "consume", "--instance", name], workdir / f"{name}.log"
                )
            self._spawn(
                [str(BIN / "kcron"), "produce", "--instance", "kcron-producer"],
                workdir / "kcron-producer.log",
            )
        else:
            raise BenchError(f"unknown launcher {launcher!r}")

    def _spawn(self, argv: list[str], log_path: Path) -> None:
        self._procs.append(
            Process(argv, self.env, log_path, append=True, keep_records=False, failure=BenchError)
        )

    def poll(self) -> list[dict[str, Any]]:
        """New JSON log records of every kcron process, checking they are all alive."""
        new: list[dict[str, Any]] = []
        for proc in self._procs:
            new.extend(proc.poll())
        if self.keep is not None:
            self.kept.extend(r for r in new if self.keep(r))
        for proc in self._procs:
            proc.check_alive("the bench")
        return new

    def wait_for(
        self, done: Callable[[list[dict[str, Any]]], bool], timeout_s: float, what: str
    ) -> None:
        """Feed new records to ``done`` until it returns True."""
        deadline = time.monotonic() + timeout_s
        while not done(self.poll()):
            if time.monotonic() > deadline:
                raise BenchError(f"timed out after {timeout_s:.0f} s waiting for {what}")
            time.sleep(0.05)

    def wait_ready(self) -> float:
        """Every partition owned by some consumer and the producer running; returns seconds."""
        started = time.monotonic()
        owners: dict[str, list[int]] = {}
        producer = {"up": False}

        def ready(records: list[dict[str, Any]]) -> bool:
            for rec in records:
                if rec.get("msg") == "partitions assigned":
                    owners[rec.get("instance", "?")] = list(rec.get("partitions", []))
                elif rec.get("msg") == "partitions revoked":
                    owners.pop(rec.get("instance", "?"), None)
                elif producer_ready(rec):
                    producer["up"] = True
            busy = [o for o in owners.values() if o]
            return producer["up"] and len(busy) == min(self.consumers, 2) and bool(busy)

        self.wait_for(ready, READY_TIMEOUT_S, "the producer and a settled consumer group")
        took = time.monotonic() - started
        say(f"kcron up ({self.launcher}): consumers own {dict(sorted(owners.items()))}")
        return took

    def pids(self) -> dict[str, int]:
        """Process ids of the kcron programs (supervisord's children when it runs them)."""
        if self.launcher == "direct":
            return {proc.log_path.stem: proc.pid for proc in self._procs}
        out = subprocess.run(
            [str(BIN / "supervisorctl"), "-c", str(REPO / "etc" / "supervisord.conf"), "status"],
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )
        pids: dict[str, int] = {}
        for line in out.stdout.splitlines():
            match = re.match(r"(\S+)\s+RUNNING\s+pid (\d+)", line)
            if match:
                pids[match.group(1).split(":")[-1]] = int(match.group(2))
        return pids

    def stop(self) -> None:
        # supervisord stops its programs with TERM (they finish and commit), then exits.
        for proc in reversed(self._procs):
            proc.stop(60)
