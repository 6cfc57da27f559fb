"""kcron.retry: backoff, the retry/dead-letter decision, and the records it builds."""

from __future__ import annotations

import base64
import dataclasses
import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kcron import retry
from kcron.executor import ExecResult, Outcome
from kcron.message import MAX_HISTORY, MAX_MESSAGE_BYTES, Attempt, RunMessage, decode
from kcron.retry import DeadKind, Source, Verdict

RUN_ID = "0f8e2b5c-3a41-4c6e-9b7d-2a1f5e8c9d00"
T0 = datetime(2026, 11, 28, 20, 5, tzinfo=UTC)
SOURCE = Source("kcron.jobs", 1, 42)


def a_run(**changes: Any) -> RunMessage:
    values: dict[str, Any] = {
        "id": RUN_ID,
        "job": "backup",
        "command": "pg_dump db",
        "scheduled_for": T0,
        "produced_at": T0,
        "source": "jobs.cron:3",
        "attempt": 1,
        "max_attempts": 3,
        "timeout_s": 90.0,
    }
    values.update(changes)
    return RunMessage(**values)


def a_result(outcome: Outcome = Outcome.FAILED, code: int | None = 1, **changes: Any) -> ExecResult:
    values: dict[str, Any] = {
        "outcome": outcome,
        "exit_code": code,
        "duration_s": 0.5,
        "output_bytes": 12,
        "output_truncated": False,
        "tail": b"line one\nERROR: disk full\n",
        "error": f"exit code {code}",
    }
    values.update(changes)
    return ExecResult(**values)


def decide(run: RunMessage, result: ExecResult, seed: int = 1) -> retry.Decision:
    return retry.decide(run, result, T0, 10.0, 300.0, random.Random(seed))


# -- topic names ------------------------------------------------------------------------


def test_topic_names_are_derived_from_the_main_topic():
    assert retry.retry_topic("kcron.jobs") == "kcron.jobs.retry"
    assert retry.dlq_topic("kcron.jobs") == "kcron.jobs.dlq"


# -- backoff ----------------------------------------------------------------------------


def test_backoff_is_between_half_and_all_of_the_exponential_ceiling():
    rng = random.Random(7)
    for attempt, ceiling in [(1, 10), (2, 20), (3, 40), (4, 80), (5, 160), (6, 300), (30, 300)]:
        for _ in range(200):
            delay = retry.backoff_delay(attempt, 10.0, 300.0, rng)
            assert ceiling / 2 <= delay <= ceiling, (attempt, delay)


def test_backoff_with_a_seeded_random_is_reproducible():
    seeded = random.Random(3)
    first = [retry.backoff_delay(n, 0.5, 2.0, seeded) for n in range(1, 6)]
    seeded = random.Random(3)
    assert first == [retry.backoff_delay(n, 0.5, 2.0, seeded) for n in range(1, 6)]
    rng = random.Random(3)
    expected = [
        min(2.0, 0.5 * 2 ** (n - 1)) / 2 + rng.uniform(0, min(2.0, 0.5 * 2 ** (n - 1)) / 2)
        for n in range(1, 6)
    ]
    assert first == pytest.approx(expected)


def test_backoff_gaps_grow_until_the_cap():
    # Equal jitter guarantees half the ceiling, so attempt n+1 waits at least as
    # long as attempt n could at most... once the ceiling has doubled twice.
    rng = random.Random(0)
    mins = [min(retry.backoff_delay(n, 1.0, 1000.0, rng) for _ in range(300)) for n in (1, 3, 5)]
    maxs = [max(retry.backoff_delay(n, 1.0, 1000.0, rng) for _ in range(300)) for n in (1, 3, 5)]
    assert maxs[0] < mins[1] and maxs[1] < mins[2]


def test_backoff_spreads_runs_that_failed_together():
    rng = random.Random(11)
    delays = {round(retry.backoff_delay(3, 10.0, 300.0, rng), 3) for _ in range(50)}
    assert len(delays) > 40


@pytest.mark.parametrize("attempt", [0, -5, 10**6])
def test_backoff_survives_absurd_attempt_numbers(attempt):
    delay = retry.backoff_delay(attempt, 10.0, 300.0, random.Random(1))
    assert 5.0 <= delay <= 300.0


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 10_000),
    st.floats(0.001, 1000),
    st.floats(0.001, 100_000),
    st.integers(0, 2**32),
)
def test_backoff_never_exceeds_the_cap_nor_drops_below_half_the_ceiling(attempt, base, cap, seed):
    cap = max(cap, base)
    delay = retry.backoff_delay(attempt, base, cap, random.Random(seed))
    ceiling = min(cap, base * 2 ** min(attempt - 1, 60))
    assert ceiling / 2 <= delay <= cap


