"""The one exception hierarchy of kcron, and the exit codes it maps to.

Exit codes follow BSD sysexits where one fits, so wrappers (systemd,
supervisord, CI) can tell a bad job file from an unreachable broker.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass


class ExitCode(enum.IntEnum):
    """Named by what went wrong (sysexits.h), not by which command saw it."""

    OK = 0
    FAILURE = 1
    USAGE = 2  # click's own code for bad command-line usage
    DATAERR = 65  # EX_DATAERR: bad input data: a job file with errors, a dead letter with no run
    NOINPUT = 66  # EX_NOINPUT: a file, or a dead letter, that is not there
    UNAVAILABLE = 69  # EX_UNAVAILABLE: broker unreachable, or lacking a feature kcron needs
    TEMPFAIL = 75  # EX_TEMPFAIL: fenced by a newer producer; safe to restart as a standby
    CONFIG = 78  # EX_CONFIG: invalid settings


class KcronError(Exception):
    """Base of every error kcron reports to a user instead of a traceback."""

    exit_code: ExitCode = ExitCode.FAILURE


class ConfigError(KcronError):
    exit_code = ExitCode.CONFIG


class BrokerError(KcronError):
    exit_code = ExitCode.UNAVAILABLE


class FencedError(KcronError):
    """A newer producer with the same producer id took over; this one must stop."""

    exit_code = ExitCode.TEMPFAIL


class UnsupportedByBroker(BrokerError):
    """The broker does not implement a request kcron asked for (e.g. CreatePartitions)."""


class InputFileError(KcronError):
    exit_code = ExitCode.NOINPUT


class DeadLetterNotFound(KcronError):
    """``kcron dlq requeue`` was given an id the dead-letter topic does not hold."""

    exit_code = ExitCode.NOINPUT


class NotFound(KcronError):
    """kcron runs RUN_ID / kcron trigger JOB: no such run or job."""

    exit_code = ExitCode.NOINPUT


class NothingToRequeue(KcronError):
    """The dead letter holds no run (an undecodable message): there is nothing to send back."""

    exit_code = ExitCode.DATAERR


@dataclass(frozen=True)
class LineError:
    """One problem on one line of a job file, printed as ``file:line: reason``."""

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


class JobFileError(KcronError):
    """A job file with one or more invalid lines; carries every one of them."""

    exit_code = ExitCode.DATAERR

    def __init__(self, errors: Sequence[LineError]) -> None:
        self.errors = tuple(errors)
        count = len(self.errors)
        head = f"{count} error{'s' if count != 1 else ''} in job file"
        super().__init__("\n".join([head, *(str(e) for e in self.errors)]))


class DecodeError(KcronError):
    """A Kafka message that is not a valid run message.

    Keeps the raw bytes so the worker can log an excerpt and the dead letter
    can keep the message whole.
    """

    def __init__(self, reason: str, raw: bytes) -> None:
        self.reason = reason
        self.raw = raw
        super().__init__(reason)

    def excerpt(self, limit: int = 120) -> str:
        text = self.raw[:limit].decode("utf-8", errors="backslashreplace")
        return text + ("…" if len(self.raw) > limit else "")
