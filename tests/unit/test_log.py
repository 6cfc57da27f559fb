"""kcron.log: greppable text lines and one JSON object per line."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from kcron import log
from kcron.log import JsonFormatter, TextFormatter, fields

CREATED = 1796068860.012  # 2026-11-30T20:01:00.012Z
TS = "2026-11-30T20:01:00.012Z"


def record(
    msg: str = "run finished",
    *args: object,
    level: int = logging.INFO,
    name: str = "kcron.worker",
    extra: dict[str, Any] | None = None,
    exc_info: Any = None,
) -> logging.LogRecord:
    rec = logging.LogRecord(name, level, __file__, 1, msg, args or None, exc_info)
    rec.created = CREATED
    rec.msecs = 12.0
    for key, value in (extra or {}).items():
        setattr(rec, key, value)
    return rec


def text(rec: logging.LogRecord, instance: str = "consumer-00") -> str:
    return TextFormatter(instance).format(rec)


def as_json(rec: logging.LogRecord, instance: str = "consumer-00") -> dict[str, Any]:
    line = JsonFormatter(instance).format(rec)
    assert "\n" not in line
    return json.loads(line)


# -- text ------------------------------------------------------------------------------


def test_text_line_layout():
    rec = record(extra=fields(job="backup", run="r-1", outcome="succeeded", exit_code=0))
    assert text(rec) == (
        f"{TS} INFO  consumer-00 kcron.worker [backup r-1] run finished "
        "outcome=succeeded exit_code=0"
    )


def test_job_and_run_go_before_the_message_in_that_order_whatever_the_order_given():
    rec = record(extra=fields(attempt=2, run="r-9", job="report"))
    line = text(rec)
    assert line.index("[report r-9]") < line.index("run finished") < line.index("attempt=2")
    assert "job=" not in line and "run=" not in line


def test_job_alone_is_still_a_prefix():
    assert "[backup] run finished" in text(record(extra=fields(job="backup")))


def test_no_fields_no_brackets():
    assert text(record()) == f"{TS} INFO  consumer-00 kcron.worker run finished"


def test_message_arguments_are_interpolated():
    assert text(record("took %.1fs for %s", 1.25, "backup")).endswith("took 1.2s for backup")


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("plain", "plain"),
        ("two words", '"two words"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("a=b", '"a=b"'),
        ("line\nbreak", '"line\\nbreak"'),
        ("tab\there", '"tab\\there"'),
        ("", '""'),
        ("café", "café"),
        (3.5, "3.5"),
        (True, "True"),
    ],
)
def test_values_are_quoted_when_needed(value, shown):
    assert text(record(extra=fields(v=value))).endswith(f" v={shown}")


def test_none_values_are_left_out_of_text():
    line = text(record(extra=fields(exit_code=None, outcome="timed_out")))
    assert "exit_code" not in line
    assert line.endswith(" outcome=timed_out")


def test_level_name_is_padded_to_five_characters():
    warning = text(record(level=logging.WARNING))
    info = text(record(level=logging.INFO))
    assert warning.split(" ")[1] == "WARNING"
    assert info.split(" ")[1:3] == ["INFO", ""]
    assert warning.index("consumer-00") == info.index("consumer-00") + 2


def test_exception_is_appended_after_the_line():
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        rec = record("failed", level=logging.ERROR, exc_info=sys.exc_info())
    first, *rest = text(rec).splitlines()
    assert first == f"{TS} ERROR consumer-00 kcron.worker failed"
    assert rest[-1] == "RuntimeError: boom"


# -- JSON ------------------------------------------------------------------------------


def test_json_line_has_every_field():
    rec = record(
        extra=fields(job="backup", run="r-1", outcome="succeeded", exit_code=None, duration_s=1.5)
    )
    assert as_json(rec) == {
        "ts": TS,
        "level": "INFO",
        "instance": "consumer-00",
        "logger": "kcron.worker",
        "msg": "run finished",
        "job": "backup",
        "run": "r-1",
        "outcome": "succeeded",
        "exit_code": None,
        "duration_s": 1.5,
    }


def test_json_keeps_newlines_and_unicode_inside_one_line():
    rec = record("line one\nline two é", extra=fields(output="a\nb"))
    line = JsonFormatter("x").format(rec)
    assert line.count("\n") == 0
    assert "é" in line
    doc = json.loads(line)
    assert doc["msg"] == "line one\nline two é"
    assert doc["output"] == "a\nb"


def test_json_values_that_are_not_json_become_strings():
    class Thing:
        def __str__(self) -> str:
            return "thing!"

    assert as_json(record(extra=fields(obj=Thing(), path=("a", 1))))["obj"] == "thing!"


def test_json_exception():
    try:
        raise ValueError("bad")
    except ValueError:
        rec = record("failed", level=logging.ERROR, exc_info=sys.exc_info())
    doc = as_json(rec)
    assert doc["level"] == "ERROR"
    assert doc["exc"].endswith("ValueError: bad")


# -- configure ---------------------------------------------------------------------------


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restore_root_logger")
def test_configure_json_writes_one_object_per_line():
    out = io.StringIO()
    log.configure("json", "info", "producer", stream=out)
    logger = logging.getLogger("kcron.test")
    logger.info("first", extra=fields(job="a"))
    logger.debug("hidden")
    logger.warning("second")
    lines = out.getvalue().splitlines()
    docs = [json.loads(line) for line in lines]
    assert [(d["msg"], d["level"], d["instance"]) for d in docs] == [
        ("first", "INFO", "producer"),
        ("second", "WARNING", "producer"),
    ]
    assert docs[0]["job"] == "a"


@pytest.mark.usefixtures("restore_root_logger")
def test_configure_text_and_level():
    out = io.StringIO()
    log.configure("text", "DEBUG", "worker-1", stream=out)
    logging.getLogger("kcron.test").debug("details", extra=fields(run="r-1", n=2))
    (line,) = out.getvalue().splitlines()
    assert line.endswith("DEBUG worker-1 kcron.test [r-1] details n=2")
