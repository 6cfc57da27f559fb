"""Run one command line and report what happened. Knows nothing of Kafka.

- Without ``shell``, the line is split with shlex rules and exec'd directly,
  so quoting works as in a shell but no shell interprets it.
- Each run gets its own session and process group, so a timeout (or a
  shutdown) kills everything the job started, not just its first process.
- A job may exit and leave children behind (``daemon &``). The run ends when
  the job's own process does, but with a timeout the leftovers are watched and
  their group killed when the timeout expires: nothing a run started outlives
  the run's timeout. Without a timeout they are left alone, as cron does.
- With ``credentials``, the job runs as that user: the child sets its groups,
  gid and uid before exec (the worker must be root to do so), and starts in
  the user's home directory unless ``cwd`` says otherwise, as cron does.
- stdin is /dev/null: a job that reads stdin gets EOF instead of hanging.
- The process is started by kcron/spawn.py (glibc's posix_spawn, the GIL
  released) whenever that gives exactly what Popen gives, else by Popen
  (another user, a working directory, a job PATH unlike the worker's).
- Output is passed on line by line as it arrives, but only ``max_output_bytes``
  of it; the rest is read and counted, never stored, so a job printing
  gigabytes cannot exhaust the worker's memory.
"""

from __future__ import annotations

import contextlib
import enum
import os
import selectors
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from kcron import spawn

DEFAULT_MAX_OUTPUT_BYTES = 1024 * 1024
MAX_LINE_BYTES = 8192
TAIL_BYTES = 4096
KILL_GRACE_S = 3.0
# After the job's own process exits, how long to keep reading output that a
# leftover child still holds open before giving up on it.
DRAIN_AFTER_EXIT_S = 1.0
# How often a watcher checks whether a finished job's leftover processes are gone.
LEFTOVER_POLL_S = 0.2
_READ_CHUNK = 65536

LineSink = Callable[[str, str], None]  # (stream name, line without newline)
Process = subprocess.Popen[bytes] | spawn.Child