# -- the decision -------------------------------------------------------------------------


def test_success_is_committed():
    assert decide(a_run(), a_result(Outcome.SUCCEEDED, 0)).verdict is Verdict.SUCCEEDED


@pytest.mark.parametrize("outcome", [Outcome.FAILED, Outcome.TIMED_OUT])
def test_retryable_failure_with_attempts_left_is_retried_after_a_backoff(outcome):
    decision = decide(a_run(attempt=2, max_attempts=3), a_result(outcome))
    assert decision.verdict is Verdict.RETRY
    assert 10.0 <= decision.delay_s <= 20.0  # after attempt 2: ceiling 20 s
    assert decision.not_before == T0 + timedelta(seconds=decision.delay_s)


@pytest.mark.parametrize("outcome", [Outcome.FAILED, Outcome.TIMED_OUT])
def test_retryable_failure_on_the_last_attempt_is_dead(outcome):
    decision = decide(a_run(attempt=3, max_attempts=3), a_result(outcome, error="exit code 1"))
    assert decision.verdict is Verdict.DEAD
    assert decision.kind is DeadKind.EXHAUSTED
    assert decision.reason == "attempts exhausted (3 of 3), last: exit code 1"


def test_a_job_with_one_attempt_is_never_retried():
    decision = decide(a_run(attempt=1, max_attempts=1), a_result(Outcome.FAILED))
    assert decision.verdict is Verdict.DEAD
    assert decision.kind is DeadKind.EXHAUSTED


@pytest.mark.parametrize("outcome", [Outcome.NOT_FOUND, Outcome.NOT_EXECUTABLE, Outcome.INVALID])
def test_permanent_failures_are_dead_at_once_even_with_attempts_left(outcome):
    result = a_result(outcome, 127, error="command not found: nope")
    decision = decide(a_run(attempt=1, max_attempts=5), result)
    assert decision.verdict is Verdict.DEAD
    assert decision.kind is DeadKind.PERMANENT
    assert decision.reason == f"permanent failure ({outcome}): command not found: nope"


def test_cancelled_run_has_no_fate_to_decide():
    # The worker leaves a cancelled run uncommitted (redelivered) without asking;
    # asking anyway is a bug, not a retry or a dead letter.
    # (tests/unit/test_worker.py checks that such a run is not committed.)
    with pytest.raises(ValueError, match="redelivered"):
        decide(a_run(), a_result(Outcome.CANCELLED, -15))


def test_every_outcome_has_exactly_one_fate():
    assert retry.PERMANENT.isdisjoint(retry.RETRYABLE)
    others = set(Outcome) - retry.PERMANENT - retry.RETRYABLE
    assert others == {Outcome.SUCCEEDED, Outcome.SKIPPED, Outcome.CANCELLED}


# -- the next attempt --------------------------------------------------------------------


def test_next_attempt_keeps_the_run_and_adds_the_failed_attempt():
    run = a_run(attempt=1)
    attempt = retry.attempt_of(run, a_result(), T0, T0 + timedelta(seconds=2))
    not_before = T0 + timedelta(seconds=12)
    now = T0 + timedelta(seconds=2, milliseconds=5)
    nxt = retry.next_attempt(run, attempt, not_before, now)
    assert (nxt.id, nxt.job, nxt.command, nxt.scheduled_for) == (
        run.id,
        run.job,
        run.command,
        run.scheduled_for,
    )
    assert nxt.attempt == 2
    assert nxt.not_before == not_before
    assert nxt.produced_at == now
    assert nxt.history == (Attempt(1, T0, T0 + timedelta(seconds=2), "failed", 1),)
    assert nxt.due == not_before
    back = decode(nxt.encode())
    assert back.history == nxt.history
    assert back.not_before == not_before


def test_history_accumulates_over_attempts():
    run = a_run(attempt=1, max_attempts=4)
    for n in range(1, 4):
        started = T0 + timedelta(minutes=n)
        attempt = retry.attempt_of(run, a_result(), started, started + timedelta(seconds=1))
        run = decode(retry.next_attempt(run, attempt, started, started).encode())
    assert run.attempt == 4
    assert [a.attempt for a in run.history] == [1, 2, 3]


def test_history_keeps_only_the_newest_entries():
    old = tuple(Attempt(n, T0, T0, "failed", 1) for n in range(1, MAX_HISTORY + 1))
    run = a_run(attempt=1, max_attempts=2, history=old)
    nxt = retry.next_attempt(run, Attempt(1, T0, T0, "timed_out", -9), T0, T0)
    assert len(nxt.history) == MAX_HISTORY
    assert nxt.history[-1].outcome == "timed_out"
    assert nxt.history[0].attempt == 2
    decode(nxt.encode())


