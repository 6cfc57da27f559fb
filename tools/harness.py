"""The one process harness of the tests, the partitions experiment and the bench.

A real program (``kcron consume``, ``kcron broker``, ``supervisord``...) whose
output goes to a log file, read back incrementally as kcron's JSON log
records: ``records()``, ``messages(msg)``, ``poll()`` for the new ones,
``wait_for(predicate)``, and ``stop()``: SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from kcron.broker import free_port as free_port  # re-exported for the tooling
from kcron.broker import port_open

REPO = Path(__file__).resolve().parent.parent
POLL_S = 0.05

Failure = Callable[[str], Exception]


def parse_ts(text: str) -> float:
    """kcron's RFC 3339 UTC millisecond times (a log record's ``ts``) to epoch seconds."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


class LogTail:
    """Reads a growing file of JSON log lines incrementally.

    A partial last line waits for its end; lines without a JSON object are
    skipped (a line may carry a prefix before its ``{``: supervisord's relay).
    """

    def __init__(self, path: Path, keep: bool = True) -> None:
        self.path = path
        # keep=False: only poll() (the bench reads hundreds of thousands of records once).
        self.keep = keep
        self._offset = 0
        self._partial = b""
        self._records: list[dict[str, Any]] = []
        self._polled = 0

    def _read(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        new: list[dict[str, Any]] = []
        for line in lines:
            start = line.find(b"{")
            if start < 0:
                continue
            with contextlib.suppress(ValueError):
                record = json.loads(line[start:])
                if isinstance(record, dict):
                    new.append(record)
        if self.keep:
            self._records.extend(new)
        return new

    def records(self) -> list[dict[str, Any]]:
        """Every record so far."""
        if not self.keep:
            raise RuntimeError(f"{self.path}: records are not kept (keep=False), poll() them")
        self._read()
        return list(self._records)

    def poll(self) -> list[dict[str, Any]]:
        """The records added since the last ``poll()``."""
        new = self._read()
        if not self.keep:
            return new
        new = self._records[self._polled :]
        self._polled = len(self._records)
        return new

    def text(self) -> str:
        try:
            return self.path.read_text(errors="replace")
        except OSError:
            return ""

    def text_tail(self, chars: int = 3000) -> str:
        return self.text()[-chars:]


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> int:
    """SIGTERM, then SIGKILL after ``timeout_s``; returns the exit code."""
    if proc.poll() is None:
        proc.terminate()
    return wait_process(proc, timeout_s)


def wait_process(proc: subprocess.Popen[bytes], timeout_s: float) -> int:
    """Wait up to ``timeout_s``, then SIGKILL; returns the exit code."""
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return int(proc.returncode)


class Process:
    """A real program whose stdout and stderr go to ``log_path``.

    ``failure`` builds the exception raised when the program dies while
    someone waits on it, or a wait times out (AssertionError in the tests,
    the experiment's and the bench's own errors there).
    """

    def __init__(
        self,
        argv: Sequence[str],
        env: dict[str, str],
        log_path: Path,
        *,
        name: str | None = None,
        cwd: Path = REPO,
        append: bool = False,
        new_session: bool = False,
        keep_records: bool = True,
        failure: Failure = AssertionError,
    ) -> None:
        self.argv = list(argv)
        self.name = name or Path(self.argv[0]).name
        self.log_path = log_path
        self.failure = failure
        self.signalled_at: float | None = None  # epoch seconds of our first signal
        # Append mode: supervisord reopens /dev/stdout (stdout_logfile) for its programs,
        # and two descriptions of one file without O_APPEND would overwrite each other.
        self._log: IO[bytes] = open(log_path, "ab" if append else "wb")  # noqa: SIM115
        self.tail = LogTail(log_path, keep=keep_records)
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=new_session,
        )

    # -- the log ------------------------------------------------------------------

    def records(self) -> list[dict[str, Any]]:
        return self.tail.records()

    def poll(self) -> list[dict[str, Any]]:
        return self.tail.poll()

    def messages(self, msg: str) -> list[dict[str, Any]]:
        return [r for r in self.records() if r.get("msg") == msg]

    def text(self) -> str:
        return self.tail.text()

    # -- the process --------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def check_alive(self, what: str) -> None:
        """Raise ``failure`` if the program exited on its own while we wait for ``what``."""
        if self.proc.poll() is not None and self.signalled_at is None:
            raise self.failure(
                f"{self.name} exited ({self.proc.returncode}) while waiting for {what}; "
                f"its log ({self.log_path}) ends:\n{self.tail.text_tail()}"
            )

    def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        """``predicate()``'s first truthy value, checking the program stays alive."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            if self.proc.poll() is not None:
                raise self.failure(
                    f"{self.name} exited ({self.proc.returncode}) while waiting for "
                    f"{what}:\n{self.tail.text_tail()}"
                )
            time.sleep(POLL_S)
        raise self.failure(
            f"timed out after {timeout}s waiting for {what}:\n{self.tail.text_tail()}"
        )

    def signal(self, signum: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            if self.signalled_at is None:
                self.signalled_at = time.time()
            self.proc.send_signal(signum)

    def terminate(self) -> None:
        self.signal(signal.SIGTERM)

    def wait(self, timeout: float = 40.0) -> int:
        """Wait for the exit (SIGKILL after ``timeout``), close the log, return the code."""
        code = wait_process(self.proc, timeout)
        self._log.close()
        return code

    def stop(self, timeout: float = 40.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        self.terminate()
        return self.wait(timeout)


def kcron_argv(*args: str) -> list[str]:
    """``kcron ARGS`` run by this interpreter, so the kcron under test is the one imported."""
    return [sys.executable, "-m", "kcron", *args]


def kcron_env(bootstrap: str, **values: str) -> dict[str, str]:
    """A kcron process's environment: none of the caller's KCRON_* settings leak in;
    JSON logs, unbuffered, then ``values``.

    Test workers may run as root (CI, dev containers); their jobs are the
    tests' own, so they are allowed to run as root too (kcron/runas.py)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KCRON_")}
    env.update(KCRON_BOOTSTRAP_SERVERS=bootstrap, KCRON_LOG_FORMAT="json", PYTHONUNBUFFERED="1")
    env.update(KCRON_ALLOW_ROOT_JOBS="true")
    env.update(values)
    return env


def wait_port(proc: Process, host: str, port: int, timeout_s: float) -> None:
    """Until ``host:port`` accepts connections, checking ``proc`` stays alive."""
    proc.wait_for(lambda: port_open(host, port), timeout_s, f"{host}:{port} to listen")
