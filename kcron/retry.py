"""What happens to a run after it ran: done, retried later, or dead-lettered. Pure.

Which failures retry, and why:

- ``failed`` (non-zero exit, death by a signal) and ``timed_out`` retry while
  attempts are left: the cause is often outside the job (a database down, a
  full disk, a slow network) and may be gone a little later.
- ``not_found``, ``not_executable`` and ``invalid`` (the command line cannot
  be parsed) go to the dead-letter topic at once: the same message on the
  same kind of worker fails the same way every time, so retrying only delays
  the alert. So does a message that cannot be decoded.
- ``skipped`` (an overlap=forbid job's earlier run was still running) is
  committed like a success: the run was not wanted, and retrying it later
  would start exactly the overlap the policy forbids.
- ``cancelled`` (the worker shut down and killed the job after the grace) is
  neither: the run did not get its chance, so its offset stays uncommitted and
  Kafka delivers it again, to this worker after a restart or to another one.

Backoff is exponential with "equal jitter": ``d = min(cap, base * 2**(n-1))``
after the n-th attempt failed, and the next one waits ``d/2 + uniform(0, d/2)``.
Half the delay is guaranteed, so the gaps grow; the other half is random, so
runs that failed together (a shared dependency went down) do not all come back
in the same instant.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from kcron.errors import DecodeError
from kcron.executor import ExecResult, Outcome
from kcron.message import (
    MAX_HISTORY,
    MAX_MESSAGE_BYTES,
    Attempt,
    RunMessage,
    decode,
    format_time,
)

DEAD_LETTER_VERSION = 1
PERMANENT = frozenset({Outcome.NOT_FOUND, Outcome.NOT_EXECUTABLE, Outcome.INVALID})
RETRYABLE = frozenset({Outcome.FAILED, Outcome.TIMED_OUT})
# An undecodable message is kept whole up to this size (base64 grows it by a
# third); beyond, only this much of it, so the dead letter itself stays under
# the broker's default 1 MB message limit and can always be written.
MAX_RAW_KEPT = 512 * 1024
# 2**60 times any sane base is already far beyond any cap; a bigger exponent
# would only risk an OverflowError for absurd attempt numbers.
_MAX_EXPONENT = 60


def retry_topic(topic: str) -> str:
    """Where failed runs wait for their next attempt."""
    return f"{topic}.retry"


def dlq_topic(topic: str) -> str:
    """Where runs end that will not be tried again."""
    return f"{topic}.dlq"


def backoff_delay(attempt: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Seconds to wait after attempt ``attempt`` (1-based) failed: equal jitter."""
    exponent = min(max(attempt, 1) - 1, _MAX_EXPONENT)
    ceiling = min(cap_s, base_s * float(2**exponent))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


class Verdict(enum.StrEnum):
    SUCCEEDED = "succeeded"  # commit
    RETRY = "retry"  # publish the next attempt to the retry topic, then commit
    DEAD = "dead"  # publish a dead letter, then commit


class DeadKind(enum.StrEnum):
    EXHAUSTED = "exhausted"  # a retryable failure on the last attempt
    PERMANENT = "permanent"  # a failure that retrying cannot fix
    UNDECODABLE = "undecodable"  # not a valid run message at all
    REJECTED = "rejected"  # refused unrun: not signed by a known key, or not allowed


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    kind: DeadKind | None = None  # for DEAD
    reason: str = ""  # for DEAD: one readable line
    delay_s: float = 0.0  # for RETRY
    not_before: datetime | None = None  # for RETRY


def decide(
    run: RunMessage,
    result: ExecResult,
    finished_at: datetime,
    base_s: float,
    cap_s: float,
    rng: random.Random,
) -> Decision:
    """The fate of one attempt that ran to its end.

    A cancelled run has no fate to decide: the worker leaves its offset
    uncommitted before asking, so Kafka delivers it again.
    """
    if result.outcome is Outcome.CANCELLED:
        raise ValueError("a cancelled run is redelivered, not decided")
    if result.outcome in (Outcome.SUCCEEDED, Outcome.SKIPPED):
        return Decision(Verdict.SUCCEEDED)  # commit, nothing more
    what = result.error or result.outcome.value
    if result.outcome in PERMANENT:
        return Decision(
            Verdict.DEAD, DeadKind.PERMANENT, f"permanent failure ({result.outcome}): {what}"
        )
    if result.outcome in RETRYABLE and run.attempt < run.max_attempts:
        delay = backoff_delay(run.attempt, base_s, cap_s, rng)
        return Decision(
            Verdict.RETRY, delay_s=delay, not_before=finished_at + timedelta(seconds=delay)
        )
    return Decision(
        Verdict.DEAD,
        DeadKind.EXHAUSTED,
        f"attempts exhausted ({run.attempt} of {run.max_attempts}), last: {what}",
    )


def attempt_of(
    run: RunMessage, result: ExecResult, started_at: datetime, finished_at: datetime
) -> Attempt:
    return Attempt(run.attempt, started_at, finished_at, result.outcome.value, result.exit_code)


def with_attempt(history: Sequence[Attempt], attempt: Attempt) -> tuple[Attempt, ...]:
    """``history`` plus ``attempt``, keeping the newest MAX_HISTORY entries."""
    return (*history, attempt)[-MAX_HISTORY:]


