"""Test helpers: real ``kcron`` subprocesses (tools/harness.py) and their environment."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tools.brokers import BrokerInfo
from tools.harness import REPO, Process, kcron_argv
from tools.harness import kcron_env as _base_env

__all__ = ["REPO", "Kcron", "backfill", "kcron_env", "read_lines", "worker"]


class Kcron(Process):
    """A real ``kcron`` subprocess with JSON logs captured to a file."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        super().__init__(kcron_argv(*args), env, log_path, name=f"kcron {args[0]}")
        self.args = args

    def assigned(self) -> list[int]:
        recs = self.messages("partitions assigned")
        return list(recs[-1]["partitions"]) if recs else []


def kcron_env(bootstrap: str, topic: str, group: str | None = None, **extra: str) -> dict[str, str]:
    env = _base_env(
        bootstrap,
        KCRON_TOPIC=topic,
        # The first group join waits about session.timeout/2 on the dev broker.
        KCRON_SESSION_TIMEOUT_MS="6000",
        KCRON_FETCH_WAIT_MAX_MS="20",
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


def debian_tool(name: str) -> str:
    """The path of a binary of Debian's prometheus package: a failure under CI
    (.ci/run installs it), a skip elsewhere."""
    found = shutil.which(name)
    if found is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{name} is missing in CI (apt-get install prometheus)")
        pytest.skip(f"{name} is not installed (Debian package prometheus)")
    return found
