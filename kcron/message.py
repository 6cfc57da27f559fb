"""The run message: what the producer writes and a worker executes.

Versioned JSON (schema in ``kcron/schema/run-message.v1.json``). Decoding is
strict about what it needs, so a worker never acts on a half-understood
message, and lenient about extra keys, so a newer producer can add optional
fields without breaking older workers. Anything wrong becomes one
``DecodeError`` that keeps the raw bytes.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from kcron.errors import DecodeError

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

    @property
    def key(self) -> bytes:
        """Kafka key: the run id, so runs spread over partitions by a hash of a fresh UUID."""
        return self.id.encode("ascii")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["scheduled_for"] = format_time(self.scheduled_for)
        data["produced_at"] = format_time(self.produced_at)
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
        data = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise DecodeError(f"not UTF-8: {exc.reason} at byte {exc.start}", raw) from None
    except (ValueError, RecursionError) as exc:
        raise DecodeError(f"not valid JSON: {str(exc)[:100]}", raw) from None
    if not isinstance(data, dict):
        raise DecodeError(f"expected a JSON object, got {type(data).__name__}", raw)

    version = data.get("v")
    if type(version) is not int:
        raise DecodeError("missing or non-integer schema version 'v'", raw)
    if version != SCHEMA_VERSION:
        raise DecodeError(
            f"unsupported schema version {version} (this worker reads {SCHEMA_VERSION})", raw
        )
    for key, expected in _REQUIRED.items():
        if key not in data:
            raise DecodeError(f"missing field '{key}'", raw)
        value = data[key]
        # bool is an int in Python; a JSON true must not pass as attempt=1.
        if not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
            raise DecodeError(f"field '{key}' has type {_json_type(value)}", raw)

    try:
        return _validated(data)
    except ValueError as exc:
        raise DecodeError(str(exc), raw) from None


def _validated(data: dict[str, Any]) -> RunMessage:
    try:
        if not _UUID_RE.fullmatch(data["id"]):
            raise ValueError
        run_id = str(uuid.UUID(data["id"]))
    except ValueError:
        raise ValueError(f"field 'id': '{data['id'][:40]}' is not a UUID") from None
    if not data["job"] or not data["command"].strip():
        raise ValueError("fields 'job' and 'command' must not be empty")
    if "\0" in data["command"]:
        raise ValueError("field 'command' contains a NUL character")
    attempt, max_attempts = data["attempt"], data["max_attempts"]
    if not 1 <= attempt <= max_attempts:
        raise ValueError(f"attempt {attempt} outside 1..max_attempts ({max_attempts})")
    timeout = data["timeout_s"]
    if timeout is not None:
        try:
            timeout = float(timeout)
        except OverflowError:  # an integer too large for a float
            timeout = math.inf
        if not (math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"field 'timeout_s' must be a positive number or null, got {timeout}")
    try:
        scheduled_for = parse_time(data["scheduled_for"])
        produced_at = parse_time(data["produced_at"])
    except ValueError as exc:
        raise ValueError(f"time field: {exc}") from None
    return RunMessage(
        id=run_id,
        job=data["job"],
        command=data["command"],
        scheduled_for=scheduled_for,
        produced_at=produced_at,
        source=data["source"],
        shell=data["shell"],
        attempt=attempt,
        max_attempts=max_attempts,
        timeout_s=timeout,
    )


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
