"""Retries and dead letters with a real broker and a real worker: the course's two demos
(a job that always fails, a job that fails at random) and ``kcron dlq``."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import Broker
from tests.integration.runs import a_run, create_topics, dead_letters, epoch, produce, produce_runs
from tests.support import REPO, Kcron, kcron_env, read_lines, worker

pytestmark = pytest.mark.integration


def kcron_dlq(broker: Broker, topic: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kcron", "dlq", *args, "--idle", "1"],
        env=kcron_env(broker.bootstrap, topic),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_always_failing_job_is_dead_after_exactly_its_attempts_and_can_be_requeued(
    broker: Broker, topic: str, group: str, tmp_path: Path, procs: list[Kcron]
) -> None:
    create_topics(broker.bootstrap, topic, 2)
    w = worker(procs, tmp_path, broker, topic, group, KCRON_RETRY_BASE="0.5", KCRON_RETRY_CAP="2")
    always = a_run(
        "sh -c 'echo attempt $KCRON_ATTEMPT of $KCRON_MAX_ATTEMPTS; echo boom >&2; exit 7'",
        job="always-fails",
        attempts=3,
    )
    missing = a_run("/no/such/command --flag", job="missing", attempts=5)
    produce_runs(broker.bootstrap, topic, [always, missing])
    produce(broker.bootstrap, topic, [(b"garbage-key", b"this is not a run")])

    letters = {x.id: x for x in dead_letters(broker.bootstrap, topic, 3)}
    assert set(letters) == {always.id, missing.id, "garbage-key"}, letters

    # -- the job that always fails: exactly 3 tries, growing gaps, then the DLQ
    tries = [r for r in w.messages("run started") if r["run"] == always.id]
    assert [r["attempt"] for r in tries] == [1, 2, 3]
    retries = [r for r in w.messages("retry scheduled") if r["run"] == always.id]
    delays = [r["delay_ms"] / 1000 for r in retries]
    assert [r["attempt"] for r in retries] == [2, 3]
    # equal jitter, base 0.5 s, cap 2 s: after try 1 in [0.25, 0.5], after try 2 in [0.5, 1]
    assert 0.25 <= delays[0] <= 0.5 <= delays[1] <= 1.0, delays
    record = letters[always.id].record
    assert record["kind"] == "exhausted"
    assert record["reason"] == "attempts exhausted (3 of 3), last: exit code 7"
    assert (record["outcome"], record["exit_code"]) == ("failed", 7)
    assert "attempt 3 of 3" in record["output_tail"] and "boom" in record["output_tail"]
    assert record["attempts"] == 3
    history = record["history"]
    assert [h["attempt"] for h in history] == [1, 2, 3]
    assert all(h["exit_code"] == 7 and h["outcome"] == "failed" for h in history)
    gaps = [epoch(history[n + 1]["started_at"]) - epoch(history[n]["finished_at"]) for n in (0, 1)]
    for gap, delay in zip(gaps, delays, strict=True):
        assert delay - 0.01 <= gap <= delay + 1.5, (gaps, delays)
    assert record["run"]["id"] == always.id and record["source"]["topic"] == f"{topic}.retry"
    print(
        f"always-fails: 3 tries, backoff {delays[0]:.3f} s then {delays[1]:.3f} s, "
        f"gaps finish->start {gaps[0]:.3f} s, {gaps[1]:.3f} s; dead letter: exit 7, "
        f"tail {record['output_tail']!r}"
    )

    # -- a permanent failure is dead at once, attempts left or not
    record = letters[missing.id].record
    assert [r["attempt"] for r in w.messages("run started") if r["run"] == missing.id] == [1]
    assert (record["kind"], record["outcome"]) == ("permanent", "not_found")
    assert record["exit_code"] == 127
    assert record["attempts"] == 1

    # -- kcron dlq list shows them readably
    listed = kcron_dlq(broker, topic, "list")
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if always.id in line)
    assert "always-fails" in row and "attempts exhausted (3 of 3)" in row and "boom" in row
    assert "3 dead letters in" in listed.stderr
    print(listed.stdout)

    # -- requeue: a fresh attempt 1 with the same id, and its history kept
    requeued = kcron_dlq(broker, topic, "requeue", always.id)
    assert requeued.returncode == 0, requeued.stderr
    assert f"requeued run {always.id}" in requeued.stdout
    w.wait_for(
        lambda: len([r for r in w.messages("run started") if r["run"] == always.id]) == 6,
        30,
        "the requeued run's three tries",
    )
    letters_after = dead_letters(broker.bootstrap, topic, 4)
    again = [x for x in letters_after if x.id == always.id]
    assert len(again) == 2
    assert [h["attempt"] for h in again[-1].record["history"]] == [1, 2, 3, 1, 2, 3]
    tries = [r for r in w.messages("run started") if r["run"] == always.id]
    assert [r["attempt"] for r in tries] == [1, 2, 3, 1, 2, 3]

    # -- clear errors for what cannot be requeued
    garbage = kcron_dlq(broker, topic, "requeue", "garbage-key")
    assert garbage.returncode == 65 and "nothing to requeue" in garbage.stderr
    unknown = kcron_dlq(broker, topic, "requeue", "no-such-id")
    assert unknown.returncode == 66 and "no dead letter with id no-such-id" in unknown.stderr
    assert w.proc.poll() is None


def test_randomly_failing_job_eventually_succeeds(
    broker: Broker, topic: str, group: str, tmp_path: Path, procs: list[Kcron]
) -> None:
    create_topics(broker.bootstrap, topic, 2)
    w = worker(procs, tmp_path, broker, topic, group, KCRON_RETRY_BASE="0.2", KCRON_RETRY_CAP="1")
    # Fails about half the time; with 10 attempts, a run dies with odds 1 in 1024.
    flaky = "sh -c 'n=$(od -An -N1 -tu1 /dev/urandom); echo drew $n; [ $((n % 2)) -eq 0 ]'"
    runs = [a_run(flaky, job=f"flaky-{i}", attempts=10) for i in range(3)]
    produce_runs(broker.bootstrap, topic, runs)

    def succeeded() -> list[dict[str, object]]:
        done = w.messages("run succeeded")
        return done if {r["run"] for r in done} >= {r.id for r in runs} else []

    done = w.wait_for(succeeded, 60, "every flaky run to succeed")
    assert w.messages("dead letter") == []
    figures = []
    for run in runs:
        tries = [r["attempt"] for r in w.messages("run started") if r["run"] == run.id]
        assert tries == list(range(1, len(tries) + 1)), tries
        success = [r for r in done if r["run"] == run.id]
        assert len(success) == 1 and success[0]["attempt"] == len(tries)
        failed = [r for r in w.messages("run failed") if r["run"] == run.id]
        assert len(failed) == len(tries) - 1
        figures.append(len(tries))
    print(f"flaky runs succeeded after {figures} tries (attempts=10, ~50% failure each)")


@pytest.mark.slow
def test_a_stopped_worker_hands_its_waiting_retry_to_the_next_one_and_never_repeats_a_try(
    broker: Broker, topic: str, group: str, tmp_path: Path, procs: list[Kcron]
) -> None:
    tries = tmp_path / "tries.txt"
    create_topics(broker.bootstrap, topic, 1)
    env = {"KCRON_RETRY_BASE": "6", "KCRON_RETRY_CAP": "6", "KCRON_PARTITIONS": "1"}
    first = worker(procs, tmp_path, broker, topic, group, **env)
    run = a_run(f"sh -c 'echo $KCRON_ATTEMPT >> {tries}; exit 1'", job="twice", attempts=2)
    produce_runs(broker.bootstrap, topic, [run])
    scheduled = first.wait_for(lambda: first.messages("retry scheduled"), 30, "the retry")
    first.signal()  # the retry waits 3-6 s: stop the worker while it holds it
    assert first.proc.wait(30) == 0
    assert [r["attempt"] for r in first.messages("run started")] == [1], "stopped in time"
    second = worker(procs, tmp_path, broker, topic, group, **env)
    second.wait_for(lambda: second.messages("run failed"), 40, "the second try")
    time.sleep(1)
    assert [r["attempt"] for r in second.messages("run started")] == [2]
    assert read_lines(tries) == ["1", "2"], "each try exactly once"
    started = second.messages("run started")[0]
    assert started["not_before"] == scheduled[0]["not_before"]
    assert started["topic"] == f"{topic}.retry"
    dead_letters(broker.bootstrap, topic, 1)
