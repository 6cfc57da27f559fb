"""Parse kcron job files.

One job per line::

    [key=value ...] <5 cron fields | @macro> <command line>

Leading ``key=value`` tokens are per-job options. A cron field never
contains ``=``, so a plain crontab line stays valid and new options can be
added later without changing how old files read. Every invalid line is
collected, so a user fixes a file in one pass instead of one error a time.

Schedules are validated with python-crontab and then with kcron.cronexpr
(which computes the run times with cron's rules), so a line is accepted only
if both agree it is well formed and it has a future run.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math
import re
import unicodedata
import zoneinfo
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import crontab

from kcron import cronexpr, topics
from kcron.errors import InputFileError, JobFileError, LineError

MAX_LINE_CHARS = 8192
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_ATTEMPTS = 100
REBOOT = "@reboot"

# python-crontab's own macro table, minus @reboot: it would silently turn
# @reboot into "every minute", so kcron handles @reboot itself.
MACROS: dict[str, str] = {
    f"@{name}": expr for name, expr in crontab.SPECIALS.items() if name != "reboot"
}
FIELD_NAMES = ("minute", "hour", "day of month", "month", "day of week")
OPTION_KEYS = ("name", "timeout", "attempts", "queue", "shell", "tz", "overlap")
# overlap=: what a run does when it comes due while an earlier run of its job still
# runs. "allow" starts it anyway; "forbid" skips it (kcron/worker/overlap.py). The
# run message carries the same names (kcron.message.OVERLAP_POLICIES).
OVERLAP_ALLOW = "allow"
OVERLAP_FORBID = "forbid"
OVERLAP_POLICIES = (OVERLAP_ALLOW, OVERLAP_FORBID)

_OPTION_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_-]*)=(\S*)")
_TOKEN_RE = re.compile(r"[^ \t]+")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)?")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
# A sixth token that looks like a cron field means the user wrote a 6- or
# 7-field (seconds/years) schedule; running "*" as a command would be absurd.
_FIELDISH_RE = re.compile(r"[0-9*?/,-]+")
# A Quartz line (seconds first) puts the day of week 6th, often by name:
# "0 0 12 * * MON cmd" would otherwise run the command "MON cmd" at noon.
_DAY_FIELD_RE = re.compile(r"(?:(?i:sun|mon|tue|wed|thu|fri|sat)|[0-9?/,#L-])+")
_DAY_NAME_RE = re.compile(r"(?i:sun|mon|tue|wed|thu|fri|sat)|#|[0-9]L")
_REJECTED_CATEGORIES = ("Cc", "Cf", "Zl", "Zp", "Cs", "Co")
_ASCII_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # Cc less the tab
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_REFERENCE_WALL = 0  # 1970-01-01 00:00 on the wall clock; 400 years are searched


@dataclass(frozen=True)
class Job:
    """One validated line of a job file."""

    name: str
    schedule: str  # as written: five fields or a macro
    command: str  # exactly as written, passed to the executor verbatim
    file: str
    line: int
    timeout: float | None = None  # seconds; None means no limit
    attempts: int = 1
    queue: str | None = None
    shell: bool = False
    tz: str | None = None  # None: the scheduler's default timezone
    overlap: str = OVERLAP_ALLOW  # one of OVERLAP_POLICIES

    @property
    def is_reboot(self) -> bool:
        return self.schedule == REBOOT

    @property
    def cron_expression(self) -> str:
        """The five-field form kcron.cronexpr evaluates (macros expanded)."""
        return MACROS.get(self.schedule, self.schedule)

    @property
    def source(self) -> str:
        return f"{self.file}:{self.line}"

    def queue_or(self, default: str) -> str:
        """The topic this job's runs go to: its queue, else the default topic."""
        return self.queue if self.queue is not None else default

    def options(self) -> dict[str, object]:
        """The options that differ from the defaults, for display."""
        shown: dict[str, object] = {}
        if self.timeout is not None:
            shown["timeout"] = format_duration(self.timeout)
        if self.attempts != 1:
            shown["attempts"] = self.attempts
        if self.queue is not None:
            shown["queue"] = self.queue
        if self.shell:
            shown["shell"] = "true"
        if self.tz is not None:
            shown["tz"] = self.tz
        if self.overlap != OVERLAP_ALLOW:
            shown["overlap"] = self.overlap
        return shown


