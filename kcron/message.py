"""The run message: what the producer writes and a worker executes.

Versioned JSON (schema in ``kcron/schema/run-message.v1.json``). Decoding is
strict about what it needs, so a worker never acts on a half-understood
message, and lenient about extra keys, so a newer producer can add optional
fields without breaking older workers. Anything wrong becomes one
``DecodeError`` that keeps the raw bytes.

Two optional fields carry a run's retries: ``not_before`` (do not start
earlier) and ``history`` (one entry per finished attempt). Absent means the
default (no constraint, no history), so messages written before they existed
still decode, and encoding leaves them out while they hold the default.

The optional ``queue`` names the topic the producer sent the run to, so logs
and dead letters can say where a run belongs. Absent (a message from an older
producer, or a retry written by an older worker) means "the topic it was read
from" (docs/message-format.md).

The optional ``trigger`` says what made the run: ``manual`` for ``kcron
trigger``; absent means its schedule (or a backfill).

The optional ``overlap`` carries the job's overlap= policy. Absent means
``allow``; ``forbid`` also makes the job name the Kafka key, so all runs of
the job share one partition and so one worker (docs/operations.md#overlap).
"""

from __future__ import annotations

import json
import math
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kcron.errors import DecodeError
from kcron.topics import is_topic_name

SCHEMA_VERSION = 1
MAX_MESSAGE_BYTES = 64 * 1024
_RFC3339_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z")
# The schema's pattern: uuid.UUID alone also takes braces, "urn:uuid:", '_' and spaces.
_UUID_RE = re.compile(
    r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"
)
_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "v": int,
    "id": str,
    "job": str,
    "command": str,
    "shell": bool,
    "scheduled_for": str,
    "produced_at": str,
    "attempt": int,
    "max_attempts": int,
    "timeout_s": (int, float, type(None)),
    "source": str,
}
# A run requeued from the dead-letter topic keeps its history, so the list
# could grow without end; the newest entries are kept.
MAX_HISTORY = 100
_OUTCOME_RE = re.compile(r"[a-z][a-z_]{0,31}")
OVERLAP_ALLOW = "allow"
OVERLAP_FORBID = "forbid"
# A worker refuses a policy it does not know rather than run the job as "allow":
# a newer producer's stricter policy must not be loosened in silence.
OVERLAP_POLICIES = (OVERLAP_ALLOW, OVERLAP_FORBID)
_ATTEMPT_FIELDS: dict[str, type | tuple[type, ...]] = {
    "attempt": int,
    "started_at": str,
    "finished_at": str,
    "outcome": str,
    "exit_code": (int, type(None)),
}


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with milliseconds, e.g. ``2026-11-28T20:05:00.000Z``."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime")
    # isoformat pads the year to 4 digits (strftime's %Y does not on glibc).
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    if not _RFC3339_MS.fullmatch(text):
        raise ValueError(f"'{text[:40]}' is not an RFC 3339 UTC time like 2026-01-31T23:59:00.000Z")
    return datetime.fromisoformat(text[:-1]).replace(tzinfo=UTC)


@dataclass(frozen=True)
class Attempt:
    """One finished try of a run, as carried in ``history``."""

    attempt: int
    started_at: datetime
    finished_at: datetime
    outcome: str  # an executor Outcome value, e.g. "failed", "timed_out"
    exit_code: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "started_at": format_time(self.started_at),
            "finished_at": format_time(self.finished_at),
            "outcome": self.outcome,
            "exit_code": self.exit_code,
        }


@dataclass(frozen=True)
class RunMessage:
    id: str
    job: str
    command: str
    scheduled_for: datetime
    produced_at: datetime
    source: str = ""
    shell: bool = False
    attempt: int = 1
    max_attempts: int = 1
    timeout_s: float | None = None
    v: int = SCHEMA_VERSION
    not_before: datetime | None = None  # a retry waits for its backoff until then
    history: tuple[Attempt, ...] = ()  # earlier attempts, oldest first
    queue: str | None = None  # the topic the producer sent it to; None: the one it is read from
    trigger: str | None = None  # "manual" for kcron trigger; None: scheduled
    overlap: str = OVERLAP_ALLOW  # the job's overlap= policy, one of OVERLAP_POLICIES

    @property
    def forbids_overlap(self) -> bool:
        return self.overlap == OVERLAP_FORBID

    @property
    def key(self) -> bytes:
        """Kafka key: the run id, so runs spread over partitions by a hash of a fresh UUID.

        An overlap=forbid job's runs are keyed by its name instead: they all land
        on one partition (retries on the same one of the retry topic), so one
        worker sees them all and can tell that one is still running.
        """
        if self.forbids_overlap:
            return self.job.encode("utf-8", "surrogatepass")
        return self.id.encode("ascii")

    @property
    def due(self) -> datetime:
        """When this attempt should start: its schedule, or its backoff if later."""
        if self.not_before is not None and self.not_before > self.scheduled_for:
            return self.not_before
        return self.scheduled_for

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "job": self.job,
            "command": self.command,
            "scheduled_for": format_time(self.scheduled_for),
            "produced_at": format_time(self.produced_at),
            "source": self.source,
            "shell": self.shell,
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
            "timeout_s": self.timeout_s,
            "v": self.v,
        }
        # Optional fields only when set: a first attempt encodes as it always did.
        if self.not_before is not None:
            data["not_before"] = format_time(self.not_before)
        if self.history:
            data["history"] = [a.to_dict() for a in self.history]
        if self.queue is not None:
            data["queue"] = self.queue
        if self.trigger is not None:
            data["trigger"] = self.trigger
        if self.overlap != OVERLAP_ALLOW:
            data["overlap"] = self.overlap
        return data

    def encode(self) -> bytes:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":")).encode()


