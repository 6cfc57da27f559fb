"""The one exception hierarchy of kcron, and the exit codes it maps to.

Exit codes follow BSD sysexits where one fits, so wrappers (systemd,
supervisord, CI) can tell a bad job file from an unreachable broker.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass


class ExitCode(enum.IntEnum):
    OK = 0
    FAILURE = 1
    USAGE = 2  # click's own code for bad command-line usage
    JOBFILE = 65  # EX_DATAERR: the job file has errors
    NO_INPUT = 66  # EX_NOINPUT: a file could not be read
    UNAVAILABLE = 69  # EX_UNAVAILABLE: broker or embedded broker not reachable
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


class InputFileError(KcronError):
    exit_code = ExitCode.NO_INPUT


class DeadLetterNotFound(KcronError):
    """``kcron dlq requeue`` was given an id the dead-letter topic does not hold."""

    exit_code = ExitCode.NO_INPUT


class NothingToRequeue(KcronError):
    """The dead letter holds no run (an undecodable message): there is nothing to send back."""

    exit_code = ExitCode.JOBFILE  # 65, EX_DATAERR: the input data is bad


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

    exit_code = ExitCode.JOBFILE

    def __init__(self, errors: Sequence[LineError]) -> None:
        self.errors = tuple(errors)
        count = len(self.errors)
        head = f"{count} error{'s' if count != 1 else ''} in job file"
        super().__init__("\n".join([head, *(str(e) for e in self.errors)]))


class DecodeError(KcronError):
    """A Kafka message that is not a valid run message.

    Keeps the raw bytes so the consumer can log an excerpt (and a later
    dead-letter topic can keep the message whole).
    """

    def __init__(self, reason: str, raw: bytes) -> None:
        self.reason = reason
        self.raw = raw
        super().__init__(reason)

    def excerpt(self, limit: int = 120) -> str:
        text = self.raw[:limit].decode("utf-8", errors="backslashreplace")
        return text + ("…" if len(self.raw) > limit else "")