@dataclass(frozen=True)
class JobFile:
    path: str
    jobs: tuple[Job, ...] = field(default_factory=tuple)


def queues(jobs: Iterable[Job], default: str) -> dict[str, int]:
    """Jobs per queue, the default topic first (when it has jobs), then in file order."""
    counts: dict[str, int] = {default: 0}
    for job in jobs:
        name = job.queue_or(default)
        counts[name] = counts.get(name, 0) + 1
    if not counts[default]:
        del counts[default]
    return counts


class _LineInvalid(Exception):
    pass


def format_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def parse_duration(text: str) -> float:
    match = _DURATION_RE.fullmatch(text)
    if not match:
        raise ValueError("not a duration (examples: 30, 30s, 5m, 2h, 1d)")
    seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError("must be greater than zero")
    if not math.isfinite(seconds):
        raise ValueError("too large")
    return seconds


def load(
    path: str | Path, display_name: str | None = None, *, max_queues: int | None = None
) -> JobFile:
    """Read and parse a job file; raise JobFileError listing every bad line.

    ``max_queues`` (Settings.max_queues) bounds the distinct queue= names; None: no limit.
    """
    p = Path(path)
    try:
        if p.stat().st_size > MAX_FILE_BYTES:
            raise InputFileError(f"{p}: job file larger than {MAX_FILE_BYTES} bytes")
        data = p.read_bytes()
    except IsADirectoryError:
        raise InputFileError(f"{p}: is a directory, not a job file") from None
    except FileNotFoundError:
        raise InputFileError(f"{p}: no such job file") from None
    except PermissionError:
        raise InputFileError(f"{p}: permission denied") from None
    except OSError as exc:
        raise InputFileError(f"{p}: cannot read: {exc.strerror or exc}") from None
    return parse(data, display_name or str(path), max_queues=max_queues)


def parse(data: bytes | str, filename: str, *, max_queues: int | None = None) -> JobFile:
    """Parse job-file content. Pure: no I/O, no clock."""
    if isinstance(data, str):
        try:
            raw = data.encode("utf-8", errors="surrogateescape")
        except UnicodeEncodeError:  # a surrogate that stands for no byte: reported per line
            raw = data.encode("utf-8", errors="surrogatepass")
    else:
        raw = data
    stem = name_stem(filename)
    errors: list[LineError] = []
    jobs: list[Job] = []
    seen_names: dict[str, int] = {}
    seen_queues: set[str] = set()

    for lineno, raw_line in enumerate(raw.split(b"\n"), start=1):
        try:
            job = _parse_line(raw_line, filename, lineno, stem)
        except _LineInvalid as exc:
            errors.append(LineError(filename, lineno, str(exc)))
            continue
        if job is None:
            continue
        if job.name in seen_names:
            first = seen_names[job.name]
            hint = "" if b"name=" in raw_line else "; give one of them name=..."
            errors.append(
                LineError(
                    filename,
                    lineno,
                    f"duplicate job name '{job.name}' (first on line {first}){hint}",
                )
            )
            continue
        jobs.append(job)
        seen_names[job.name] = lineno
        if job.queue is not None and job.queue not in seen_queues:
            seen_queues.add(job.queue)
            if max_queues is not None and len(seen_queues) == max_queues + 1:
                errors.append(LineError(filename, lineno, _too_many_queues(job.queue, max_queues)))

    if errors:
        raise JobFileError(errors)
    return JobFile(filename, tuple(jobs))


def _too_many_queues(queue: str, limit: int) -> str:
    # Each queue is a topic (and a retry and a dead-letter topic) on the
    # cluster, and a pool of workers to run: a typo-driven explosion of
    # queues should be a refusal, not a few hundred new topics.
    return (
        f"queue '{queue}' makes {limit + 1} distinct queues, over the limit of {limit} "
        "(raise it with --max-queues or KCRON_MAX_QUEUES)"
    )


def name_stem(filename: str) -> str:
    stem = Path(filename).stem or "jobs"
    stem = re.sub(r"[^A-Za-z0-9._-]", "-", stem).strip(".-_") or "jobs"
    return stem[:60]