def next_attempt(
    run: RunMessage, attempt: Attempt, not_before: datetime, now: datetime
) -> RunMessage:
    """The message for the run's next try: same id and schedule, one more attempt."""
    history = with_attempt(run.history, attempt)
    return _fitted(
        dataclasses.replace(
            run, attempt=run.attempt + 1, not_before=not_before, history=history, produced_at=now
        )
    )


def requeued(run: RunMessage, now: datetime) -> RunMessage:
    """A dead run sent back to the main topic: a fresh first attempt, history kept."""
    return _fitted(dataclasses.replace(run, attempt=1, not_before=None, produced_at=now))


def _fitted(msg: RunMessage) -> RunMessage:
    """``msg`` with its oldest history dropped until it fits in a message.

    The original fitted; a long history must not push the next attempt over
    the limit, or it would be dead-lettered as undecodable.
    """
    while len(msg.encode()) > MAX_MESSAGE_BYTES and msg.history:
        msg = dataclasses.replace(msg, history=msg.history[1:])
    return msg


@dataclass(frozen=True)
class Source:
    """Where the message came from."""

    topic: str
    partition: int
    offset: int


def dead_letter(
    *,
    kind: DeadKind,
    reason: str,
    dead_at: datetime,
    source: Source,
    run: RunMessage | None = None,
    raw: bytes | None = None,
    key: bytes | None = None,
    result: ExecResult | None = None,
    attempt: Attempt | None = None,
) -> dict[str, Any]:
    """The dead-letter record (JSON object) for a run or an undecodable message.

    ``history`` holds every attempt, the failing one last, so the record alone
    shows how often and when the run was tried.
    """
    history = list(run.history) if run is not None else []
    if attempt is not None:
        history = list(with_attempt(history, attempt))
    record: dict[str, Any] = {
        "v": DEAD_LETTER_VERSION,
        "id": run.id if run is not None else _key_text(key),
        "kind": kind.value,
        "reason": reason,
        "dead_at": format_time(dead_at),
        "job": run.job if run is not None else None,
        "attempts": len(history),
        "outcome": result.outcome.value if result is not None else None,
        "exit_code": result.exit_code if result is not None else None,
        "error": result.error if result is not None else None,
        "output_tail": result.tail.decode("utf-8", errors="replace") if result else "",
        "history": [a.to_dict() for a in history],
        "source": dataclasses.asdict(source),
        "run": run.to_dict() if run is not None else None,
        "raw_b64": None,
        "raw_bytes": None,
        "raw_truncated": False,
    }
    if run is None:
        data = raw or b""
        record["raw_b64"] = base64.b64encode(data[:MAX_RAW_KEPT]).decode("ascii")
        record["raw_bytes"] = len(data)
        record["raw_truncated"] = len(data) > MAX_RAW_KEPT
    return record


def encode_dead_letter(record: dict[str, Any]) -> bytes:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()


def _key_text(key: bytes | None) -> str | None:
    """An undecodable message's Kafka key, as its id if it is short printable text."""
    if not key or len(key) > 200:
        return None
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if text.isprintable() else None


@dataclass(frozen=True)
class DeadLetter:
    """A dead-letter record read back (for ``kcron dlq``), tolerant of odd records."""

    record: dict[str, Any]
    source: Source | None = None  # where the dead letter itself sits in the DLQ topic

    @property
    def id(self) -> str | None:
        value = self.record.get("id")
        return value if isinstance(value, str) else None

    @property
    def job(self) -> str | None:
        value = self.record.get("job")
        return value if isinstance(value, str) else None

    @property
    def dead_at(self) -> str:
        return str(self.record.get("dead_at") or "")

    @property
    def kind(self) -> str:
        return str(self.record.get("kind") or "")

    @property
    def reason(self) -> str:
        return str(self.record.get("reason") or "")

    @property
    def attempts(self) -> int | None:
        value = self.record.get("attempts")
        return value if type(value) is int else None

    @property
    def exit_code(self) -> int | None:
        value = self.record.get("exit_code")
        return value if type(value) is int else None

    @property
    def last_line(self) -> str:
        """The last non-blank line of the output tail: usually the error message."""
        tail = self.record.get("output_tail")
        if not isinstance(tail, str):
            return ""
        lines = [line.strip() for line in tail.splitlines() if line.strip()]
        return lines[-1] if lines else ""

    def run(self) -> RunMessage | None:
        """The dead run, or None for an undecodable message (or a damaged record).

        Its history is the record's, which also holds the final attempt (the
        message itself only knew the attempts before it).
        """
        doc = self.record.get("run")
        if not isinstance(doc, dict):
            return None
        history = self.record.get("history")
        candidates = [doc]
        if isinstance(history, list) and history:
            candidates.insert(0, {**doc, "history": history[-MAX_HISTORY:]})
        for candidate in candidates:
            try:
                return decode(json.dumps(candidate).encode())
            except DecodeError:
                continue  # e.g. the longer history no longer fits: the run's own then
        return None


def read_dead_letter(raw: bytes | None, source: Source | None = None) -> DeadLetter:
    """Parse one DLQ record; anything unreadable becomes a record that says so."""
    try:
        doc = json.loads(raw or b"")
    except (ValueError, RecursionError):
        doc = None
    if not isinstance(doc, dict):
        doc = {"kind": "unreadable", "reason": "not a kcron dead-letter record"}
    return DeadLetter(doc, source)
