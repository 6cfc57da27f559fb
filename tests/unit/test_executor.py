"""kcron.executor: real processes, kept short (each test well under 2 s)."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kcron import executor
from kcron.executor import (
    DRAIN_AFTER_EXIT_S,
    MAX_LINE_BYTES,
    TAIL_BYTES,
    ExecResult,
    ExecSpec,
    Outcome,
)

pytestmark = pytest.mark.timeout(20)

PATH_ONLY = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


class Sink:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def __call__(self, stream: str, line: str) -> None:
        self.lines.append((stream, line))

    def stream(self, name: str) -> list[str]:
        return [line for s, line in self.lines if s == name]

    @property
    def out(self) -> list[str]:
        return self.stream("stdout")

    @property
    def err(self) -> list[str]:
        return self.stream("stderr")

    @property
    def bytes_received(self) -> int:
        return sum(len(line.encode()) for _, line in self.lines)


def run(
    command: str,
    *,
    shell: bool = False,
    timeout_s: float | None = None,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    **kwargs: object,
) -> tuple[ExecResult, Sink, float]:
    sink = Sink()
    started = time.monotonic()
    result = executor.run(
        ExecSpec(command, shell=shell, timeout_s=timeout_s, env=env, cwd=cwd), sink, **kwargs
    )
    return result, sink, time.monotonic() - started


def is_gone(pid: int, within: float = 1.0) -> bool:
    """True once ``pid`` has exited (a zombie counts: nothing of it runs)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([fd], [], [], within)
        return bool(readable)
    finally:
        os.close(fd)


@contextlib.contextmanager
def reaped(*pid_files: Path) -> Iterator[None]:
    """Kill whatever a test left running, whether it passed or not."""
    try:
        yield
    finally:
        for pid_file in pid_files:
            with contextlib.suppress(Exception):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)


# -- how a command line runs -----------------------------------------------------------


def test_quoting_follows_shell_rules_without_a_shell():
    result, sink, _ = run("printf '%s|' \"a b\" c")
    assert result.outcome is Outcome.SUCCEEDED
    assert result.ok
    assert result.exit_code == 0
    assert result.error is None
    assert sink.out == ["a b|c|"]
    assert result.output_bytes == len("a b|c|")
    assert result.tail == b"a b|c|"


def test_no_shell_by_default():
    result, sink, _ = run("echo $HOME * a | tr a b; ls")
    assert result.ok
    assert sink.out == ["$HOME * a | tr a b; ls"]


def test_shell_true_runs_pipes_and_expansions():
    result, sink, _ = run(
        "echo a-$FOO | tr a b; echo done", shell=True, env={**PATH_ONLY, "FOO": "x y"}
    )
    assert result.ok
    assert sink.out == ["b-x y", "done"]


def test_shell_true_leaves_quoting_to_sh():
    result, sink, _ = run("echo 'unterminated", shell=True)
    assert result.outcome is Outcome.FAILED
    assert result.exit_code == 2
    assert sink.err  # sh's own complaint, tagged stderr