def default_name(stem: str, schedule: str, command: str, occurrence: int = 1) -> str:
    """A name derived from the line's content, not its position.

    Inserting or moving lines keeps every job's name (and so its history in
    logs and its dispatch state); editing the schedule or command
    makes it a new job, which it is.
    """
    digest = hashlib.sha256(f"{schedule}\0{command}".encode("utf-8", "surrogatepass"))
    name = f"{stem}-{digest.hexdigest()[:8]}"
    return name if occurrence == 1 else f"{name}-{occurrence}"


def _parse_line(raw_line: bytes, filename: str, lineno: int, stem: str) -> Job | None:
    text = _line_text(raw_line)
    if text is None:
        return None
    # Tokens are read only as far as needed: the command is taken verbatim.
    tokens = _TOKEN_RE.finditer(text)
    options, token = _read_options(tokens)
    if token is None:
        raise _LineInvalid("missing schedule and command")
    schedule, rest = _read_schedule(token.group(), tokens)
    if rest is None:
        raise _LineInvalid(f"missing command after schedule '{schedule}'")
    command = text[rest.start() :].rstrip(" \t")
    if schedule != REBOOT:
        error = _schedule_error(MACROS.get(schedule, schedule), options.get("tz"))
        if error is not None:
            raise _LineInvalid(error)
    parsed = _option_values(options)
    return Job(
        name=str(parsed.get("name") or default_name(stem, schedule, command)),
        schedule=schedule,
        command=command,
        file=filename,
        line=lineno,
        timeout=parsed.get("timeout"),  # type: ignore[arg-type]
        attempts=int(parsed.get("attempts", 1)),  # type: ignore[call-overload]
        queue=parsed.get("queue"),  # type: ignore[arg-type]
        shell=bool(parsed.get("shell", False)),
        tz=parsed.get("tz"),  # type: ignore[arg-type]
        overlap=str(parsed.get("overlap", OVERLAP_ALLOW)),
    )


def _line_text(raw_line: bytes) -> str | None:
    """The line as text, or None for a blank or comment line."""
    if raw_line.endswith(b"\r"):
        raw_line = raw_line[:-1]
    try:
        text = raw_line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _LineInvalid(f"not valid UTF-8 (byte {exc.start + 1})") from None
    if len(text) > MAX_LINE_CHARS:
        raise _LineInvalid(f"line too long ({len(text)} characters, limit {MAX_LINE_CHARS})")
    stripped = text.strip(" \t")
    if not stripped or stripped.startswith("#"):
        return None
    _check_characters(text)
    return text


def _read_options(tokens: Iterator[re.Match[str]]) -> tuple[dict[str, str], re.Match[str] | None]:
    """The leading key=value options, and the first token after them."""
    token = next(tokens, None)
    options: dict[str, str] = {}
    while token is not None and (opt := _OPTION_RE.fullmatch(token.group())):
        key, value = opt.group(1), opt.group(2)
        if key not in OPTION_KEYS:
            raise _LineInvalid(f"unknown option '{key}' (known: {', '.join(OPTION_KEYS)})")
        if key in options:
            raise _LineInvalid(f"option '{key}' given twice")
        options[key] = value
        token = next(tokens, None)
    return options, token


def _read_schedule(first: str, tokens: Iterator[re.Match[str]]) -> tuple[str, re.Match[str] | None]:
    """The schedule (a macro or 5 fields), and the token that starts the command."""
    if first.startswith("@"):
        if first != REBOOT and first not in MACROS:
            known = ", ".join([*MACROS, REBOOT])
            raise _LineInvalid(f"unknown macro '{first}' (known: {known})")
        return first, next(tokens, None)
    fields = [first, *(m.group() for m in itertools.islice(tokens, 4))]
    if len(fields) < 5:
        raise _LineInvalid(
            f"schedule needs 5 fields (minute hour day-of-month month day-of-week), "
            f"got {len(fields)} and no command"
        )
    rest = next(tokens, None)
    if rest is not None and _looks_like_a_field(rest.group()):
        raise _LineInvalid(
            f"'{rest.group()}' after 5 schedule fields looks like a 6th field: kcron uses "
            "5-field cron (no seconds or years); put the command after the 5th field"
        )
    return " ".join(fields), rest


def _option_values(options: dict[str, str]) -> dict[str, object]:
    parsed: dict[str, object] = {}
    for key, value in options.items():
        try:
            parsed[key] = _OPTION_PARSERS[key](value)
        except ValueError as exc:
            raise _LineInvalid(f"option {key}={value}: {exc}") from None
    return parsed


