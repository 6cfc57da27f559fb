"""kcron.spawn: the posix_spawn path gives a job what Popen gave it (real processes)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from kcron import executor, spawn
from kcron.executor import ExecSpec, Outcome

pytestmark = [
    pytest.mark.timeout(20),
    pytest.mark.skipif(not spawn.available(), reason="no glibc posix_spawn with closefrom"),
]

PATH_ONLY = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


def lines_of(spec: ExecSpec) -> tuple[executor.ExecResult, list[str]]:
    out: list[str] = []
    result = executor.run(spec, lambda _stream, line: out.append(line))
    return result, out


def test_jobs_start_through_posix_spawn_when_nothing_needs_popen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    used: list[list[str]] = []
    real = spawn.spawn

    def recording(
        argv: Sequence[str], env: Mapping[str, str] | None, stdout: int, stderr: int
    ) -> int | None:
        pid = real(argv, env, stdout, stderr)
        if pid is not None:
            used.append(list(argv))
        return pid

    monkeypatch.setattr(spawn, "spawn", recording)
    result, out = lines_of(ExecSpec("echo hello", env=PATH_ONLY))
    assert result.outcome is Outcome.SUCCEEDED and out == ["hello"]
    assert used == [["echo", "hello"]]


def test_the_worker_s_inheritable_descriptors_stay_out_of_the_job() -> None:
    # librdkafka's pipes are inheritable; Popen's close_fds kept them from jobs.
    r, w = os.pipe()
    os.set_inheritable(r, True)
    os.set_inheritable(w, True)
    try:
        result, out = lines_of(ExecSpec("ls /proc/self/fd", env=PATH_ONLY))
    finally:
        os.close(r)
        os.close(w)
    assert result.ok
    # 0-2, plus the descriptor ls itself opens to read the directory.
    assert str(r) not in out[:3] and len(out) <= 4, out
    assert {"0", "1", "2"} <= set(out)


def test_sigpipe_is_back_to_default_in_the_job() -> None:
    assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN  # Python's own setting
    result, out = lines_of(ExecSpec("grep SigIgn /proc/self/status", env=PATH_ONLY))
    ignored = int(out[0].split()[1], 16)
    assert result.ok
    assert not ignored & (1 << (signal.SIGPIPE - 1))
    assert not ignored & (1 << (signal.SIGXFSZ - 1))


def test_the_job_leads_a_session_and_process_group_of_its_own() -> None:
    result, out = lines_of(
        ExecSpec("echo $$ $(ps -o sid= -p $$) $(ps -o pgid= -p $$)", shell=True, env=PATH_ONLY)
    )
    pid, sid, pgid = out[0].split()
    assert result.ok and pid == sid == pgid


def test_stdin_is_dev_null() -> None:
    result, out = lines_of(ExecSpec("cat", env=PATH_ONLY))
    assert result.ok and out == []


def test_a_job_path_unlike_the_worker_s_is_searched_by_popen(tmp_path: Path) -> None:
    tool = tmp_path / "only-here"
    tool.write_text("#!/bin/sh\necho found on the job PATH\n")
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    assert spawn.spawn(["only-here"], {"PATH": str(tmp_path)}, 1, 2) is None
    result, out = lines_of(ExecSpec("only-here", env={"PATH": f"{tmp_path}:/usr/bin:/bin"}))
    assert result.ok and out == ["found on the job PATH"]


def test_exec_errors_are_the_outcomes_popen_gave(tmp_path: Path) -> None:
    result, _ = lines_of(ExecSpec("no-such-command-kcron", env=PATH_ONLY))
    assert (result.outcome, result.exit_code) == (Outcome.NOT_FOUND, 127)
    plain = tmp_path / "not-executable"
    plain.write_text("echo never\n")
    plain.chmod(0o644)
    result, _ = lines_of(ExecSpec(str(plain), env=PATH_ONLY))
    assert (result.outcome, result.exit_code) == (Outcome.NOT_EXECUTABLE, 126)


def test_wait_with_a_timeout_raises_as_popen_does() -> None:
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    pid = spawn.spawn(["sleep", "5"], None, w1, w2)
    os.close(w1)
    os.close(w2)
    assert pid is not None
    child = spawn.Child(pid, ["sleep", "5"], r1, r2)
    with pytest.raises(subprocess.TimeoutExpired):
        child.wait(0.05)
    assert child.poll() is None
    os.killpg(pid, signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL
    child.stdout.close()
    child.stderr.close()


@pytest.mark.parametrize("argv", [[""], ["echo", "a\0b"]])
def test_what_popen_alone_decides_goes_to_popen(argv: list[str]) -> None:
    # An empty program name (Popen: permission denied) and a NUL byte (Popen:
    # ValueError) keep Popen's answers: a C string would cut the argument short.
    assert spawn.spawn(argv, PATH_ONLY, 1, 2) is None