class Outcome(enum.StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # ran and exited non-zero (or died of a signal)
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"  # killed because the worker shut down
    NOT_FOUND = "not_found"
    NOT_EXECUTABLE = "not_executable"
    INVALID = "invalid"  # the command line itself cannot be parsed
    # Not started: an overlap=forbid job's earlier run still runs (kcron/worker/overlap.py).
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Credentials:
    """The user a job runs as (kcron/runas.py resolves it from --run-as)."""

    user: str
    uid: int
    gid: int
    groups: tuple[int, ...]  # supplementary groups, the primary one included
    home: str

    @property
    def workdir(self) -> str:
        return self.home if os.path.isdir(self.home) else "/"


@dataclass(frozen=True)
class ExecSpec:
    command: str
    shell: bool = False
    timeout_s: float | None = None
    env: Mapping[str, str] | None = None
    cwd: str | None = None
    credentials: Credentials | None = None  # None: run as the worker's own user


@dataclass(frozen=True)
class ExecResult:
    outcome: Outcome
    exit_code: int | None  # None when no process ran; negative: killed by that signal
    duration_s: float
    output_bytes: int  # everything the job wrote
    output_truncated: bool  # more than max_output_bytes: the rest was counted, not logged
    tail: bytes  # the last TAIL_BYTES of output, for error reports
    error: str | None = None
    # The job exited but left processes in its group; they are killed at its timeout.
    leftover: bool = False

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.SUCCEEDED


def argv_for(spec: ExecSpec) -> list[str]:
    if spec.shell:
        return ["/bin/sh", "-c", spec.command]
    return shlex.split(spec.command)


class _Output:
    """Splits chunks into lines, enforces the byte cap, keeps a short tail."""

    def __init__(self, sink: LineSink, max_bytes: int) -> None:
        self._sink = sink
        self._budget = max_bytes
        self._partial: dict[str, bytearray] = {}
        self.total = 0
        self.truncated = False
        self.tail = bytearray()

    def feed(self, stream: str, chunk: bytes) -> None:
        self.total += len(chunk)
        self.tail += chunk
        del self.tail[:-TAIL_BYTES]
        if self._budget <= 0:
            self.truncated = True
            return
        if len(chunk) > self._budget:
            chunk = chunk[: self._budget]
            self.truncated = True
        self._budget -= len(chunk)
        buf = self._partial.setdefault(stream, bytearray())
        buf += chunk
        while True:
            cut = buf.find(b"\n")
            if cut < 0:
                if len(buf) >= MAX_LINE_BYTES:
                    cut = MAX_LINE_BYTES
                    self._emit(stream, bytes(buf[:cut]))
                    del buf[:cut]
                    continue
                break
            self._emit(stream, bytes(buf[:cut]))
            del buf[: cut + 1]
        if self.truncated:
            self.close(stream)

    def close(self, stream: str) -> None:
        buf = self._partial.pop(stream, None)
        if buf:
            self._emit(stream, bytes(buf))

    def _emit(self, stream: str, line: bytes) -> None:
        self._sink(stream, line.rstrip(b"\r").decode("utf-8", errors="replace"))


class _Clocked:
    """Builds results that carry the run's duration and output so far."""

    def __init__(self, output: _Output, started: float, clock: Callable[[], float]) -> None:
        self._output = output
        self._started = started
        self._clock = clock

    def __call__(
        self, outcome: Outcome, code: int | None, error: str | None = None, leftover: bool = False
    ) -> ExecResult:
        output = self._output
        return ExecResult(
            outcome,
            code,
            self._clock() - self._started,
            output.total,
            output.truncated,
            bytes(output.tail),
            error,
            leftover,
        )


def run(
    spec: ExecSpec,
    on_line: LineSink,
    *,
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    cancel: threading.Event | None = None,
    kill_grace_s: float = KILL_GRACE_S,
    clock: Callable[[], float] = time.monotonic,
    on_spawn: Callable[[int], None] | None = None,
) -> ExecResult:
    """Run ``spec`` to completion, timeout or cancellation. Never raises for job errors.

    ``on_spawn`` gets the job's process group id as soon as it exists, so a
    worker stopping at once can kill the group without waiting for this call.
    """
    started = clock()
    output = _Output(on_line, max_output_bytes)
    result = _Clocked(output, started, clock)
    spawned = _spawn(spec, result)
    if isinstance(spawned, ExecResult):
        return spawned
    proc = spawned
    if on_spawn is not None:
        on_spawn(proc.pid)
    deadline = started + spec.timeout_s if spec.timeout_s else None
    outcome = _pump(proc, output, deadline, cancel, clock)
    if outcome is None:
        # Output is closed, but the job may still run (it redirected its output).
        outcome = _wait(proc, deadline, cancel, clock)
    if outcome is not None:
        _kill_group(proc, kill_grace_s)
    code = proc.wait()
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    proc.stderr.close()
    leftover = False
    if outcome is None and deadline is not None and _group_alive(proc.pid):
        # The leader is reaped; its group id stays reserved while any member
        # lives, so killing that group later cannot hit an unrelated process.
        leftover = True
        _watch_leftovers(proc.pid, deadline, cancel, kill_grace_s, clock)
    return _classify(spec, outcome, code, leftover, result)


def _spawn(spec: ExecSpec, result: _Clocked) -> Process | ExecResult:
    """The job's process, or the result that says why there is none."""
    try:
        argv = argv_for(spec)
    except ValueError as exc:
        return result(Outcome.INVALID, None, f"cannot parse command line: {exc}")
    if not argv:
        return result(Outcome.INVALID, None, "empty command line")
    creds = spec.credentials
    try:
        if creds is None and spec.cwd is None:
            child = _posix_spawn(argv, spec.env)
            if child is not None:
                return child
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(spec.env) if spec.env is not None else None,
            cwd=spec.cwd if spec.cwd is not None or creds is None else creds.workdir,
            start_new_session=True,
            close_fds=True,
            # Applied in the child after setsid, groups first, uid last: once
            # the uid is dropped the child could not change the others.
            user=creds.uid if creds else None,
            group=creds.gid if creds else None,
            extra_groups=list(creds.groups) if creds else None,
        )
    except FileNotFoundError:
        return result(Outcome.NOT_FOUND, 127, f"command not found: {argv[0]}")
    except PermissionError:
        return result(Outcome.NOT_EXECUTABLE, 126, f"permission denied: {argv[0]}")
    except OSError as exc:
        return result(Outcome.NOT_EXECUTABLE, 126, f"cannot execute {argv[0]}: {exc.strerror}")