def _looks_like_a_field(token: str) -> bool:
    if _FIELDISH_RE.fullmatch(token):
        return True
    return bool(_DAY_FIELD_RE.fullmatch(token) and _DAY_NAME_RE.search(token))


def _check_characters(text: str) -> None:
    if text.isascii():
        # The common case, without a lookup per character: in ASCII only the
        # C0 controls and DEL are in the rejected categories.
        if (bad := _ASCII_CONTROL_RE.search(text)) is None:
            return
        candidates: Iterable[tuple[int, str]] = [(bad.start(), bad.group())]
    else:
        candidates = enumerate(text)
    for index, ch in candidates:
        if ch != "\t" and unicodedata.category(ch) in _REJECTED_CATEGORIES:
            raise _LineInvalid(
                f"control or invisible character U+{ord(ch):04X} at column {index + 1}"
            )


def _parse_name(text: str) -> str:
    if not _NAME_RE.fullmatch(text):
        raise ValueError(
            "use 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return text


def _parse_attempts(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_ATTEMPTS:
        raise ValueError(f"must be a whole number from 1 to {MAX_ATTEMPTS}")
    return int(text)


def _parse_queue(text: str) -> str:
    problem = topics.queue_name_problem(text)
    if problem is not None:
        raise ValueError(problem)
    return text


def _parse_bool(text: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise ValueError("must be true or false")


def _parse_tz(text: str) -> str:
    # Checked here too, not only in _schedule_error, which @reboot lines skip.
    if not text:
        raise ValueError("must name a time zone such as Europe/Paris")
    try:
        zoneinfo.ZoneInfo(text)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError("unknown time zone (examples: UTC, Europe/Paris)") from None
    return text


def _parse_overlap(text: str) -> str:
    if text == "replace":
        # Replacing needs a worker to cancel one running job of its pool by name,
        # which it cannot do yet; refusing is better than quietly forbidding.
        raise ValueError("'replace' is not supported; use allow or forbid")
    if text not in OVERLAP_POLICIES:
        raise ValueError("must be allow or forbid")
    return text


_OPTION_PARSERS = {
    "name": _parse_name,
    "timeout": parse_duration,
    "attempts": _parse_attempts,
    "queue": _parse_queue,
    "shell": _parse_bool,
    "tz": _parse_tz,
    "overlap": _parse_overlap,
}


# Validation results by schedule: big files repeat a few thousand schedules over
# many lines, and a reload asks again about the same ones. Entries are small.
_CACHE_SIZE = 1 << 16


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _schedule_error(expr: str, tz: str | None) -> str | None:
    """Why ``expr`` (five fields, macros expanded) in zone ``tz`` is not a usable
    schedule, or None if it is. Pure, hence cached."""
    if (error := _fields_error(expr)) is not None:
        return error
    if tz is not None:
        try:
            zoneinfo.ZoneInfo(tz)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            return f"option tz: unknown time zone '{tz}'"
    return _cron_error(expr)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _fields_error(expr: str) -> str | None:
    """ASCII fields that python-crontab accepts."""
    for index, value in enumerate(expr.split(" ")):
        if not value.isascii():
            return f"{FIELD_NAMES[index]} field '{value}': only ASCII is allowed"
    try:
        crontab.CronSlices(expr)
    except (ValueError, KeyError, IndexError, TypeError, AssertionError) as exc:
        reason = str(exc.args[0]) if exc.args else type(exc).__name__
        return f"invalid schedule '{expr}': {reason}"
    return None


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _cron_error(expr: str) -> str | None:
    """cron's reading of the fields (kcron.cronexpr), and whether any date matches.

    The zone plays no part: a schedule that names a date fires in every zone.
    """
    try:
        parsed = cronexpr.parse(expr)
    except ValueError as exc:
        return f"invalid schedule '{expr}': {exc}"
    _minute, _hour, day_of_month, month, _day_of_week = expr.split(" ")
    if day_of_month == "*" or month == "*":
        # Every day of the month exists in some month and every month has days:
        # only a schedule restricting both can name no date (Feb 30).
        return None
    if parsed.next_wall(_REFERENCE_WALL) is None:
        return f"schedule '{expr}' never fires (no such date)"
    return None