def test_env_is_exactly_what_was_passed(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("KCRON_TEST_LEAK", "from-worker")
    env = {**PATH_ONLY, "KCRON_JOB": "backup", "KCRON_RUN_ID": "r-1"}
    result, sink, _ = run(
        "sh -c 'echo \"$KCRON_JOB $KCRON_RUN_ID ${KCRON_TEST_LEAK-unset}\"'", env=env
    )
    assert result.ok
    assert sink.out == ["backup r-1 unset"]


def test_env_none_inherits_the_worker_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("KCRON_TEST_INHERIT", "yes")
    _, sink, _ = run("sh -c 'echo $KCRON_TEST_INHERIT'")
    assert sink.out == ["yes"]


def test_cwd(tmp_path: Path):
    _, sink, _ = run("pwd", cwd=str(tmp_path))
    assert sink.out == [str(tmp_path)]


def test_stdin_is_empty_so_cat_returns_at_once():
    result, sink, elapsed = run("cat")
    assert result.ok
    assert sink.lines == []
    assert result.output_bytes == 0
    assert elapsed < 1.0


def test_a_job_that_reads_stdin_gets_eof():
    result, sink, elapsed = run("sh -c 'read line; echo \"read=$?\"'")
    assert result.ok
    assert sink.out == ["read=1"]
    assert elapsed < 1.0


def test_argv_for():
    assert executor.argv_for(ExecSpec("a 'b c' \"d\"")) == ["a", "b c", "d"]
    assert executor.argv_for(ExecSpec("a | b", shell=True)) == ["/bin/sh", "-c", "a | b"]


# -- commands that cannot run ------------------------------------------------------------


@pytest.mark.parametrize("command", ["no-such-command-kcron --flag", "/nonexistent/bin/tool x"])
def test_command_not_found(command):
    result, sink, _ = run(command)
    program = command.split()[0]
    assert result.outcome is Outcome.NOT_FOUND
    assert result.exit_code == 127
    assert result.error == f"command not found: {program}"
    assert not result.ok
    assert sink.lines == []
    assert result.output_bytes == 0


def test_file_without_execute_permission(tmp_path: Path):
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    result, _, _ = run(str(script))
    assert result.outcome is Outcome.NOT_EXECUTABLE
    assert result.exit_code == 126
    assert result.error == f"permission denied: {script}"


def test_directory_is_not_executable(tmp_path: Path):
    result, _, _ = run(str(tmp_path))
    assert result.outcome is Outcome.NOT_EXECUTABLE
    assert result.exit_code == 126


def test_executable_without_valid_format(tmp_path: Path):
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x7fELF not really\x00\x01")
    junk.chmod(junk.stat().st_mode | stat.S_IXUSR)
    result, _, _ = run(str(junk))
    assert result.outcome is Outcome.NOT_EXECUTABLE
    assert result.exit_code == 126
    assert result.error is not None and str(junk) in result.error


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        ("echo 'unterminated", "No closing quotation"),
        ('echo "unterminated', "No closing quotation"),
        ("echo trailing\\", "No escaped character"),
    ],
)
def test_unparseable_quoting_is_invalid(command, reason):
    result, sink, _ = run(command)
    assert result.outcome is Outcome.INVALID
    assert result.exit_code is None
    assert result.error == f"cannot parse command line: {reason}"
    assert sink.lines == []


@pytest.mark.parametrize("command", ["", "   ", "\t"])
def test_empty_command_is_invalid(command):
    result, _, _ = run(command)
    assert result.outcome is Outcome.INVALID
    assert result.error == "empty command line"


# -- exit status -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "code"), [("false", 1), ("sh -c 'exit 3'", 3), ("sh -c 'exit 255'", 255)]
)
def test_non_zero_exit_is_failed_with_the_code(command, code):
    result, _, _ = run(command)
    assert result.outcome is Outcome.FAILED
    assert result.exit_code == code
    assert result.error == f"exit code {code}"
    assert not result.ok


def test_death_by_signal_is_failed_with_the_signal():
    result, _, _ = run("sh -c 'kill -KILL $$'")
    assert result.outcome is Outcome.FAILED
    assert result.exit_code == -signal.SIGKILL
    assert result.error == "killed by signal SIGKILL"


def test_duration_is_measured():
    result, _, _ = run("sleep 0.2")
    assert result.ok
    assert 0.15 <= result.duration_s < 1.5


# -- timeouts and cancellation -----------------------------------------------------------


def test_timeout_kills_the_whole_process_group(tmp_path: Path):
    pid_file = tmp_path / "child.pid"
    with reaped(pid_file):
        result, _, elapsed = run(
            f"sh -c 'sleep 30 & echo $! > {pid_file}; sleep 30'", timeout_s=0.5
        )
        assert result.outcome is Outcome.TIMED_OUT
        assert result.error == "timed out after 0.5s; process group killed"
        assert 0.5 <= elapsed < 1.5
        assert result.duration_s >= 0.5
        assert is_gone(int(pid_file.read_text())), "background child survived the timeout"


