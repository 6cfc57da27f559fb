"""kcron as `make run` starts it: the embedded broker, then 1 producer + 2 consumers.

``supervisord`` (the default) runs etc/supervisord.conf exactly as
etc/run-local.sh does, with every program's JSON log lines relayed into one
file; ``direct`` starts the same three commands as plain child processes,
one log file each (handy for py-spy). Either way the bench uses its own
port, topic, group and run directory, so a `make run` on 9092 is untouched.

Metrics (issue 14 makes them the default under supervisord): with
``metrics=True`` every kcron process serves them on a port of the bench's
own (free ports, never 9400/9401+n, which a `make run` may hold) and a
thread scrapes each one every SCRAPE_INTERVAL_S, as Prometheus would; with
``metrics=False`` none does (KCRON_METRICS=false and no --metrics-port).
Under supervisord that takes a copy of etc/supervisord.conf in the run
directory whose two ``command=`` lines say so; the programs, their order
and stop settings are the repository's.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import BIN, REPO, BenchError, Env, producer_ready, say
from tools.harness import Process, free_port, wait_port

READY_TIMEOUT_S = 60.0
SCRAPE_INTERVAL_S = 5.0  # docker-compose's Prometheus scrapes every 5-15 s
_COMMAND = re.compile(r"^command=(.*)$", re.MULTILINE)
_METRICS_FLAG = re.compile(r"\s--metrics-port[= ]\S+")


def _free_block(size: int) -> int:
    """A base port with ``size`` consecutive free ports."""
    for _ in range(50):
        base = free_port()
        if base + size >= 65535:
            continue
        socks = []
        try:
            for port in range(base, base + size):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise BenchError(f"no {size} consecutive free ports for the metrics endpoints")


def supervisord_conf(text: str, metrics: bool, base: int) -> str:
    """etc/supervisord.conf with metrics on (producer on ``base``, consumer n on
    ``base + 1 + n``) or off, whatever the repository's own default is."""
    sections = re.split(r"(?m)^(?=\[)", text)
    out = []
    for section in sections:
        program = section.startswith("[program:kcron-")
        match = _COMMAND.search(section) if program else None
        if match:
            command = _METRICS_FLAG.sub("", match.group(1)).strip()
            if metrics:
                port = (
                    str(base)
                    if section.startswith("[program:kcron-producer]")
                    else f"$(({base + 1} + %(process_num)d))"
                )
                command = f"/bin/sh -c 'exec {command} --metrics-port {port}'"
            section = section[: match.start(1)] + command + section[match.end(1) :]
        out.append(section)
    return "".join(out)


class Scraper:
    """GET /metrics of each port every SCRAPE_INTERVAL_S, in a daemon thread."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.ok = 0
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scraper", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(SCRAPE_INTERVAL_S):
            for port in self.ports:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                        r.read()
                    self.ok += 1
                except OSError:
                    self.failed += 1

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(5)
        return {"ports": self.ports, "scrapes_ok": self.ok, "scrapes_failed": self.failed}


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
        metrics: bool = True,
    ) -> None:
        self.workdir = workdir
        self.consumers = consumers
        self.launcher = launcher
        self.metrics = metrics
        self.scraper: Scraper | None = None
        self.scrapes: dict[str, Any] | None = None
        self._procs: list[Process] = []
        run_dir = workdir / "run"
        run_dir.mkdir(exist_ok=True)
        base = _free_block(consumers + 1) if metrics else 0
        metrics_env = {"KCRON_METRICS": "true" if metrics else "false"}
        self.env = env.for_kcron(
            **metrics_env,
            KCRON_TOPIC=topic,
            KCRON_GROUP=group,
            KCRON_JOBS=str(jobs),
            KCRON_RUN_DIR=str(run_dir),
            KCRON_PRODUCER="true",
            KCRON_CONSUMERS=str(consumers),
        )
        self.env.pop("KCRON_METRICS_PORT", None)
        self.jobs = jobs
        self.conf = run_dir / "supervisord.conf"
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
            template = (REPO / "etc" / "supervisord.conf").read_text()
            self.conf.write_text(supervisord_conf(template, metrics, base))
            self._spawn([str(BIN / "supervisord"), "-c", str(self.conf)], workdir / "kcron.log")
        elif launcher == "direct":
            for index in range(consumers):
                name = f"kcron-consumer-{index:02d}"
                port = ["--metrics-port", str(base + 1 + index)] if metrics else []
                self._spawn(
                    [str(BIN / "kcron"), "consume", "--instance", name, *port],
                    workdir / f"{name}.log",
                )
            port = ["--metrics-port", str(base)] if metrics else []
            self._spawn(
                [str(BIN / "kcron"), "produce", "--instance", "kcron-producer", *port],
                workdir / "kcron-producer.log",
            )
        else:
            raise BenchError(f"unknown launcher {launcher!r}")
        if metrics:
            self.scraper = Scraper(list(range(base, base + consumers + 1)))

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
            [str(BIN / "supervisorctl"), "-c", str(self.conf), "status"],
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
        if self.scraper is not None:
            self.scrapes = self.scraper.stop()
            self.scraper = None
        # supervisord stops its programs with TERM (they finish and commit), then exits.
        for proc in reversed(self._procs):
            proc.stop(60)
