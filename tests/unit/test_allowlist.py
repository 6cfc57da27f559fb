"""The worker's command allow-list (kcron/allowlist.py)."""

from __future__ import annotations

import pytest

from kcron.allowlist import load, parse
from kcron.errors import ConfigError, ExitCode

LIST = r"""
# backups, with or without --full
/usr/local/bin/backup\.sh( --full)?
python3 /opt/jobs/report\.py --day \d{4}-\d\d-\d\d
shell: pg_dump mydb \| gzip > /var/backups/mydb\.gz
"""


@pytest.mark.parametrize(
    ("command", "shell", "allowed"),
    [
        ("/usr/local/bin/backup.sh", False, True),
        ("/usr/local/bin/backup.sh --full", False, True),
        ("/usr/local/bin/backup.sh --full; rm -rf /", False, False),  # whole line, not a prefix
        ("/usr/local/bin/backupXsh", False, False),
        ("python3 /opt/jobs/report.py --day 2026-12-01", False, True),
        ("python3 -c 'import os; os.system(\"id\")'", False, False),  # interpreter alone: no
        ("pg_dump mydb | gzip > /var/backups/mydb.gz", True, True),
        ("pg_dump mydb | gzip > /var/backups/mydb.gz", False, False),  # shell: is shell only
        ("/usr/local/bin/backup.sh", True, False),  # a plain pattern never allows a shell run
        ("sh -c 'id > pwned.txt'", False, False),
    ],
)
def test_a_command_is_allowed_only_by_a_pattern_of_its_kind_matching_the_whole_line(
    command, shell, allowed
):
    assert parse(LIST, "allow.txt").allows(command, shell) is allowed


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("backup(\n", r"allow.txt:1: bad regular expression"),
        ("true\nshell:\n", r"allow.txt:2: empty pattern"),
        ("# nothing\n\n", "holds no patterns"),
    ],
)
def test_a_bad_allow_list_is_a_config_error_naming_the_line(text, problem):
    with pytest.raises(ConfigError, match=problem) as exc:
        parse(text, "allow.txt")
    assert exc.value.exit_code == ExitCode.CONFIG


def test_a_missing_allow_list_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read allow-list"):
        load(str(tmp_path / "absent"))