def new_run_id() -> str:
    return str(uuid.uuid4())


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def decode(raw: bytes | None) -> RunMessage:
    """Bytes from Kafka to a RunMessage, or DecodeError (never anything else)."""
    if raw is None:
        raise DecodeError("empty message (no value)", b"")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise DecodeError(
            f"message is {len(raw)} bytes, over the {MAX_MESSAGE_BYTES}-byte limit", raw
        )
    try:
        data = _json_object(raw)
        _check_version(data)
        _check_types(data, _REQUIRED, "")
        return _validated(data)
    except ValueError as exc:
        raise DecodeError(str(exc), raw) from None


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"not valid JSON: {str(exc)[:100]}") from None
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    return data


def _check_version(data: dict[str, Any]) -> None:
    version = data.get("v")
    if type(version) is not int:
        raise ValueError("missing or non-integer schema version 'v'")
    if version != SCHEMA_VERSION:
        raise ValueError(
            f"unsupported schema version {version} (this worker reads {SCHEMA_VERSION})"
        )


def _check_types(data: dict[str, Any], fields: dict[str, Any], where: str) -> None:
    """Every field present with its JSON type; ``where`` prefixes the message."""
    for key, expected in fields.items():
        if key not in data:
            raise ValueError(f"{where}missing field '{key}'")
        value = data[key]
        # bool is an int in Python; a JSON true must not pass as attempt=1.
        if not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
            raise ValueError(f"{where}field '{key}' has type {_json_type(value)}")


def _validated(data: dict[str, Any]) -> RunMessage:
    if not data["job"] or not data["command"].strip():
        raise ValueError("fields 'job' and 'command' must not be empty")
    if "\0" in data["command"]:
        raise ValueError("field 'command' contains a NUL character")
    attempt, max_attempts = data["attempt"], data["max_attempts"]
    if not 1 <= attempt <= max_attempts:
        raise ValueError(f"attempt {attempt} outside 1..max_attempts ({max_attempts})")
    return RunMessage(
        id=_run_id(data["id"]),
        job=data["job"],
        command=data["command"],
        scheduled_for=_time(data["scheduled_for"], "time field: "),
        produced_at=_time(data["produced_at"], "time field: "),
        source=data["source"],
        shell=data["shell"],
        attempt=attempt,
        max_attempts=max_attempts,
        timeout_s=_timeout(data["timeout_s"]),
        not_before=_not_before(data.get("not_before")),
        history=_history(data.get("history")),
        queue=_queue(data.get("queue")),
        trigger=_trigger(data.get("trigger")),
        overlap=_overlap(data.get("overlap")),
    )


def _run_id(text: str) -> str:
    try:
        if not _UUID_RE.fullmatch(text):
            raise ValueError
        return str(uuid.UUID(text))
    except ValueError:
        raise ValueError(f"field 'id': '{text[:40]}' is not a UUID") from None


def _timeout(value: Any) -> float | None:
    if value is None:
        return None
    try:
        timeout = float(value)
    except OverflowError:  # an integer too large for a float
        timeout = math.inf
    if not (math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"field 'timeout_s' must be a positive number or null, got {timeout}")
    return timeout


def _time(text: str, where: str) -> datetime:
    try:
        return parse_time(text)
    except ValueError as exc:
        raise ValueError(f"{where}{exc}") from None


def _not_before(value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"field 'not_before' has type {_json_type(value)}")
    return _time(value, "time field: ")


def _queue(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"field 'queue' has type {_json_type(value)}")
    if not is_topic_name(value):
        raise ValueError(f"field 'queue': '{value[:40]}' is not a Kafka topic name")
    return value


def _trigger(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"field 'trigger' has type {_json_type(value)}")
    if not _OUTCOME_RE.fullmatch(value):
        raise ValueError(f"field 'trigger': '{value[:40]}' is not a trigger name")
    return value


def _overlap(value: Any) -> str:
    if value is None:
        return OVERLAP_ALLOW
    if not isinstance(value, str):
        raise ValueError(f"field 'overlap' has type {_json_type(value)}")
    if value not in OVERLAP_POLICIES:
        known = " or ".join(OVERLAP_POLICIES)
        raise ValueError(f"field 'overlap': '{value[:40]}' is not a known policy ({known})")
    return value


def _history(value: Any) -> tuple[Attempt, ...]:
    """The optional ``history`` list, checked as strictly as the required fields."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValueError(f"field 'history' has type {_json_type(value)}")
    if len(value) > MAX_HISTORY:
        raise ValueError(f"field 'history' has {len(value)} entries, over {MAX_HISTORY}")
    return tuple(_attempt(item, f"history[{index}]") for index, item in enumerate(value))


def _attempt(item: Any, where: str) -> Attempt:
    if not isinstance(item, dict):
        raise ValueError(f"{where} has type {_json_type(item)}")
    for key, expected in _ATTEMPT_FIELDS.items():
        if key not in item:
            raise ValueError(f"{where}: missing field '{key}'")
        if not isinstance(item[key], expected) or isinstance(item[key], bool):
            raise ValueError(f"{where}: field '{key}' has type {_json_type(item[key])}")
    if item["attempt"] < 1:
        raise ValueError(f"{where}: attempt {item['attempt']} is below 1")
    if not _OUTCOME_RE.fullmatch(item["outcome"]):
        raise ValueError(f"{where}: '{item['outcome'][:40]}' is not an outcome name")
    started_at = _time(item["started_at"], f"{where}: time field: ")
    finished_at = _time(item["finished_at"], f"{where}: time field: ")
    return Attempt(item["attempt"], started_at, finished_at, item["outcome"], item["exit_code"])


def _json_type(value: object) -> str:
    names = {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)