def test_timeout_escalates_to_sigkill_after_the_grace():
    result, _, elapsed = run("sh -c 'trap \"\" TERM; sleep 30'", timeout_s=0.3, kill_grace_s=0.2)
    assert result.outcome is Outcome.TIMED_OUT
    assert result.exit_code == -signal.SIGKILL
    assert elapsed < 1.5


def test_timeout_applies_after_the_job_closed_its_output(tmp_path: Path):
    pid_file = tmp_path / "job.pid"
    with reaped(pid_file):
        result, _, elapsed = run(
            f"sh -c 'echo $$ > {pid_file}; exec >/dev/null 2>&1; sleep 30'", timeout_s=0.3
        )
        assert result.outcome is Outcome.TIMED_OUT
        assert elapsed < 1.5
        assert is_gone(int(pid_file.read_text()))


def test_output_before_a_timeout_is_kept():
    result, sink, _ = run("sh -c 'echo started; sleep 30'", timeout_s=0.3)
    assert result.outcome is Outcome.TIMED_OUT
    assert sink.out == ["started"]
    assert result.tail == b"started\n"


def test_cancel_kills_a_running_job(tmp_path: Path):
    pid_file = tmp_path / "child.pid"
    cancel = threading.Event()
    timer = threading.Timer(0.2, cancel.set)
    timer.start()
    with reaped(pid_file):
        result, _, elapsed = run(f"sh -c 'sleep 30 & echo $! > {pid_file}; wait'", cancel=cancel)
        timer.join()
        assert result.outcome is Outcome.CANCELLED
        assert result.error == "cancelled by worker shutdown; process group killed"
        assert not result.ok
        assert elapsed < 1.5
        assert is_gone(int(pid_file.read_text()))


def test_cancel_reaches_a_job_that_closed_its_output():
    # e.g. "backup.sh >> /var/log/backup.log 2>&1": no pipe left to watch.
    cancel = threading.Event()
    timer = threading.Timer(0.2, cancel.set)
    timer.start()
    result, _, elapsed = run("sh -c 'exec >/dev/null 2>&1; sleep 30'", cancel=cancel)
    timer.join()
    assert result.outcome is Outcome.CANCELLED
    assert elapsed < 1.5


def test_cancel_already_set_stops_the_job_at_once():
    cancel = threading.Event()
    cancel.set()
    result, _, elapsed = run("sleep 30", cancel=cancel)
    assert result.outcome is Outcome.CANCELLED
    assert elapsed < 1.0


def test_unset_cancel_event_changes_nothing():
    result, sink, _ = run("echo fine", cancel=threading.Event())
    assert result.ok
    assert sink.out == ["fine"]


def test_job_that_starts_a_detached_child_and_exits_returns_promptly(tmp_path: Path):
    pid_file = tmp_path / "child.pid"
    with reaped(pid_file):
        result, sink, elapsed = run(
            f"sh -c 'sleep 30 >/dev/null 2>&1 & echo $! > {pid_file}; echo parent done'"
        )
        assert result.ok
        assert sink.out == ["parent done"]
        assert elapsed < 0.8


def test_job_whose_child_keeps_the_output_open_still_returns(tmp_path: Path):
    pid_file = tmp_path / "child.pid"
    with reaped(pid_file):
        result, sink, elapsed = run(f"sh -c 'sleep 30 & echo $! > {pid_file}; echo parent done'")
        assert result.ok
        assert sink.out == ["parent done"]
        assert elapsed < DRAIN_AFTER_EXIT_S + 0.8


def test_leftover_child_of_a_finished_job_dies_with_the_timeout(tmp_path: Path):
    pid_file = tmp_path / "child.pid"
    with reaped(pid_file):
        result, _, elapsed = run(
            f"sh -c 'sleep 30 >/dev/null 2>&1 & echo $! > {pid_file}; echo parent done'",
            timeout_s=1.5,
        )
        assert result.ok and result.leftover
        assert elapsed < 0.8, "the run itself ends with its own process"
        child = int(pid_file.read_text())
        assert not is_gone(child, within=0.3), "alive until the timeout"
        assert is_gone(child, within=2.5), "killed when the timeout expired"


