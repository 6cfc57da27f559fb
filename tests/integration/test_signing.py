"""Signed runs and the allow-list with a real broker and a real worker (docs/security.md).

With a key, backfilled runs and their retries run; an unsigned message, a
signed one whose command was changed, and one signed with another key never
run: each lands in the dead-letter topic as ``rejected`` and the worker goes on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from kcron.signing import encode_run, load_keys
from tests.conftest import Broker
from tests.integration.runs import a_run, create_topics, dead_letters, produce
from tests.support import REPO, Kcron, kcron_env, read_lines, worker

pytestmark = pytest.mark.integration


def key_file(tmp_path: Path, name: str, secret: str) -> Path:
    path = tmp_path / name
    path.write_text(secret + "\n")
    os.chmod(path, 0o600)
    return path


def signed_backfill(
    broker: Broker, topic: str, jobs: Path, key: Path, start: str, end: str
) -> None:
    env = kcron_env(broker.bootstrap, topic, KCRON_SIGNING_KEY_FILE=str(key))
    argv = ["backfill", "--jobs", str(jobs), "--from", start, "--to", end]
    result = subprocess.run(
        [sys.executable, "-m", "kcron", *argv],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_with_a_key_signed_runs_and_retries_run_and_forgeries_are_rejected(
    broker: Broker, topic: str, group: str, tmp_path: Path, procs: list[Kcron]
) -> None:
    key = key_file(tmp_path, "kcron.key", "k1:" + "s" * 64)
    wrong = key_file(tmp_path, "wrong.key", "k1:" + "w" * 64)
    ran, retried, pwned = tmp_path / "ran.txt", tmp_path / "retried.txt", tmp_path / "pwned.txt"
    marker = tmp_path / "failed-once"
    jobs = tmp_path / "jobs.cron"
    jobs.write_text(
        f"name=tick * * * * * sh -c 'echo $KCRON_RUN_ID >> {ran}'\n"
        f"name=flaky attempts=2 0 * * * * sh -c "
        f"'test -e {marker} || {{ touch {marker}; exit 1; }}; echo $KCRON_ATTEMPT >> {retried}'\n"
    )
    create_topics(broker.bootstrap, topic, 2)
    w = worker(procs, tmp_path, broker, topic, group, KCRON_SIGNING_KEY_FILE=str(key),
               KCRON_RETRY_BASE="0.5", KCRON_RETRY_CAP="1")  # fmt: skip

    keys = load_keys(str(key))
    signed_backfill(broker, topic, jobs, key, "2026-01-01T00:00:00Z", "2026-01-01T00:03:00Z")

    unsigned = a_run(f"sh -c 'id > {pwned}'", job="unsigned")
    # A real signed message (as the producer writes it), copied with its command changed.
    real = json.loads(encode_run(replace(a_run("true", job="copied"), queue=topic), keys))
    real["command"] = f"sh -c 'id > {pwned}'"
    other = replace(a_run(f"sh -c 'id > {pwned}'", job="wrong-key"), queue=topic)
    attacks = [
        (unsigned.key, unsigned.encode()),
        (real["id"].encode(), json.dumps(real).encode()),
        (other.key, encode_run(other, load_keys(str(wrong)))),
    ]
    produce(broker.bootstrap, topic, attacks)

    letters = dead_letters(broker.bootstrap, topic, 3)
    w.wait_for(lambda: len(read_lines(ran)) >= 3 and read_lines(retried), 30, "the signed runs")
    assert not pwned.exists(), "a refused message ran"
    assert sorted(x.kind for x in letters) == ["rejected"] * 3
    reasons = {x.job: x.reason.split(":")[0] for x in letters}
    assert reasons == {
        "unsigned": "rejected (unsigned)",
        "copied": "rejected (bad_signature)",
        "wrong-key": "rejected (bad_signature)",
    }
    assert all(x.record["raw_b64"] and x.record["run"] is None for x in letters)
    assert len(read_lines(ran)) == 3
    # The flaky job failed once, was re-signed by the worker, verified and ran again.
    assert read_lines(retried) == ["2"]
    assert [r["attempt"] for r in w.messages("retry scheduled")] == [2]
    assert len(w.messages("run rejected, not executed")) == 3
    assert not w.messages("no signing key: any writer to " + topic)
    assert w.proc.poll() is None, "the worker must stay up"
    assert w.stop() == 0


def test_a_command_outside_the_allow_list_is_rejected_and_never_runs(
    broker: Broker, topic: str, group: str, tmp_path: Path, procs: list[Kcron]
) -> None:
    done, pwned = tmp_path / "done.txt", tmp_path / "pwned.txt"
    allow = tmp_path / "allow.txt"
    allow.write_text(f"touch {done}\n")
    create_topics(broker.bootstrap, topic, 2)
    w = worker(procs, tmp_path, broker, topic, group, KCRON_ALLOW_COMMANDS=str(allow))
    evil = a_run(f"touch {pwned}", job="evil")
    sneaky = a_run(f"touch {done}; touch {pwned}", job="sneaky", shell=True)
    fine = a_run(f"touch {done}", job="fine")
    produce(broker.bootstrap, topic, [(r.key, r.encode()) for r in (evil, sneaky, fine)])

    letters = dead_letters(broker.bootstrap, topic, 2)
    w.wait_for(done.exists, 30, "the allowed run")
    assert not pwned.exists()
    assert sorted((x.job, x.kind) for x in letters) == [
        ("evil", "rejected"),
        ("sneaky", "rejected"),
    ]
    assert all("not in the allow-list" in x.reason for x in letters)
    # No key: the one warning line at start.
    assert len(w.messages(f"no signing key: any writer to {topic} or {topic}.retry "
                          "can run commands on this worker")) == 1  # fmt: skip
    assert w.stop() == 0


def kcron_dlq(
    broker: Broker, topic: str, key: Path | None, *args: str
) -> subprocess.CompletedProcess[str]:
    env = kcron_env(broker.bootstrap, topic)
    if key is not None:
        env["KCRON_SIGNING_KEY_FILE"] = str(key)
    return subprocess.run(
        [sys.executable, "-m", "kcron", "dlq", *args, "--idle", "1"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.slow
def test_requeue_re_signs_a_dead_run_and_refuses_a_rejected_message(
    broker: Broker, topic: str, group: str, tmp_path: Path, procs: list[Kcron]
) -> None:
    key = key_file(tmp_path, "kcron.key", "s" * 64)  # the simple form: one secret
    keys = load_keys(str(key))
    ran = tmp_path / "ran.txt"
    create_topics(broker.bootstrap, topic, 2)
    w = worker(procs, tmp_path, broker, topic, group, KCRON_SIGNING_KEY_FILE=str(key))
    failing = replace(a_run(f"sh -c 'echo x >> {ran}; exit 3'", job="fails"), queue=topic)
    unsigned = a_run(f"sh -c 'echo x >> {ran}'", job="unsigned")
    produce(broker.bootstrap, topic, [(failing.key, encode_run(failing, keys)),
                                      (unsigned.key, unsigned.encode())])  # fmt: skip
    letters = {x.id: x for x in dead_letters(broker.bootstrap, topic, 2)}
    assert (letters[failing.id].kind, letters[unsigned.id].kind) == ("exhausted", "rejected")

    # A requeue signs the run it sends back: the worker verifies it and runs it again.
    requeued = kcron_dlq(broker, topic, key, "requeue", failing.id)
    assert requeued.returncode == 0, requeued.stderr
    w.wait_for(lambda: len(read_lines(ran)) == 2, 30, "the requeued run")
    # A rejected message holds no run: requeue cannot turn it into a signed one.
    refused = kcron_dlq(broker, topic, key, "requeue", unsigned.id)
    assert refused.returncode == 65 and "nothing to requeue" in refused.stderr
    # Requeued without the key, the run goes out unsigned and the worker refuses it.
    assert kcron_dlq(broker, topic, None, "requeue", failing.id).returncode == 0
    letters_after = dead_letters(broker.bootstrap, topic, 4)
    assert [x.kind for x in letters_after if x.id == failing.id] == [
        "exhausted", "exhausted", "rejected"
    ]  # fmt: skip
    assert len(read_lines(ran)) == 2
    assert w.stop() == 0