def _posix_spawn(argv: list[str], env: Mapping[str, str] | None) -> spawn.Child | None:
    """The job through posix_spawn, or None where only Popen gives the same process."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        pid = spawn.spawn(argv, env, out_w, err_w)
    except BaseException:
        for fd in (out_r, err_r):
            os.close(fd)
        raise
    finally:
        os.close(out_w)
        os.close(err_w)
    if pid is None:
        os.close(out_r)
        os.close(err_r)
        return None
    return spawn.Child(pid, argv, out_r, err_r)


def _pump(
    proc: Process,
    output: _Output,
    deadline: float | None,
    cancel: threading.Event | None,
    clock: Callable[[], float],
) -> Outcome | None:
    """Pass output on until both pipes close: None, or TIMED_OUT or CANCELLED."""
    outcome: Outcome | None = None
    exited_at: float | None = None
    assert proc.stdout is not None and proc.stderr is not None
    # poll(2), not epoll: two pipes per run, and no epoll fd to create and close each time.
    with selectors.PollSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ, "stdout")
        sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
        while sel.get_map():
            now = clock()
            if deadline is not None and now >= deadline:
                outcome = Outcome.TIMED_OUT
                break
            if cancel is not None and cancel.is_set():
                outcome = Outcome.CANCELLED
                break
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            if exited_at is not None and now - exited_at >= DRAIN_AFTER_EXIT_S:
                break  # a leftover child keeps the pipe open; stop waiting for it
            wait = 0.1 if deadline is None else max(0.0, min(0.1, deadline - now))
            for key, _ in sel.select(wait):
                chunk = os.read(key.fd, _READ_CHUNK)
                if chunk:
                    output.feed(key.data, chunk)
                else:
                    sel.unregister(key.fileobj)
                    output.close(key.data)
    for stream in ("stdout", "stderr"):
        output.close(stream)
    return outcome


def _classify(
    spec: ExecSpec, outcome: Outcome | None, code: int, leftover: bool, result: _Clocked
) -> ExecResult:
    if outcome is Outcome.TIMED_OUT:
        return result(outcome, code, f"timed out after {spec.timeout_s:g}s; process group killed")
    if outcome is Outcome.CANCELLED:
        return result(outcome, code, "cancelled by worker shutdown; process group killed")
    if code == 0:
        return result(Outcome.SUCCEEDED, 0, leftover=leftover)
    if code < 0:
        return result(
            Outcome.FAILED, code, f"killed by signal {_signal_name(-code)}", leftover=leftover
        )
    return result(Outcome.FAILED, code, f"exit code {code}", leftover=leftover)


def _wait(
    proc: Process,
    deadline: float | None,
    cancel: threading.Event | None,
    clock: Callable[[], float],
) -> Outcome | None:
    """Wait for a process whose output is closed: None once it exited, else
    TIMED_OUT or CANCELLED (the caller kills the group)."""
    while True:
        now = clock()
        if deadline is not None and now >= deadline:
            return Outcome.TIMED_OUT
        if cancel is not None and cancel.is_set():
            return Outcome.CANCELLED
        try:
            proc.wait(0.1 if deadline is None else max(0.0, min(0.1, deadline - now)))
            return None
        except subprocess.TimeoutExpired:
            continue


def _kill_group(proc: Process, grace_s: float) -> None:
    """SIGTERM the run's process group, then SIGKILL whatever is left after the grace."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace_s)
    # Children may outlive the leader; the group id stays valid while any member lives.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    """Whether a process that still runs is left in group ``pgid``."""
    try:
        os.killpg(pgid, 0)  # signal 0 only checks
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # not ours to kill any more (a member changed its user)
    return _live_member(pgid)


def _live_member(pgid: int) -> bool:
    """Whether ``pgid`` has a member that is not a zombie.

    Orphaned leftovers are reparented to PID 1, and a PID 1 that does not
    reap (a bare container entrypoint) leaves them as zombies, which still
    count for killpg. Where /proc cannot tell, assume a live member.
    """
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue  # exited meanwhile, or not ours to read
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


def _watch_leftovers(
    pgid: int,
    deadline: float,
    cancel: threading.Event | None,
    grace_s: float,
    clock: Callable[[], float],
) -> None:
    """Kill what is left of a finished job's group at its timeout, in the background.

    The run's result is already known, so the worker's slot is free at once;
    only this daemon thread waits (and ends as soon as the group is empty).
    """

    def watch() -> None:
        while _group_alive(pgid):
            if clock() >= deadline or (cancel is not None and cancel.is_set()):
                _kill_pgid(pgid, grace_s, clock)
                return
            time.sleep(LEFTOVER_POLL_S)

    threading.Thread(target=watch, name=f"leftovers-{pgid}", daemon=True).start()


def _kill_pgid(pgid: int, grace_s: float, clock: Callable[[], float]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    until = clock() + grace_s
    while _group_alive(pgid) and clock() < until:
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)
