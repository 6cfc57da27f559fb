"""Start a job's process with glibc's posix_spawn, without holding the GIL.

``subprocess.Popen`` costs a worker's thread 250-450 µs of Python per
process (its error pipe, /dev/null opened in the parent, the env and PATH
turned into bytes, the Popen object), and every system call it makes
releases and retakes the GIL, which among 8 busy pool threads is a wait
each time. This calls libc's ``posix_spawn`` through ctypes, which releases
the GIL for the whole call (glibc's clone(CLONE_VM|CLONE_VFORK) + exec), and
does in the child what Popen does there for kcron's executor:

- a new session (so the job leads its own process group): POSIX_SPAWN_SETSID;
- SIGPIPE and SIGXFSZ back to their default (Popen's restore_signals: Python
  ignores SIGPIPE, a job must not inherit that): POSIX_SPAWN_SETSIGDEF;
- stdin from /dev/null, stdout and stderr to the given pipes;
- every other descriptor closed (Popen's close_fds: librdkafka's pipes are
  inheritable): posix_spawn_file_actions_addclosefrom_np, glibc >= 2.34;
- the executable found on PATH as Popen finds it: an argv[0] with a slash is
  used as is; otherwise posix_spawnp, which searches the worker's own PATH,
  so only when the job's PATH is the worker's.

:func:`spawn` returns None when it cannot promise exactly that (no glibc with
closefrom, a working directory or another user to switch to, a different
PATH, an empty program name, a NUL byte): the caller then uses Popen. Exec
errors come back as the OSError Popen would raise (FileNotFoundError,
PermissionError...).
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from typing import Any

_SETSIGDEF = 0x04  # POSIX_SPAWN_SETSIGDEF
_SETSID = 0x80  # POSIX_SPAWN_SETSID (glibc >= 2.26)
_OPAQUE = 1024  # bytes for posix_spawnattr_t / file_actions_t / sigset_t (glibc: 336/80/128)


class _Libc:
    """The libc functions, checked once; ``usable`` False when one is missing."""

    def __init__(self) -> None:
        self.usable = False
        try:
            # The interpreter's own symbols, libc's among them: no find_library,
            # which would run ldconfig in a subprocess at a worker's first run.
            libc = ctypes.CDLL(None, use_errno=True)
            self.spawn = libc.posix_spawn
            self.spawnp = libc.posix_spawnp
            self.fa_init = libc.posix_spawn_file_actions_init
            self.fa_destroy = libc.posix_spawn_file_actions_destroy
            self.fa_open = libc.posix_spawn_file_actions_addopen
            self.fa_dup2 = libc.posix_spawn_file_actions_adddup2
            self.fa_closefrom = libc.posix_spawn_file_actions_addclosefrom_np
            self.attr_init = libc.posix_spawnattr_init
            self.attr_destroy = libc.posix_spawnattr_destroy
            self.attr_flags = libc.posix_spawnattr_setflags
            self.attr_sigdefault = libc.posix_spawnattr_setsigdefault
            self.sigemptyset = libc.sigemptyset
            self.sigaddset = libc.sigaddset
        except (OSError, AttributeError):
            return
        for fn in (self.spawn, self.spawnp):
            fn.argtypes = [
                ctypes.POINTER(ctypes.c_int),
                ctypes.c_char_p,
                ctypes.c_void_p,
                ctypes.c_void_p,
                ctypes.POINTER(ctypes.c_char_p),
                ctypes.POINTER(ctypes.c_char_p),
            ]
        self.fa_open.argtypes = [
            ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint,
        ]  # fmt: skip
        self.fa_dup2.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        self.fa_closefrom.argtypes = [ctypes.c_void_p, ctypes.c_int]
        self.attr_flags.argtypes = [ctypes.c_void_p, ctypes.c_short]
        self.usable = True


@functools.cache
def _lib() -> _Libc:
    """libc, loaded on first use (the same for every caller: no state)."""
    return _Libc()


def available() -> bool:
    return _lib().usable


def _strings(items: Sequence[bytes]) -> Any:
    return (ctypes.c_char_p * (len(items) + 1))(*items, None)


def _check(code: int, what: str) -> None:
    if code != 0:
        raise OSError(code, f"{what}: {os.strerror(code)}")


def spawn(
    argv: Sequence[str], env: Mapping[str, str] | None, stdout: int, stderr: int
) -> int | None:
    """The pid of ``argv`` started as described above, or None: use Popen instead."""
    lib = _lib()
    if not lib.usable:
        return None
    env_path = (env if env is not None else os.environ).get("PATH")
    if not argv[0] or ("/" not in argv[0] and env_path != os.environ.get("PATH")):
        return None  # posix_spawnp would search the worker's PATH, not the job's
    environ = os.environ if env is None else env
    env_bytes = [os.fsencode(f"{k}={v}") for k, v in environ.items()]
    arg_bytes = [os.fsencode(a) for a in argv]
    if any(b"\0" in item for item in (*env_bytes, *arg_bytes)):
        return None  # C strings would cut it short; Popen refuses it (ValueError)
    envp = _strings(env_bytes)
    args = _strings(arg_bytes)
    actions = ctypes.create_string_buffer(_OPAQUE)
    attr = ctypes.create_string_buffer(_OPAQUE)
    sigs = ctypes.create_string_buffer(_OPAQUE)
    _check(lib.fa_init(actions), "posix_spawn_file_actions_init")
    _check(lib.attr_init(attr), "posix_spawnattr_init")
    try:
        _check(lib.fa_open(actions, 0, b"/dev/null", os.O_RDONLY, 0), "addopen")
        _check(lib.fa_dup2(actions, stdout, 1), "adddup2")
        _check(lib.fa_dup2(actions, stderr, 2), "adddup2")
        _check(lib.fa_closefrom(actions, 3), "addclosefrom")
        lib.sigemptyset(sigs)
        for signum in (signal.SIGPIPE, signal.SIGXFSZ):
            lib.sigaddset(sigs, int(signum))
        _check(lib.attr_sigdefault(attr, sigs), "setsigdefault")
        _check(lib.attr_flags(attr, _SETSID | _SETSIGDEF), "setflags")
        pid = ctypes.c_int(0)
        call = lib.spawnp if "/" not in argv[0] else lib.spawn
        code = call(ctypes.byref(pid), os.fsencode(argv[0]), actions, attr, args, envp)
    finally:
        lib.fa_destroy(actions)
        lib.attr_destroy(attr)
    if code != 0:
        raise OSError(code, os.strerror(code), argv[0])  # FileNotFoundError etc., as Popen
    return pid.value


class Pipe:
    """A pipe's read end, enough of a file for a selector and close()."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class Child:
    """What kcron's executor uses of a Popen (pid, the two pipes, poll, wait)."""

    def __init__(self, pid: int, args: Sequence[str], stdout: int, stderr: int) -> None:
        self.pid = pid
        self.args = list(args)
        self.stdout = Pipe(stdout)
        self.stderr = Pipe(stderr)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = 0  # reaped elsewhere: as Popen says then
            else:
                if pid == self.pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is not None:
            return self.returncode
        if timeout is None:
            try:
                _, status = os.waitpid(self.pid, 0)
                self.returncode = os.waitstatus_to_exitcode(status)
            except ChildProcessError:
                self.returncode = 0
            return self.returncode
        end = time.monotonic() + timeout
        # Called when the job's output has closed, so it has exited or is about to:
        # Popen's first sleep of 1 ms held a pool thread (and the slot) that long
        # for 17 % of the runs of `true`; start at 0.1 ms, then back off as Popen.
        delay = 0.00005
        while (code := self.poll()) is None:
            left = end - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout)
            delay = min(delay * 2, left, 0.05)
            time.sleep(delay)
        return code