def test_a_retry_never_outgrows_the_message_limit():
    history = tuple(Attempt(n, T0, T0, "failed", 1) for n in range(1, 60))
    base = len(a_run(command="", history=history, not_before=T0).encode())
    run = a_run(command="x" * (MAX_MESSAGE_BYTES - base - 10), history=history, not_before=T0)
    assert MAX_MESSAGE_BYTES - 20 < len(run.encode()) <= MAX_MESSAGE_BYTES
    nxt = retry.next_attempt(run, Attempt(1, T0, T0, "failed", 1), T0, T0)
    assert len(nxt.encode()) <= MAX_MESSAGE_BYTES
    assert nxt.history[-1] == Attempt(1, T0, T0, "failed", 1)
    assert len(nxt.history) < 60  # the oldest made room
    assert nxt.history[0].attempt > 1
    decode(nxt.encode())


def test_requeued_run_is_a_fresh_first_attempt_with_its_history():
    history = (Attempt(1, T0, T0, "failed", 2), Attempt(2, T0, T0, "failed", 2))
    dead = a_run(attempt=3, not_before=T0, history=history)
    now = T0 + timedelta(days=1)
    fresh = retry.requeued(dead, now)
    assert (fresh.id, fresh.attempt, fresh.not_before, fresh.history) == (
        RUN_ID,
        1,
        None,
        history,
    )
    assert fresh.produced_at == now
    assert decode(fresh.encode()) == fresh


# -- dead letters -------------------------------------------------------------------------


def test_dead_letter_of_a_run_has_everything_needed_to_understand_it():
    history = (Attempt(1, T0, T0 + timedelta(seconds=1), "failed", 1),)
    run = a_run(attempt=2, max_attempts=2, history=history, not_before=T0)
    result = a_result(Outcome.FAILED, 1)
    last = retry.attempt_of(run, result, T0 + timedelta(seconds=20), T0 + timedelta(seconds=21))
    record = retry.dead_letter(
        kind=DeadKind.EXHAUSTED,
        reason="attempts exhausted (2 of 2), last: exit code 1",
        dead_at=T0 + timedelta(seconds=21),
        source=SOURCE,
        run=run,
        result=result,
        attempt=last,
    )
    doc = json.loads(retry.encode_dead_letter(record))
    assert doc["v"] == 1
    assert doc["id"] == RUN_ID
    assert doc["kind"] == "exhausted"
    assert doc["reason"].startswith("attempts exhausted")
    assert doc["dead_at"] == "2026-11-28T20:05:21.000Z"
    assert doc["job"] == "backup"
    assert doc["attempts"] == 2
    assert [a["attempt"] for a in doc["history"]] == [1, 2]
    assert doc["history"][1]["started_at"] == "2026-11-28T20:05:20.000Z"
    assert (doc["outcome"], doc["exit_code"], doc["error"]) == ("failed", 1, "exit code 1")
    assert doc["output_tail"] == "line one\nERROR: disk full\n"
    assert doc["source"] == {"topic": "kcron.jobs", "partition": 1, "offset": 42}
    assert decode(json.dumps(doc["run"]).encode()) == run
    assert doc["raw_b64"] is None


def test_dead_letter_tail_is_decoded_even_when_not_utf8():
    result = a_result(tail=b"caf\xe9 \xff\n")
    record = retry.dead_letter(
        kind=DeadKind.PERMANENT, reason="x", dead_at=T0, source=SOURCE, run=a_run(), result=result
    )
    assert record["output_tail"] == "caf\ufffd \ufffd\n"
    json.loads(retry.encode_dead_letter(record))


def test_dead_letter_of_an_undecodable_message_keeps_its_raw_bytes_and_key():
    raw = b"\xff\xfe not json \x00"
    record = retry.dead_letter(
        kind=DeadKind.UNDECODABLE,
        reason="undecodable message: not UTF-8",
        dead_at=T0,
        source=SOURCE,
        raw=raw,
        key=RUN_ID.encode(),
    )
    doc = json.loads(retry.encode_dead_letter(record))
    assert base64.b64decode(doc["raw_b64"]) == raw
    assert (doc["raw_bytes"], doc["raw_truncated"]) == (len(raw), False)
    assert doc["id"] == RUN_ID
    assert doc["run"] is None and doc["job"] is None
    assert doc["attempts"] == 0 and doc["history"] == []
    assert doc["source"]["offset"] == 42


