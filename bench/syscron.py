"""Debian's cron, side by side with kcron: install it, run it, give root a crontab block.

The bench adds its own block of lines to root's crontab (between two marker
lines with the bench's id) and removes exactly that block at the end, so a
crontab that was there before is left as it was. cron is started only if it
is not running, and then stopped again at the end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from bench.common import BenchError, say

CRON = "/usr/sbin/cron"
PID_FILE = Path("/var/run/crond.pid")


def _apt(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    return subprocess.run(
        ["apt-get", *args], env=env, capture_output=True, text=True, timeout=600, check=False
    )


def ensure_installed() -> str:
    """Install Debian's cron if missing (apt-get, without an MTA); return its version."""
    if not (Path(CRON).exists() and shutil.which("crontab")):
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            raise BenchError("cron is not installed and cannot be installed (needs root + apt-get)")
        say("installing cron with apt-get (no recommends)")
        install = ("install", "-y", "-q", "--no-install-recommends", "cron")
        result = _apt(*install)
        if result.returncode != 0:  # a stale or missing package list
            _apt("update", "-q")
            result = _apt(*install)
        if result.returncode != 0:
            raise BenchError(
                f"apt-get install cron failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
            )
    query = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", "cron"],
        capture_output=True,
        text=True,
        check=False,
    )
    return f"Debian cron {query.stdout.strip() or 'unknown version'}"


def running_pid() -> int | None:
    try:
        pid = int(PID_FILE.read_text().split()[0])
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError, IndexError):
        return None
    return pid if comm == "cron" else None


def _crontab_lines() -> list[str]:
    result = subprocess.run(["crontab", "-l"], capture_output=True, text=True, check=False)
    if result.returncode != 0:  # "no crontab for root"
        return []
    return result.stdout.splitlines()


def _install(lines: Sequence[str]) -> None:
    if lines:
        text = "\n".join(lines) + "\n"
        subprocess.run(["crontab", "-"], input=text, text=True, check=True)
    else:
        subprocess.run(["crontab", "-r"], capture_output=True, check=False)


class SystemCron:
    """cron running, and this bench's block in root's crontab while the context lasts."""

    def __init__(self, bench_id: str) -> None:
        self._begin = f"# kcron-bench {bench_id} begin (removed when the bench ends)"
        self._end = f"# kcron-bench {bench_id} end"
        self.version = ""
        self.started_pid: int | None = None

    def __enter__(self) -> SystemCron:
        self.version = ensure_installed()
        if running_pid() is None:
            subprocess.run([CRON], check=True)  # daemonizes and writes its pid file
            deadline = time.monotonic() + 5
            while (pid := running_pid()) is None:
                if time.monotonic() > deadline:
                    raise BenchError("cron did not start (no /var/run/crond.pid)")
                time.sleep(0.05)
            self.started_pid = pid
            say(f"started cron (pid {pid}); it is stopped again at the end")
        return self

    def set_block(self, lines: Sequence[str]) -> None:
        """Replace this bench's block in root's crontab with ``lines``."""
        kept = self._without_block(_crontab_lines())
        _install([*kept, self._begin, *lines, self._end] if lines else kept)

    def _without_block(self, lines: list[str]) -> list[str]:
        out: list[str] = []
        inside = False
        for line in lines:
            if line == self._begin:
                inside = True
            elif line == self._end:
                inside = False
            elif not inside:
                out.append(line)
        return out

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.set_block([])
        if self.started_pid is not None and running_pid() == self.started_pid:
            os.kill(self.started_pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while running_pid() == self.started_pid and time.monotonic() < deadline:
                time.sleep(0.05)
            say(f"stopped cron (pid {self.started_pid})")
