"""kcron.message: the run message format, its JSON Schema, and every way decoding fails."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kcron
from kcron import message
from kcron.errors import DecodeError
from kcron.message import MAX_MESSAGE_BYTES, SCHEMA_VERSION, RunMessage, decode, format_time

SCHEMA = json.loads((Path(kcron.__file__).parent / "schema" / "run-message.v1.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(
    SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
)
# Draft 2020-12 default: "format" is an annotation, only "pattern" constrains the id
# (the pattern allows an unhyphenated UUID, the uuid format does not).
PLAIN_VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
TIME_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
RUN_ID = "0f8e2b5c-3a41-4c6e-9b7d-2a1f5e8c9d00"
REQUIRED = [
    "v",
    "id",
    "job",
    "command",
    "shell",
    "scheduled_for",
    "produced_at",
    "attempt",
    "max_attempts",
    "timeout_s",
    "source",
]
OPTIONAL = ["not_before", "history"]
AN_ATTEMPT = {
    "attempt": 1,
    "started_at": "2026-11-28T20:05:00.010Z",
    "finished_at": "2026-11-28T20:05:02.500Z",
    "outcome": "failed",
    "exit_code": 2,
}


def a_message(**changes: Any) -> RunMessage:
    values: dict[str, Any] = {
        "id": RUN_ID,
        "job": "backup",
        "command": "pg_dump db",
        "scheduled_for": datetime(2026, 11, 28, 20, 5, tzinfo=UTC),
        "produced_at": datetime(2026, 11, 28, 20, 5, 0, 12345, tzinfo=UTC),
        "source": "jobs.cron:3",
        "shell": False,
        "attempt": 1,
        "max_attempts": 3,
        "timeout_s": 90.0,
    }
    values.update(changes)
    return RunMessage(**values)


def a_doc(**changes: Any) -> dict[str, Any]:
    doc = a_message().to_dict()
    doc.update(changes)
    return doc


def raw(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def decode_error(data: bytes | None) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        decode(data)
    return info.value


# -- encoding ------------------------------------------------------------------------


def test_encode_decode_round_trip():
    msg = a_message()
    back = decode(msg.encode())
    assert back == RunMessage(
        **{**msg.__dict__, "produced_at": datetime(2026, 11, 28, 20, 5, 0, 12000, tzinfo=UTC)}
    )
    assert back.scheduled_for == msg.scheduled_for
    assert back.v == SCHEMA_VERSION == 1


def test_encoded_message_is_compact_json_with_every_field():
    data = a_message().encode()
    doc = json.loads(data)
    assert sorted(doc) == sorted(REQUIRED)
    assert doc["v"] == 1
    assert doc["id"] == RUN_ID
    assert doc["timeout_s"] == 90.0
    assert b", " not in data and b": " not in data


def test_key_is_the_run_id():
    msg = a_message()
    assert msg.key == RUN_ID.encode("ascii")
    assert decode(msg.encode()).key == msg.key


def test_new_run_ids_are_unique_uuid4():
    ids = {message.new_run_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(uuid.UUID(i).version == 4 and str(uuid.UUID(i)) == i for i in ids)


def test_non_ascii_is_written_as_utf8():
    data = a_message(command="echo café ✓").encode()
    assert "café ✓".encode() in data
    assert decode(data).command == "echo café ✓"


@pytest.mark.parametrize(
    ("moment", "text"),
    [
        (datetime(2026, 11, 28, 20, 5, tzinfo=UTC), "2026-11-28T20:05:00.000Z"),
        (datetime(2026, 1, 31, 23, 59, 59, 999999, tzinfo=UTC), "2026-01-31T23:59:59.999Z"),
        (datetime(2026, 1, 1, 0, 0, 0, 1000, tzinfo=UTC), "2026-01-01T00:00:00.001Z"),
        (datetime(2026, 7, 1, 2, 0, tzinfo=ZoneInfo("Europe/Paris")), "2026-07-01T00:00:00.000Z"),
        (
            datetime(2026, 1, 1, 0, 0, 0, 250000, tzinfo=timezone(timedelta(hours=-5))),
            "2026-01-01T05:00:00.250Z",
        ),
        (datetime(999, 1, 2, 3, 4, 5, tzinfo=UTC), "0999-01-02T03:04:05.000Z"),
    ],
)
def test_time_format_is_rfc3339_utc_with_milliseconds(moment, text):
    assert format_time(moment) == text
    assert TIME_RE.fullmatch(text)


def test_time_fields_in_the_message_end_in_z_with_milliseconds():
    doc = json.loads(a_message().encode())
    assert doc["scheduled_for"] == "2026-11-28T20:05:00.000Z"
    assert doc["produced_at"] == "2026-11-28T20:05:00.012Z"


def test_naive_time_cannot_be_formatted():
    with pytest.raises(ValueError, match="naive"):
        format_time(datetime(2026, 1, 1))


def test_parse_time_accepts_fraction_lengths_one_to_six():
    assert message.parse_time("2026-01-01T00:00:00Z") == datetime(2026, 1, 1, tzinfo=UTC)
    assert message.parse_time("2026-01-01T00:00:00.5Z").microsecond == 500000
    assert message.parse_time("2026-01-01T00:00:00.123456Z").microsecond == 123456


def test_extra_fields_from_a_newer_producer_are_ignored():
    doc = a_doc(priority=5, trace={"id": "x"})
    assert decode(raw(doc)) == decode(a_message().encode())
    assert VALIDATOR.is_valid(doc)


def test_integer_timeout_is_accepted_as_seconds():
    msg = decode(raw(a_doc(timeout_s=30)))
    assert msg.timeout_s == 30.0
    assert isinstance(msg.timeout_s, float)


def test_null_timeout_means_none():
    assert decode(raw(a_doc(timeout_s=None))).timeout_s is None


def test_uppercase_and_unhyphenated_ids_are_normalised():
    assert decode(raw(a_doc(id=RUN_ID.upper()))).id == RUN_ID
    assert decode(raw(a_doc(id=RUN_ID.replace("-", "")))).id == RUN_ID


# -- every DecodeError --------------------------------------------------------------


def test_none_value():
    err = decode_error(None)
    assert err.reason == "empty message (no value)"
    assert err.raw == b""


def test_not_utf8():
    data = b'{"v":1,"job":"caf\xe9"}'
    err = decode_error(data)
    assert err.reason.startswith("not UTF-8")
    assert err.raw == data


def test_bom_is_not_accepted():
    assert decode_error(b"\xef\xbb\xbf" + a_message().encode()).reason.startswith("not valid JSON")


@pytest.mark.parametrize("data", [b"", b"{", b"{'v': 1}", b"v=1", b'{"v":1,}', b"\x00", b"[1,2"])
def test_not_json(data):
    assert decode_error(data).reason.startswith("not valid JSON")


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"[]", "list"),
        (b"[1, 2]", "list"),
        (b'"text"', "str"),
        (b"42", "int"),
        (b"4.2", "float"),
        (b"true", "bool"),
        (b"null", "NoneType"),
    ],
)
def test_json_that_is_not_an_object(data, kind):
    assert decode_error(data).reason == f"expected a JSON object, got {kind}"


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_rejected(constant):
    data = raw(a_doc()).replace(b'"timeout_s": 90.0', f'"timeout_s": {constant}'.encode())
    assert constant.encode() in data
    assert "is not valid JSON" in decode_error(data).reason


def test_number_too_large_for_a_float_is_not_infinity():
    data = raw(a_doc()).replace(b'"timeout_s": 90.0', b'"timeout_s": 1e400')
    assert "timeout_s" in decode_error(data).reason


def test_integer_too_large_for_a_float_is_a_decode_error():
    data = raw(a_doc()).replace(b'"timeout_s": 90.0', b'"timeout_s": 1' + b"0" * 400)
    assert "timeout_s" in decode_error(data).reason


def test_integer_with_too_many_digits_is_a_decode_error():
    data = raw(a_doc()).replace(b'"attempt": 1', b'"attempt": 1' + b"0" * 5000)
    assert decode_error(data).reason.startswith("not valid JSON")


@pytest.mark.parametrize(
    "data",
    [
        b"[" * 100_000,
        b"[" * 60_000,  # under the size limit: the parser's own recursion limit
        b'{"a":' * 12_000 + b"1" + b"}" * 12_000,
        b"[" * 30_000 + b"]" * 30_000,
    ],
)
def test_deeply_nested_json_is_a_decode_error_not_recursion_error(data):
    err = decode_error(data)
    assert err.raw == data


def test_over_the_size_limit():
    doc = a_doc(command="x" * MAX_MESSAGE_BYTES)
    data = raw(doc)
    err = decode_error(data)
    assert err.reason == f"message is {len(data)} bytes, over the {MAX_MESSAGE_BYTES}-byte limit"


def test_just_under_the_size_limit_is_fine():
    base = len(raw(a_doc(command="")))
    data = raw(a_doc(command="x" * (MAX_MESSAGE_BYTES - base)))
    assert len(data) == MAX_MESSAGE_BYTES
    assert len(decode(data).command) == MAX_MESSAGE_BYTES - base


@pytest.mark.parametrize("field", REQUIRED)
def test_missing_field(field):
    doc = a_doc()
    del doc[field]
    reason = decode_error(raw(doc)).reason
    if field == "v":
        assert reason == "missing or non-integer schema version 'v'"
    else:
        assert reason == f"missing field '{field}'"
    assert not VALIDATOR.is_valid(doc)


@pytest.mark.parametrize(
    ("field", "value", "json_type"),
    [
        ("id", 12345, "integer"),
        ("id", None, "null"),
        ("job", ["backup"], "array"),
        ("job", None, "null"),
        ("command", {"argv": ["ls"]}, "object"),
        ("command", None, "null"),
        ("shell", 1, "integer"),
        ("shell", 0, "integer"),
        ("shell", "true", "string"),
        ("shell", None, "null"),
        ("scheduled_for", 1796068800, "integer"),
        ("produced_at", None, "null"),
        ("attempt", True, "boolean"),
        ("attempt", 1.0, "number"),
        ("attempt", "1", "string"),
        ("max_attempts", False, "boolean"),
        ("max_attempts", 3.5, "number"),
        ("timeout_s", True, "boolean"),
        ("timeout_s", "30", "string"),
        ("timeout_s", [30], "array"),
        ("source", None, "null"),
        ("source", 3, "integer"),
    ],
)
def test_wrong_type(field, value, json_type):
    doc = a_doc(**{field: value})
    assert decode_error(raw(doc)).reason == f"field '{field}' has type {json_type}"
    if not (isinstance(value, float) and value.is_integer()):
        # JSON Schema counts 1.0 as an integer; decode is stricter, which is safe.
        assert not VALIDATOR.is_valid(doc)


@pytest.mark.parametrize("version", [True, 1.0, "1", None, [1]])
def test_schema_version_of_the_wrong_type(version):
    assert decode_error(raw(a_doc(v=version))).reason == "missing or non-integer schema version 'v'"


@pytest.mark.parametrize("version", [0, 2, -1, 100])
def test_wrong_schema_version(version):
    reason = decode_error(raw(a_doc(v=version))).reason
    assert reason == f"unsupported schema version {version} (this worker reads 1)"
    assert not VALIDATOR.is_valid(a_doc(v=version))


def test_version_is_checked_before_fields():
    # A v2 message may drop v1 fields; the worker says "wrong version", not "missing field".
    assert "unsupported schema version 2" in decode_error(b'{"v": 2}').reason


@pytest.mark.parametrize(
    "run_id",
    [
        "not-a-uuid",
        "",
        RUN_ID[:-1],
        RUN_ID + "0",
        RUN_ID.replace("0", "g", 1),
        "{" + RUN_ID + "}",
        "urn:uuid:" + RUN_ID,
        " " + RUN_ID.replace("-", "")[:-1],
        "1_" + RUN_ID.replace("-", "")[2:],
    ],
)
def test_bad_uuid(run_id):
    doc = a_doc(id=run_id)
    assert decode_error(raw(doc)).reason.startswith("field 'id': ")
    assert not VALIDATOR.is_valid(doc)


@pytest.mark.parametrize(("attempt", "max_attempts"), [(0, 3), (4, 3), (2, 1), (-1, 3), (1, 0)])
def test_attempt_outside_one_to_max_attempts(attempt, max_attempts):
    reason = decode_error(raw(a_doc(attempt=attempt, max_attempts=max_attempts))).reason
    assert reason == f"attempt {attempt} outside 1..max_attempts ({max_attempts})"


def test_last_attempt_is_fine():
    assert decode(raw(a_doc(attempt=3, max_attempts=3))).attempt == 3


@pytest.mark.parametrize("timeout", [0, 0.0, -1, -0.5])
def test_timeout_must_be_positive(timeout):
    reason = decode_error(raw(a_doc(timeout_s=timeout))).reason
    assert reason.startswith("field 'timeout_s' must be a positive number or null")


@pytest.mark.parametrize(("field", "value"), [("job", ""), ("command", ""), ("command", "  \t\n")])
def test_empty_job_or_command(field, value):
    doc = a_doc(**{field: value})
    assert decode_error(raw(doc)).reason == "fields 'job' and 'command' must not be empty"
    assert not VALIDATOR.is_valid(doc)


def test_nul_in_command():
    assert decode_error(raw(a_doc(command="echo a\0b"))).reason == (
        "field 'command' contains a NUL character"
    )


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-28 20:05:00.000Z",
        "2026-11-28T20:05:00.000",
        "2026-11-28T20:05:00.000+00:00",
        "2026-11-28T20:05:00.000+01:00",
        "2026-11-28t20:05:00.000z",
        "2026-11-28T20:05Z",
        "2026-11-28T20:05:00.Z",
        "2026-11-28T20:05:00.1234567Z",
        "2026-11-28",
        "20:05:00.000Z",
        "",
        "1796068800",
        "2026-11-28T20:05:00.000Z\n",
        " 2026-11-28T20:05:00.000Z",
        "26-11-28T20:05:00.000Z",
        "\uff12\uff10\uff12\uff16-11-28T20:05:00.000Z",  # full-width digits
    ],
)
def test_bad_time_format(text):
    for field in ("scheduled_for", "produced_at"):
        doc = a_doc(**{field: text})
        reason = decode_error(raw(doc)).reason
        assert reason.startswith("time field: ")
        # Python's re (used by jsonschema) lets "$" match before a final newline;
        # full-width digits are \d to Python but not [0-9]: decode rejects both anyway.
        if "\uff12" not in text and not text.endswith("\n"):
            assert not VALIDATOR.is_valid(doc)


@pytest.mark.parametrize(
    "text",
    [
        "2026-13-01T00:00:00.000Z",
        "2026-02-30T00:00:00.000Z",
        "2027-02-29T00:00:00.000Z",
        "2026-01-01T24:00:00.000Z",
        "2026-01-01T23:60:00.000Z",
        "2026-01-01T23:59:60.000Z",
        "0000-01-01T00:00:00.000Z",
    ],
)
def test_impossible_times(text):
    assert decode_error(raw(a_doc(scheduled_for=text))).reason.startswith("time field: ")


# -- DecodeError ---------------------------------------------------------------------


def test_decode_error_keeps_raw_bytes_and_a_short_excerpt():
    data = b'{"v": 1, "id": "' + b"x" * 10_000 + b'"}'
    err = decode_error(data)
    assert err.raw == data
    excerpt = err.excerpt()
    assert len(excerpt) <= 121
    assert excerpt.endswith("…")
    assert excerpt.startswith('{"v": 1, "id": "xxx')
    assert len(err.excerpt(20)) == 21


def test_excerpt_of_short_message_is_whole():
    err = decode_error(b"[1]")
    assert err.excerpt() == "[1]"


def test_excerpt_shows_invalid_bytes_escaped():
    err = decode_error(b"\xff\xfe junk")
    assert err.excerpt() == "\\xff\\xfe junk"


def test_decode_error_is_a_kcron_error_with_the_reason_as_message():
    err = decode_error(b"[]")
    assert isinstance(err, kcron.errors.KcronError)
    assert str(err) == err.reason


# -- JSON Schema ---------------------------------------------------------------------


def test_schema_is_a_valid_json_schema():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


@pytest.mark.parametrize(
    "msg",
    [
        a_message(),
        a_message(timeout_s=None, shell=True, source=""),
        a_message(command="echo 'ünïcødé' | tr a b", attempt=3),
        a_message(scheduled_for=datetime(2028, 2, 29, 23, 59, 59, 999999, tzinfo=UTC)),
    ],
)
def test_encoded_messages_match_the_schema(msg):
    VALIDATOR.validate(json.loads(msg.encode()))


@pytest.mark.parametrize(
    "doc",
    [
        a_doc(v=2),
        a_doc(id="{" + RUN_ID + "}"),
        a_doc(id="not-a-uuid"),
        a_doc(job=""),
        a_doc(command=" "),
        a_doc(shell="yes"),
        a_doc(attempt=0),
        a_doc(max_attempts=0, attempt=0),
        a_doc(timeout_s=0),
        a_doc(timeout_s=-5),
        a_doc(scheduled_for="2026-11-28T20:05:00+01:00"),
        a_doc(produced_at="yesterday"),
        a_doc(source=None),
        {k: v for k, v in a_doc().items() if k != "command"},
    ],
)
def test_invalid_documents_are_rejected_by_schema_and_decode(doc):
    assert not VALIDATOR.is_valid(doc)
    with pytest.raises(DecodeError):
        decode(raw(doc))


# -- properties ----------------------------------------------------------------------

_TEXT = st.text(st.characters(codec="utf-8"), max_size=60)
_COMMAND = _TEXT.filter(lambda s: s.strip() and "\0" not in s)
_MS_DATETIMES = st.datetimes(
    min_value=datetime(1, 1, 1),
    max_value=datetime(9999, 12, 31, 23, 59, 59),
    timezones=st.just(UTC),
).map(lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000))
_ZONED_DATETIMES = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.timezones()
)


@st.composite
def run_messages(draw: st.DrawFn) -> RunMessage:
    max_attempts = draw(st.integers(1, 100))
    return RunMessage(
        id=str(draw(st.uuids())),
        job=draw(_TEXT.filter(bool)),
        command=draw(_COMMAND),
        scheduled_for=draw(_MS_DATETIMES),
        produced_at=draw(_MS_DATETIMES),
        source=draw(_TEXT),
        shell=draw(st.booleans()),
        attempt=draw(st.integers(1, max_attempts)),
        max_attempts=max_attempts,
        timeout_s=draw(st.none() | st.floats(min_value=1e-6, max_value=1e12)),
        not_before=draw(st.none() | _MS_DATETIMES),
        history=tuple(draw(st.lists(_attempts(), max_size=5))),
    )


@st.composite
def _attempts(draw: st.DrawFn) -> message.Attempt:
    return message.Attempt(
        attempt=draw(st.integers(1, 100)),
        started_at=draw(_MS_DATETIMES),
        finished_at=draw(_MS_DATETIMES),
        outcome=draw(st.sampled_from(["failed", "timed_out", "not_found", "succeeded"])),
        exit_code=draw(st.none() | st.integers(-64, 255)),
    )


@settings(max_examples=300, deadline=None)
@given(run_messages())
def test_round_trip_any_message(msg):
    data = msg.encode()
    assert decode(data) == msg
    doc = json.loads(data)
    VALIDATOR.validate(doc)
    assert TIME_RE.fullmatch(doc["scheduled_for"])
    assert TIME_RE.fullmatch(doc["produced_at"])
    assert msg.key == doc["id"].encode()


@settings(max_examples=200, deadline=None)
@given(_ZONED_DATETIMES)
def test_any_aware_time_survives_to_the_millisecond(moment):
    text = format_time(moment)
    assert TIME_RE.fullmatch(text)
    back = message.parse_time(text)
    assert timedelta(0) <= moment - back < timedelta(milliseconds=1)


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
_INTERESTING = st.sampled_from(
    [
        0,
        1,
        2,
        -1,
        True,
        False,
        None,
        "",
        " ",
        "\0",
        1.5,
        0.0,
        -0.0,
        10**400,
        2**63,
        "x" * 100,
        RUN_ID,
        RUN_ID.upper(),
        RUN_ID.replace("-", ""),
        "2026-11-28T20:05:00.000Z",
        "2026-02-30T00:00:00Z",
        "9999-12-31T23:59:59.999999Z",
        "0001-01-01T00:00:00Z",
        [],
        {},
    ]
)


def _decode_or_decode_error(data: bytes | None) -> RunMessage | None:
    try:
        return decode(data)
    except DecodeError as exc:
        assert exc.raw == (data or b"")
        return None


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_decode_or_decode_error(data):
    _decode_or_decode_error(data)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(_JSON)
def test_arbitrary_json_only_decode_or_decode_error(value):
    _decode_or_decode_error(json.dumps(value).encode())


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.dictionaries(st.sampled_from(REQUIRED + OPTIONAL), _INTERESTING | _JSON, max_size=4),
    st.sets(st.sampled_from(REQUIRED), max_size=2),
)
def test_mutated_messages_decode_only_if_the_schema_agrees(changes, removed):
    doc = a_doc(**changes)
    for key in removed:
        doc.pop(key, None)
    msg = _decode_or_decode_error(json.dumps(doc).encode())
    if msg is not None:
        # decode is never more lenient than the published schema
        assert PLAIN_VALIDATOR.is_valid(doc), doc
        assert 1 <= msg.attempt <= msg.max_attempts


# -- optional retry fields: not_before and history ------------------------------------


def test_a_first_attempt_encodes_without_the_optional_fields():
    doc = json.loads(a_message().encode())
    assert not set(OPTIONAL) & set(doc)


def test_messages_without_the_optional_fields_decode_to_their_defaults():
    msg = decode(raw(a_doc()))
    assert msg.not_before is None
    assert msg.history == ()
    assert msg.due == msg.scheduled_for


def test_null_optional_fields_mean_their_defaults():
    msg = decode(raw(a_doc(not_before=None, history=None)))
    assert (msg.not_before, msg.history) == (None, ())
    assert VALIDATOR.is_valid(a_doc(not_before=None))


def test_retry_fields_round_trip():
    attempt = message.Attempt(
        1,
        datetime(2026, 11, 28, 20, 5, 0, 10000, tzinfo=UTC),
        datetime(2026, 11, 28, 20, 5, 2, 500000, tzinfo=UTC),
        "failed",
        2,
    )
    msg = a_message(
        attempt=2,
        not_before=datetime(2026, 11, 28, 20, 5, 12, tzinfo=UTC),
        history=(attempt,),
    )
    doc = json.loads(msg.encode())
    assert doc["not_before"] == "2026-11-28T20:05:12.000Z"
    assert doc["history"] == [AN_ATTEMPT]
    VALIDATOR.validate(doc)
    assert decode(msg.encode()) == RunMessage(
        **{**msg.__dict__, "produced_at": datetime(2026, 11, 28, 20, 5, 0, 12000, tzinfo=UTC)}
    )


def test_due_is_the_later_of_schedule_and_not_before():
    later = datetime(2026, 11, 28, 20, 6, tzinfo=UTC)
    earlier = datetime(2026, 11, 28, 20, 4, tzinfo=UTC)
    assert a_message(not_before=later).due == later
    assert a_message(not_before=earlier).due == a_message().scheduled_for


def test_history_entry_with_a_null_exit_code():
    entry = {**AN_ATTEMPT, "outcome": "not_found", "exit_code": None}
    assert decode(raw(a_doc(history=[entry]))).history[0].exit_code is None


def test_history_entry_with_extra_keys_is_fine():
    assert len(decode(raw(a_doc(history=[{**AN_ATTEMPT, "host": "w1"}]))).history) == 1


def test_history_at_the_cap_is_fine_one_more_is_not():
    assert len(decode(raw(a_doc(history=[AN_ATTEMPT] * message.MAX_HISTORY))).history) == 100
    doc = a_doc(history=[AN_ATTEMPT] * (message.MAX_HISTORY + 1))
    assert decode_error(raw(doc)).reason == "field 'history' has 101 entries, over 100"
    assert not VALIDATOR.is_valid(doc)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"not_before": 5}, "field 'not_before' has type integer"),
        ({"not_before": "soon"}, "time field: 'soon' is not an RFC 3339 UTC time"),
        ({"not_before": "2026-11-28T20:05:00+01:00"}, "time field: "),
        ({"history": {}}, "field 'history' has type object"),
        ({"history": "[]"}, "field 'history' has type string"),
        ({"history": [1]}, "history[0] has type integer"),
        ({"history": [{**AN_ATTEMPT, "attempt": 0}]}, "history[0]: attempt 0 is below 1"),
        ({"history": [{**AN_ATTEMPT, "attempt": True}]}, "history[0]: field 'attempt' has type"),
        ({"history": [{**AN_ATTEMPT, "attempt": "1"}]}, "history[0]: field 'attempt' has type"),
        ({"history": [{**AN_ATTEMPT, "exit_code": 1.5}]}, "history[0]: field 'exit_code'"),
        ({"history": [{**AN_ATTEMPT, "exit_code": False}]}, "history[0]: field 'exit_code'"),
        ({"history": [{**AN_ATTEMPT, "outcome": "Failed!"}]}, "history[0]: 'Failed!' is not"),
        ({"history": [{**AN_ATTEMPT, "outcome": ""}]}, "history[0]: '' is not an outcome"),
        ({"history": [{**AN_ATTEMPT, "started_at": "now"}]}, "history[0]: time field:"),
        ({"history": [AN_ATTEMPT, {"attempt": 2}]}, "history[1]: missing field 'started_at'"),
    ],
)
def test_bad_optional_fields_are_decode_errors_and_fail_the_schema(changes, reason):
    doc = a_doc(**changes)
    assert decode_error(raw(doc)).reason.startswith(reason)
    assert not VALIDATOR.is_valid(doc)
