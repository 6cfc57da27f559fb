"""Test helpers: the broker selection and real ``kcron`` subprocesses."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kcron.broker import BrokerInfo

REPO = Path(__file__).resolve().parent.parent


class Kcron:
    """A real ``kcron`` subprocess with JSON logs captured to a file."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kcron", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )

    def records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):
                    out.append(json.loads(line))
        return out

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def messages(self, msg: str) -> list[dict[str, Any]]:
        return [r for r in self.records() if r.get("msg") == msg]

    def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"kcron {self.args[0]} exited ({self.proc.returncode}) while waiting for "
                    f"{what}:\n{self.text()[-3000:]}"
                )
            time.sleep(0.05)
        raise AssertionError(
            f"timed out after {timeout}s waiting for {what}:\n{self.text()[-3000:]}"
        )

    def assigned(self) -> list[int]:
        recs = self.messages("partitions assigned")
        return list(recs[-1]["partitions"]) if recs else []

    def signal(self, signum: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def stop(self, timeout: float = 40.0) -> int:
        self.signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._log.close()
        return code


def kcron_env(bootstrap: str, topic: str, group: str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KCRON_")}
    env.update(
        KCRON_BOOTSTRAP_SERVERS=bootstrap,
        KCRON_TOPIC=topic,
        KCRON_LOG_FORMAT="json",
        # The first group join waits about session.timeout/2 on the dev broker.
        KCRON_SESSION_TIMEOUT_MS="6000",
        KCRON_FETCH_WAIT_MAX_MS="20",
        PYTHONUNBUFFERED="1",
    )
    if group:
        env["KCRON_GROUP"] = group
    env.update(extra)
    return env


def backfill(
    bootstrap: str, topic: str, jobs: Path, start: str, end: str, partitions: int = 2
) -> subprocess.CompletedProcess[str]:
    env = kcron_env(bootstrap, topic, KCRON_PARTITIONS=str(partitions))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kcron",
            "backfill",
            "--jobs",
            str(jobs),
            "--from",
            start,
            "--to",
            end,
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def read_lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def worker(
    procs: list[Kcron], tmp_path: Path, broker: BrokerInfo, topic: str, group: str, **env: str
) -> Kcron:
    """Start a `kcron consume` in ``group`` whose JSON log goes to ``tmp_path``."""
    proc = Kcron(
        ["consume"],
        kcron_env(broker.bootstrap, topic, group, **env),
        tmp_path / f"consume-{len(procs)}.log",
    )
    procs.append(proc)
    return proc
