"""kcron dlq without a broker: the table, finding a letter, the CLI's errors and exit codes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from click.testing import CliRunner

from kcron import deadletter, retry
from kcron.cli import cli
from kcron.executor import ExecResult, Outcome
from kcron.message import RunMessage
from kcron.retry import DeadKind, DeadLetter, Source

RUN_ID = "0f8e2b5c-3a41-4c6e-9b7d-2a1f5e8c9d00"
T0 = datetime(2026, 11, 28, 20, 5, tzinfo=UTC)


def letter_of(run_id: str = RUN_ID, *, undecodable: bool = False, **changes: Any) -> DeadLetter:
    source = Source("kcron.jobs", 0, 3)
    if undecodable:
        record = retry.dead_letter(
            kind=DeadKind.UNDECODABLE,
            reason="undecodable message: not valid JSON",
            dead_at=T0,
            source=source,
            raw=b"garbage",
            key=run_id.encode(),
        )
    else:
        run = RunMessage(
            id=run_id, job="backup", command="false", scheduled_for=T0, produced_at=T0,
            attempt=2, max_attempts=2,
        )  # fmt: skip
        result = ExecResult(Outcome.FAILED, 1, 0.1, 10, False, b"one\ntwo failed\n", "exit code 1")
        record = retry.dead_letter(
            kind=DeadKind.EXHAUSTED,
            reason="attempts exhausted (2 of 2), last: exit code 1",
            dead_at=T0,
            source=source,
            run=run,
            result=result,
            attempt=retry.attempt_of(run, result, T0, T0),
        )
    record.update(changes)
    return retry.read_dead_letter(retry.encode_dead_letter(record), Source("kcron.jobs.dlq", 0, 0))


def test_table_has_one_readable_row_per_letter():
    rows = deadletter.table_rows([letter_of(), letter_of("other", undecodable=True)])
    assert rows[0] == ("DEAD AT", "JOB", "RUN ID", "TRIES", "EXIT", "REASON", "LAST OUTPUT")
    assert rows[1] == (
        "2026-11-28T20:05:00.000Z",
        "backup",
        RUN_ID,
        "1",
        "1",
        "attempts exhausted (2 of 2), last: exit code 1",
        "two failed",
    )
    assert rows[2][1:5] == ("-", "other", "0", "-")
    text = deadletter.format_table(rows)
    assert len(text.splitlines()) == 3
    assert text.splitlines()[1].index(RUN_ID) == text.splitlines()[0].index("RUN ID")


def test_long_reasons_and_output_are_cut_and_kept_on_one_line():
    rows = deadletter.table_rows([letter_of(reason="x\n" * 200, output_tail="y" * 500)])
    assert len(rows[1][5]) == 60 and rows[1][5].endswith("…")
    assert len(rows[1][6]) == 40 and "\n" not in rows[1][5]


def test_find_takes_the_latest_letter_of_a_run_and_ignores_case():
    first, second = letter_of(reason="first"), letter_of(reason="second")
    assert deadletter.find([first, second, letter_of("other")], RUN_ID.upper()) is second
    assert deadletter.find([first], "nope") is None


@pytest.fixture
def letters(monkeypatch: pytest.MonkeyPatch) -> list[DeadLetter]:
    found: list[DeadLetter] = []
    monkeypatch.setattr(
        deadletter, "read_dead_letters", lambda settings, idle_s, queues=None: found
    )
    return found


def test_dlq_list_prints_a_table_and_a_count(letters: list[DeadLetter]):
    letters += [letter_of(), letter_of("bad-key", undecodable=True)]
    result = CliRunner().invoke(cli, ["dlq", "list", "--topic", "t"])
    assert result.exit_code == 0, result.output
    assert RUN_ID in result.stdout and "bad-key" in result.stdout
    assert "2 dead letters in t.dlq" in result.stderr


def test_dlq_list_json_and_limit(letters: list[DeadLetter]):
    letters += [letter_of(reason="old"), letter_of(reason="new")]
    result = CliRunner().invoke(cli, ["dlq", "list", "--json", "--limit", "1"])
    assert result.exit_code == 0, result.output
    docs = json.loads(result.stdout)
    assert [d["reason"] for d in docs] == ["new"]
    assert docs[0]["dlq_offset"] == 0


def test_requeue_of_an_unknown_id_exits_66(letters: list[DeadLetter]):
    letters.append(letter_of())
    result = CliRunner().invoke(cli, ["dlq", "requeue", "nope"])
    assert result.exit_code == 66
    assert "no dead letter with id nope in kcron.jobs.dlq (1 dead letters read)" in result.stderr


def test_requeue_of_an_undecodable_message_exits_65(letters: list[DeadLetter]):
    letters.append(letter_of("garbage-key", undecodable=True))
    result = CliRunner().invoke(cli, ["dlq", "requeue", "garbage-key"])
    assert result.exit_code == 65
    assert "is not a run" in result.stderr and "nothing to requeue" in result.stderr


def test_help_shows_the_retry_options_and_their_env_vars():
    result = CliRunner().invoke(cli, ["consume", "--help"])
    assert "--retry-base" in result.stdout and "KCRON_RETRY_BASE" in result.stdout
    assert "--retry-cap" in result.stdout and "KCRON_RETRY_CAP" in result.stdout
    result = CliRunner().invoke(cli, ["dlq", "--help"])
    assert result.exit_code == 0
    assert "list" in result.stdout and "requeue" in result.stdout