def test_huge_undecodable_message_is_kept_only_up_to_the_limit():
    raw = b"x" * (retry.MAX_RAW_KEPT + 10)
    record = retry.dead_letter(
        kind=DeadKind.UNDECODABLE, reason="too big", dead_at=T0, source=SOURCE, raw=raw
    )
    assert len(base64.b64decode(record["raw_b64"])) == retry.MAX_RAW_KEPT
    assert record["raw_bytes"] == len(raw)
    assert record["raw_truncated"] is True
    assert len(retry.encode_dead_letter(record)) < 1_000_000


@pytest.mark.parametrize(
    ("key", "expected"),
    [(None, None), (b"", None), (b"\xff\xfe", None), (b"a\nb", None), (b"x" * 201, None)],
)
def test_only_a_printable_key_becomes_the_id_of_an_undecodable_message(key, expected):
    record = retry.dead_letter(
        kind=DeadKind.UNDECODABLE, reason="r", dead_at=T0, source=SOURCE, raw=b"x", key=key
    )
    assert record["id"] == expected


# -- reading dead letters back ----------------------------------------------------------------


def test_read_dead_letter_round_trip():
    run = a_run()
    result = a_result(tail=b"first\n\nlast words  \n\n")
    record = retry.dead_letter(
        kind=DeadKind.EXHAUSTED,
        reason="attempts exhausted",
        dead_at=T0,
        source=SOURCE,
        run=run,
        result=result,
        attempt=retry.attempt_of(run, result, T0, T0),
    )
    letter = retry.read_dead_letter(retry.encode_dead_letter(record), Source("t.dlq", 0, 7))
    assert letter.id == RUN_ID
    assert letter.job == "backup"
    assert letter.attempts == 1
    assert letter.exit_code == 1
    assert letter.kind == "exhausted"
    assert letter.dead_at == "2026-11-28T20:05:00.000Z"
    assert letter.last_line == "last words"
    final = retry.attempt_of(run, result, T0, T0)
    assert letter.run() == dataclasses.replace(run, history=(final,))
    assert letter.source == Source("t.dlq", 0, 7)


@pytest.mark.parametrize("raw", [None, b"", b"not json", b"[1]", b'"x"', b"[" * 100_000])
def test_an_unreadable_record_is_listed_not_fatal(raw):
    letter = retry.read_dead_letter(raw)
    assert letter.kind == "unreadable"
    assert letter.id is None and letter.run() is None
    assert letter.last_line == ""


def test_a_record_with_odd_field_types_reads_as_unknowns():
    doc = {"id": 5, "job": ["x"], "attempts": True, "exit_code": "1", "output_tail": 3, "run": 1}
    letter = retry.read_dead_letter(json.dumps(doc).encode())
    assert (letter.id, letter.job, letter.attempts, letter.exit_code) == (None, None, None, None)
    assert letter.last_line == "" and letter.run() is None


def test_a_record_whose_run_does_not_decode_has_no_run():
    record = {"id": RUN_ID, "run": {"v": 1, "id": RUN_ID}}
    assert retry.read_dead_letter(json.dumps(record).encode()).run() is None


# -- settings -----------------------------------------------------------------------------


def test_retry_settings_defaults_and_validation():
    from kcron.errors import ConfigError
    from kcron.settings import Settings

    assert (Settings().retry_base_s, Settings().retry_cap_s) == (10.0, 300.0)
    assert Settings.from_values({"retry_base_s": 0.5, "retry_cap_s": 2}).retry_cap_s == 2
    for values in (
        {"retry_base_s": 0},
        {"retry_base_s": -1},
        {"retry_base_s": 20, "retry_cap_s": 5},
    ):
        with pytest.raises(ConfigError, match="retry base must be > 0 and at most the retry cap"):
            Settings.from_values(values)


def test_a_dead_run_read_back_carries_every_attempt_including_the_last():
    history = (Attempt(1, T0, T0, "failed", 1), Attempt(2, T0, T0, "failed", 1))
    run = a_run(attempt=3, max_attempts=3, history=history, not_before=T0)
    result = a_result()
    last = retry.attempt_of(run, result, T0, T0)
    record = retry.dead_letter(
        kind=DeadKind.EXHAUSTED, reason="r", dead_at=T0, source=SOURCE, run=run, result=result,
        attempt=last,
    )  # fmt: skip
    back = retry.read_dead_letter(retry.encode_dead_letter(record)).run()
    assert back is not None
    assert [a.attempt for a in back.history] == [1, 2, 3]
    fresh = retry.requeued(back, T0)
    assert (fresh.attempt, len(fresh.history)) == (1, 3)


def test_a_record_with_an_odd_history_still_gives_back_its_run():
    run = a_run()
    record = {"id": RUN_ID, "run": run.to_dict(), "history": [{"attempt": "x"}]}
    assert retry.read_dead_letter(json.dumps(record).encode()).run() == run