def test_leftover_that_exits_on_its_own_is_left_alone(tmp_path: Path):
    result, _, _ = run("sh -c 'sleep 0.3 >/dev/null 2>&1 & echo started'", timeout_s=5)
    assert result.ok and result.leftover
    time.sleep(0.6)
    # the watcher stops by itself: no thread named after the group stays behind
    assert not [t for t in threading.enumerate() if t.name.startswith("leftovers-")]


def test_without_a_timeout_leftovers_are_not_watched(tmp_path: Path):
    pid_file = tmp_path / "child.pid"
    with reaped(pid_file):
        result, _, _ = run(f"sh -c 'sleep 30 >/dev/null 2>&1 & echo $! > {pid_file}'")
        assert result.ok and not result.leftover


# -- output --------------------------------------------------------------------------------


def test_output_cap_counts_everything_but_passes_on_only_the_cap():
    result, sink, elapsed = run("head -c 50000000 /dev/zero", max_output_bytes=1000)
    assert result.ok
    assert result.output_bytes == 50_000_000
    assert result.output_truncated is True
    assert 0 < sink.bytes_received <= 1000
    assert len(result.tail) == TAIL_BYTES
    assert elapsed < 2.0


def test_output_cap_with_many_short_lines():
    result, sink, _ = run("yes hello | head -c 5000000", shell=True, max_output_bytes=1000)
    assert result.output_bytes == 5_000_000
    assert result.output_truncated
    # each passed-on line cost its bytes and its newline
    assert sum(len(line) + 1 for line in sink.out) <= 1000 + 1
    assert sink.out[0] == "hello"
    assert len(sink.out) >= 150


def test_tail_shows_the_end_even_when_output_was_truncated():
    result, _, _ = run("head -c 2000000 /dev/zero; echo THE-END", shell=True, max_output_bytes=100)
    assert result.output_truncated
    assert result.tail.endswith(b"THE-END\n")
    assert len(result.tail) == TAIL_BYTES


def test_output_under_the_cap_is_not_truncated():
    result, sink, _ = run("printf 'a\\nbb\\n'", max_output_bytes=5)
    assert sink.out == ["a", "bb"]
    assert result.output_bytes == 5
    assert result.output_truncated is False


def test_long_line_without_newline_is_split_at_max_line_bytes():
    result, sink, _ = run("head -c 20000 /dev/zero | tr '\\0' x", shell=True)
    assert result.ok
    assert [len(line) for line in sink.out] == [
        MAX_LINE_BYTES,
        MAX_LINE_BYTES,
        20000 - 2 * MAX_LINE_BYTES,
    ]
    assert set("".join(sink.out)) == {"x"}


def test_stderr_lines_are_tagged_stderr():
    result, sink, _ = run("sh -c 'echo to-out; echo to-err >&2; echo more-err >&2'")
    assert result.ok
    assert sink.out == ["to-out"]
    assert sink.err == ["to-err", "more-err"]
    assert result.output_bytes == len("to-out\nto-err\nmore-err\n")


def test_last_line_without_newline_is_passed_on():
    _, sink, _ = run("printf 'one\\ntwo'")
    assert sink.out == ["one", "two"]


def test_crlf_line_endings_are_stripped():
    _, sink, _ = run("printf 'a\\r\\nb\\r\\n'")
    assert sink.out == ["a", "b"]


def test_invalid_utf8_output_is_replaced_not_fatal():
    result, sink, _ = run("printf '\\377ok\\n'")
    assert result.ok
    assert sink.out == ["\ufffdok"]
    assert result.tail == b"\xffok\n"


def test_many_lines_arrive_in_order():
    result, sink, _ = run("seq 1 20000")
    assert result.ok
    assert sink.out == [str(i) for i in range(1, 20001)]
    assert not result.output_truncated


def test_failed_job_keeps_its_output_tail():
    result, sink, _ = run("sh -c 'echo why it failed >&2; exit 4'")
    assert result.outcome is Outcome.FAILED
    assert sink.err == ["why it failed"]
    assert result.tail == b"why it failed\n"
