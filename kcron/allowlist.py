"""The worker's command allow-list: which command lines it agrees to run. Pure but for reading it.

One pattern a line: a Python regular expression that must match the *whole*
command line (``re.fullmatch``), so ``/usr/local/bin/backup\\.sh`` allows that
command without arguments and nothing else, and an unanchored pattern cannot
allow more than it shows. Blank lines and ``#`` comments are ignored.

Whole-line regexes rather than globs on argv[0]: allowing ``python3`` by its
program name would allow ``python3 -c 'anything'``; the arguments decide what
runs as much as the program does.

A job with ``shell=true`` hands its line to ``/bin/sh -c``, where any pattern
written for argv-style commands could be escaped with ``;`` or ``$(...)``. So
plain patterns never match a shell run: it needs a pattern of its own,
prefixed ``shell:``, which in turn never matches a non-shell run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kcron.errors import ConfigError

SHELL_PREFIX = "shell:"


@dataclass(frozen=True)
class AllowList:
    path: str
    commands: tuple[re.Pattern[str], ...]
    shell: tuple[re.Pattern[str], ...]

    def allows(self, command: str, shell: bool) -> bool:
        patterns = self.shell if shell else self.commands
        return any(p.fullmatch(command) for p in patterns)


def parse(text: str, path: str) -> AllowList:
    commands: list[re.Pattern[str]] = []
    shell: list[re.Pattern[str]] = []
    for number, line in enumerate(text.splitlines(), 1):
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        target = commands
        if pattern.startswith(SHELL_PREFIX):
            pattern, target = pattern[len(SHELL_PREFIX) :].strip(), shell
        if not pattern:
            raise ConfigError(f"allow-list {path}:{number}: empty pattern")
        try:
            target.append(re.compile(pattern))
        except re.error as exc:
            problem = f"allow-list {path}:{number}: bad regular expression: {exc}"
            raise ConfigError(problem) from None
    if not commands and not shell:
        raise ConfigError(f"allow-list {path} holds no patterns; it would refuse every run")
    return AllowList(path, tuple(commands), tuple(shell))


def load(path: str) -> AllowList:
    """The allow-list in ``path``; ConfigError (exit 78) if it is missing or malformed."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"cannot read allow-list {path}: {why}") from None
    return parse(text, path)


def load_optional(path: str | None) -> AllowList | None:
    return load(path) if path else None
