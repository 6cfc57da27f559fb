"""A worker with a signing key or an allow-list refuses runs before they are spawned:
a dead letter of kind rejected, a metric, and the worker goes on."""

from __future__ import annotations

import base64
import json
import logging
import os
from pathlib import Path

import pytest

from kcron.errors import ConfigError
from kcron.executor import Outcome
from kcron.settings import Settings
from kcron.signing import encode_run, load_keys
from kcron.worker import Worker
from tests.unit.fake_worker_kafka import DLQ, RETRY, TOPIC, Harness, Plan, a_run

P0 = (TOPIC, 0)


@pytest.fixture(autouse=True)
def _logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="kcron")


@pytest.fixture
def key_path(tmp_path: Path) -> str:
    path = tmp_path / "kcron.key"
    path.write_text("k1:" + "s" * 64 + "\n")
    os.chmod(path, 0o600)
    return str(path)


def rejected_letters(h: Harness) -> list[dict]:
    letters = [json.loads(p.value) for p in h.kafka.produced if p.topic == DLQ]
    assert all(letter["kind"] == "rejected" for letter in letters)
    return letters


def test_unsigned_forged_and_foreign_runs_are_rejected_and_signed_ones_run(
    key_path, tmp_path, caplog
):
    keys = load_keys(key_path)
    other = tmp_path / "other.key"
    other.write_text("k1:" + "x" * 64)
    os.chmod(other, 0o600)
    forged = json.loads(encode_run(a_run(n=2, queue=TOPIC), keys))
    forged["command"] = "sh -c 'id > pwned.txt'"
    h = Harness(signing_key_file=key_path)
    h.kafka.add(P0, a_run(n=1, queue=TOPIC).encode(), record_key=b"r1")  # unsigned
    h.kafka.add(P0, json.dumps(forged).encode())
    h.kafka.add(P0, encode_run(a_run(n=3, queue=TOPIC), load_keys(str(other))))
    h.kafka.add(P0, encode_run(a_run(n=4, queue="jobs.other"), keys))
    h.kafka.add(P0, encode_run(a_run(n=5, queue=TOPIC), keys))
    h.kafka.at(0, lambda: h.kafka.assign([P0]))
    h.kafka.at(3, h.signal)

    assert h.run() == 0

    assert h.started_ids() == ["backup-5"]
    letters = rejected_letters(h)
    assert [letter["reason"].split(":")[0] for letter in letters] == [
        "rejected (unsigned)",
        "rejected (bad_signature)",
        "rejected (bad_signature)",
        "rejected (wrong_queue)",
    ]
    # The raw bytes are kept, and no run: requeue cannot launder a forgery.
    assert base64.b64decode(letters[1]["raw_b64"]) == json.dumps(forged).encode()
    assert all(letter["run"] is None for letter in letters)
    assert h.kafka.committed == {P0: 5}
    assert h.counter("kcron_runs_rejected_total", reason="unsigned", queue=TOPIC) == 1
    assert h.counter("kcron_runs_rejected_total", reason="bad_signature", queue=TOPIC) == 2
    assert h.counter("kcron_dead_letters_total", queue=TOPIC, kcron_job="", kind="rejected") == 4
    assert len([r for r in caplog.records if r.getMessage() == "run rejected, not executed"]) == 4
    assert not [r for r in caplog.records if r.getMessage().startswith("no signing key")]


def test_a_retry_is_re_signed_by_the_worker_and_verifies(key_path):
    keys = load_keys(key_path)
    h = Harness({"backup": Plan(seconds=1, outcome=Outcome.FAILED, exit_code=1)},
                signing_key_file=key_path)  # fmt: skip
    h.kafka.add(P0, encode_run(a_run(queue=TOPIC), keys))
    h.kafka.at(0, lambda: h.kafka.assign([P0]))
    h.kafka.when(lambda: bool(h.kafka.produced), h.signal)

    assert h.run() == 0

    [retry] = h.kafka.produced
    assert retry.topic == RETRY
    assert json.loads(retry.value)["attempt"] == 2
    assert keys.verify_raw(retry.value) is None


def test_a_command_outside_the_allow_list_is_rejected_before_it_starts(tmp_path, caplog):
    allow = tmp_path / "allow.txt"
    allow.write_text("true\n")
    h = Harness(allow_commands=str(allow))
    h.kafka.add(P0, a_run(n=1, command="rm -rf /tmp/x").encode())
    h.kafka.add(P0, a_run(n=2, command="true", shell=True).encode())
    h.kafka.add(P0, a_run(n=3).encode())
    h.kafka.at(0, lambda: h.kafka.assign([P0]))
    h.kafka.at(3, h.signal)

    assert h.run() == 0

    assert h.started_ids() == ["backup-3"]
    reasons = [letter["reason"] for letter in rejected_letters(h)]
    assert reasons == [
        f"rejected (not_allowed): command not in the allow-list {allow}",
        f"rejected (not_allowed): shell command not in the allow-list {allow}",
    ]
    assert h.counter("kcron_runs_rejected_total", reason="not_allowed", queue=TOPIC) == 2
    assert h.kafka.committed == {P0: 3}


def test_without_a_key_the_worker_warns_once_and_runs_unsigned_runs(caplog):
    h = Harness()
    h.kafka.add(P0, a_run().encode())
    h.kafka.at(0, lambda: h.kafka.assign([P0]))
    h.kafka.at(2, h.signal)

    assert h.run() == 0

    assert h.started_ids() == ["backup-0"]
    warnings = [r for r in caplog.records if r.getMessage().startswith("no signing key")]
    assert [w.getMessage() for w in warnings] == [
        f"no signing key: any writer to {TOPIC} or {RETRY} can run commands on this worker"
    ]


def test_a_bad_key_file_stops_the_worker_before_it_connects(tmp_path):
    path = tmp_path / "kcron.key"
    path.write_text("s" * 64)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        Worker(Settings(signing_key_file=str(path)))


@pytest.mark.parametrize(
    "args",
    [
        ["consume"],
        ["backfill", "--jobs", "JOBS", "--from", "2026-01-01T00:00", "--to", "2026-01-01T01:00"],
        ["dlq", "requeue", "00000000-0000-4000-8000-000000000000"],
    ],
)
def test_every_run_writing_command_refuses_a_readable_key_file_with_exit_78(tmp_path, args):
    from click.testing import CliRunner

    from kcron.cli import cli

    key = tmp_path / "kcron.key"
    key.write_text("s" * 64)
    os.chmod(key, 0o644)
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("* * * * * backup true\n")
    args = [str(jobs) if a == "JOBS" else a for a in args]
    result = CliRunner().invoke(cli, [*args, "--signing-key-file", str(key)])
    assert result.exit_code == 78, result.output
    assert f"chmod 600 {key}" in result.output


def test_consume_refuses_a_bad_allow_list_with_exit_78(tmp_path):
    from click.testing import CliRunner

    from kcron.cli import cli

    allow = tmp_path / "allow.txt"
    allow.write_text("backup(\n")
    result = CliRunner().invoke(cli, ["consume", "--allow-commands", str(allow)])
    assert result.exit_code == 78
    assert f"allow-list {allow}:1: bad regular expression" in result.output
