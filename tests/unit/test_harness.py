"""The shared process harness's log reading (tools/harness.py): what tests, the
experiment and the bench see of a program's JSON log lines."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tools.harness import LogTail, Process


def test_records_are_read_incrementally_and_a_partial_line_waits(tmp_path: Path) -> None:
    log = tmp_path / "kcron.log"
    tail = LogTail(log)
    assert tail.poll() == [], "a log not written yet reads as empty"
    log.write_bytes(b'{"msg": "one"}\nnot json\n{"msg": "tw')
    assert [r["msg"] for r in tail.poll()] == ["one"]
    with open(log, "ab") as fh:
        fh.write(b'o"}\nprogram:1 {"msg": "three"}\n[1, 2]\n')
    assert [r["msg"] for r in tail.poll()] == ["two", "three"], "a prefix before { is skipped"
    assert tail.poll() == []
    assert [r["msg"] for r in tail.records()] == ["one", "two", "three"]


def test_a_tail_that_keeps_nothing_only_polls(tmp_path: Path) -> None:
    log = tmp_path / "bench.log"
    log.write_text('{"msg": "run succeeded"}\n')
    tail = LogTail(log, keep=False)
    assert tail.poll() == [{"msg": "run succeeded"}]
    with pytest.raises(RuntimeError):
        tail.records()


def test_a_program_that_dies_while_waited_on_fails_with_its_log(tmp_path: Path) -> None:
    code = 'print(\'{"msg": "started"}\', flush=True); raise SystemExit(3)'
    proc = Process([sys.executable, "-c", code], {}, tmp_path / "p.log", name="dying")
    with pytest.raises(AssertionError, match=r"dying exited \(3\) while waiting for never"):
        proc.wait_for(lambda: False, 30, "never")
    assert proc.messages("started") and proc.stop() == 3
