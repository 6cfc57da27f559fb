"""A second SIGTERM or SIGINT during the grace stops a real worker at once."""

from __future__ import annotations

import os
import select
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import Broker
from tests.integration.test_core import start
from tests.support import Kcron, backfill, read_lines

pytestmark = pytest.mark.integration


def _gone(pid: int, within: float = 2.0) -> bool:
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], within)[0])
    finally:
        os.close(fd)


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_kills_the_running_job_and_leaves_it_for_redelivery(
    broker: Broker, topic: str, group: str, tmp_path: Path, procs: list[Kcron], second: int
) -> None:
    ran, pid_file = tmp_path / "ran.txt", tmp_path / "child.pid"
    script = tmp_path / "hang.sh"
    script.write_text(f"echo $KCRON_RUN_ID >> {ran}\nsleep 60 &\necho $! > {pid_file}\nwait\n")
    jobs = tmp_path / "jobs.cron"
    jobs.write_text(f"name=hang * * * * * sh {script}\n")
    backfill(
        broker.bootstrap, topic, jobs, "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z", partitions=1
    )
    first = start(procs, tmp_path, broker, topic, group, KCRON_PARTITIONS="1", KCRON_GRACE="60")
    first.wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), 30, "the job")
    child = int(pid_file.read_text())
    first.signal(signal.SIGTERM)
    first.wait_for(lambda: first.messages("shutting down"), 10, "the graceful stop to begin")
    began = time.monotonic()
    first.signal(second)
    assert first.proc.wait(10) == 128 + second, first.text()[-2000:]
    assert time.monotonic() - began < 5, "not the 60 s grace"
    [line] = first.messages("second signal: stopping now; running runs killed, not committed")
    assert line["killed"] == 1
    assert line["signal"] == signal.Signals(second).name
    assert _gone(child), "the job's whole process group is killed"
    assert not first.messages("worker stopped")

    # Nothing was committed for it: the next worker runs it again.
    pid_file.unlink()
    again = start(procs, tmp_path, broker, topic, group, KCRON_PARTITIONS="1", KCRON_GRACE="0")
    again.wait_for(lambda: len(read_lines(ran)) == 2, 30, "the redelivered run")
    assert read_lines(ran)[0] == read_lines(ran)[1]
