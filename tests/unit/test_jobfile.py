"""kcron.jobfile: every rule of the job-file format, and its error messages."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kcron import jobfile
from kcron.errors import ExitCode, InputFileError, JobFileError, LineError
from kcron.jobfile import MAX_LINE_CHARS, Job

FILE = "jobs.cron"


def parse(text: str | bytes, filename: str = FILE) -> tuple[Job, ...]:
    return jobfile.parse(text, filename).jobs


def only_job(text: str | bytes) -> Job:
    jobs = parse(text)
    assert len(jobs) == 1, jobs
    return jobs[0]


def errors(text: str | bytes, filename: str = FILE) -> list[str]:
    with pytest.raises(JobFileError) as info:
        jobfile.parse(text, filename)
    return [str(e) for e in info.value.errors]


def one_error(text: str | bytes) -> str:
    errs = errors(text)
    assert len(errs) == 1, errs
    return errs[0]


# -- plain crontab lines -------------------------------------------------------


def test_plain_crontab_line_needs_no_extra_syntax():
    job = only_job('*/5 * * * * echo "hello world"')
    assert job.schedule == "*/5 * * * *"
    assert job.command == 'echo "hello world"'
    assert job.cron_expression == "*/5 * * * *"
    assert (job.timeout, job.attempts, job.queue, job.shell, job.tz) == (None, 1, None, False, None)
    assert job.is_reboot is False
    assert job.options() == {}
    assert (job.file, job.line, job.source) == (FILE, 1, f"{FILE}:1")


@pytest.mark.parametrize(
    "command",
    [
        'echo "hello world"',
        "printf '%s|' \"a b\" c",
        "sh -c 'echo $HOME; exit 3'",
        "echo  two  spaces\tand\ttabs",
        "du -sh /tmp | tail -n 1 > /dev/null 2>&1 # not a comment",
        "FOO=bar env",
        "echo naïve café ✓",
        "python3 -c 'print(1 == 1)'",
        "echo a=b c=d",
    ],
)
def test_command_is_kept_exactly_as_written(command):
    assert only_job(f"0 3 * * 1-5 {command}").command == command
    assert only_job(f"name=x timeout=5s @daily {command}").command == command


def test_surrounding_whitespace_and_crlf_are_not_part_of_the_command():
    jobs = parse("  \t*/5 * * * *\t  echo  a  \t\r\n@hourly echo b\r\n")
    assert [j.command for j in jobs] == ["echo  a", "echo b"]
    assert [j.schedule for j in jobs] == ["*/5 * * * *", "@hourly"]


def test_fields_may_be_separated_by_several_spaces_or_tabs():
    job = only_job("0\t\t3  *\t* 1-5    backup.sh --full")
    assert job.schedule == "0 3 * * 1-5"
    assert job.command == "backup.sh --full"


def test_comments_and_blank_lines_are_skipped_and_line_numbers_stay_true():
    text = "# header\n\n   \n\t\n  # indented comment\n* * * * * a\n#* * * * * disabled\n@daily b\n"
    jobs = parse(text)
    assert [(j.line, j.command) for j in jobs] == [(6, "a"), (8, "b")]


def test_empty_and_comment_only_files_have_no_jobs():
    assert parse("") == ()
    assert parse(b"") == ()
    assert parse("# nothing\n\n") == ()


def test_bytes_and_str_give_the_same_jobs():
    text = "name=a @hourly echo é\n*/2 * * * * echo b\n"
    assert parse(text) == parse(text.encode())


def test_names_spelled_in_words_are_accepted():
    job = only_job("0 9 * JAN-MAR mon-fri report")
    assert job.schedule == "0 9 * JAN-MAR mon-fri"


def test_sunday_may_be_written_7():
    assert only_job("0 0 * * 7 weekly").schedule == "0 0 * * 7"


def test_feb_29_is_a_valid_schedule():
    assert only_job("0 0 29 2 * leap-day").schedule == "0 0 29 2 *"


# -- macros --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("macro", "expression"),
    [
        ("@hourly", "0 * * * *"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@weekly", "0 0 * * 0"),
        ("@monthly", "0 0 1 * *"),
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
    ],
)
def test_macros(macro, expression):
    job = only_job(f"{macro} run --it")
    assert job.schedule == macro
    assert job.cron_expression == expression
    assert job.command == "run --it"
    assert not job.is_reboot


def test_reboot_is_accepted_and_flagged_not_turned_into_every_minute():
    job = only_job("@reboot warm-cache.sh")
    assert job.is_reboot
    assert job.schedule == "@reboot"
    assert job.cron_expression != "* * * * *"
    assert job.command == "warm-cache.sh"


@pytest.mark.parametrize("macro", ["@every", "@HOURLY", "@", "@every_minute", "@5m"])
def test_unknown_macro(macro):
    err = one_error(f"{macro} echo hi")
    assert err.startswith(f"{FILE}:1: unknown macro '{macro}'")
    assert "@hourly" in err and "@reboot" in err


@pytest.mark.parametrize("macro", ["@daily", "@reboot"])
def test_macro_without_command(macro):
    assert one_error(macro) == f"{FILE}:1: missing command after schedule '{macro}'"


# -- options -------------------------------------------------------------------


def test_all_options_together():
    job = only_job(
        "name=backup timeout=1.5m attempts=3 queue=kcron.slow shell=yes tz=Europe/Paris "
        "30 2 * * * pg_dump db | gzip > /backups/db.gz"
    )
    assert job.name == "backup"
    assert job.timeout == 90.0
    assert job.attempts == 3
    assert job.queue == "kcron.slow"
    assert job.shell is True
    assert job.tz == "Europe/Paris"
    assert job.command == "pg_dump db | gzip > /backups/db.gz"
    assert job.options() == {
        "timeout": "90s",
        "attempts": 3,
        "queue": "kcron.slow",
        "shell": "true",
        "tz": "Europe/Paris",
    }


def test_options_work_with_macros_and_reboot():
    assert only_job("name=warm attempts=2 @reboot warm.sh").attempts == 2
    assert only_job("timeout=10 @hourly x").timeout == 10.0


@pytest.mark.parametrize(
    ("value", "seconds", "shown"),
    [
        ("30", 30.0, "30s"),
        ("30s", 30.0, "30s"),
        ("250ms", 0.25, "0.25s"),
        ("5m", 300.0, "5m"),
        ("2h", 7200.0, "2h"),
        ("1d", 86400.0, "1d"),
        ("1.5m", 90.0, "90s"),
        ("0.5", 0.5, "0.5s"),
    ],
)
def test_timeout_values(value, seconds, shown):
    job = only_job(f"timeout={value} * * * * * x")
    assert job.timeout == seconds
    assert job.options()["timeout"] == shown


@pytest.mark.parametrize(
    ("option", "reason"),
    [
        ("timeout=0", "must be greater than zero"),
        ("timeout=0s", "must be greater than zero"),
        ("timeout=abc", "not a duration"),
        ("timeout=5x", "not a duration"),
        ("timeout=-5", "not a duration"),
        ("timeout=1e3", "not a duration"),
        ("timeout=", "not a duration"),
        pytest.param("timeout=" + "9" * 400, "too large", id="timeout=9*400"),
        ("attempts=0", "from 1 to 100"),
        ("attempts=101", "from 1 to 100"),
        ("attempts=-1", "from 1 to 100"),
        ("attempts=1.5", "from 1 to 100"),
        ("attempts=three", "from 1 to 100"),
        ("attempts=\u0663", "from 1 to 100"),  # ARABIC-INDIC DIGIT THREE
        ("attempts=", "from 1 to 100"),
        ("queue=", "not a valid Kafka topic name"),
        ("queue=..", "not a valid Kafka topic name"),
        ("queue=.", "not a valid Kafka topic name"),
        ("queue=a/b", "not a valid Kafka topic name"),
        pytest.param("queue=" + "q" * 250, "not a valid Kafka topic name", id="queue=q*250"),
        ("shell=maybe", "must be true or false"),
        ("shell=", "must be true or false"),
        ("name=", "use 1-100 letters"),
        ("name=-lead", "use 1-100 letters"),
        ("name=a/b", "use 1-100 letters"),
        pytest.param("name=" + "n" * 101, "use 1-100 letters", id="name=n*101"),
        ("name=é", "use 1-100 letters"),
    ],
)
def test_invalid_option_values_name_the_option_and_line(option, reason):
    err = errors(f"# first line\n{option} */5 * * * * echo hi")
    assert len(err) == 1
    assert err[0].startswith(f"{FILE}:2: option {option}: ")
    assert reason in err[0]


@pytest.mark.parametrize("value", ["true", "TRUE", "yes", "on", "1", "True"])
def test_shell_true_spellings(value):
    assert only_job(f"shell={value} * * * * * a | b").shell is True


@pytest.mark.parametrize("value", ["false", "no", "off", "0", "False"])
def test_shell_false_spellings(value):
    assert only_job(f"shell={value} * * * * * x").shell is False


@pytest.mark.parametrize("value", ["1", "100", "007"])
def test_attempts_bounds(value):
    assert only_job(f"attempts={value} * * * * * x").attempts == int(value)


@pytest.mark.parametrize("name", ["a", "Backup_db-1.daily", "9lives", "n" * 100])
def test_valid_names(name):
    assert only_job(f"name={name} * * * * * x").name == name


@pytest.mark.parametrize("queue", ["kcron.slow", "a", "Q_1-x", "q" * 242])
def test_valid_queues(queue):
    assert only_job(f"queue={queue} * * * * * x").queue == queue


@pytest.mark.parametrize("zone", ["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata"])
def test_valid_time_zones(zone):
    assert only_job(f"tz={zone} 0 9 * * * x").tz == zone


@pytest.mark.parametrize(
    "zone",
    [
        "Nope/Zone",
        "Europe",
        "europe/paris ",
        "../etc/passwd",
        "/etc/localtime",
        "+01:00",
        "a" * 300,
    ],
)
def test_unknown_time_zone(zone):
    zone = zone.strip()
    err = one_error(f"tz={zone} 0 9 * * * x")
    assert err.startswith(f"{FILE}:1: option tz")
    assert "unknown time zone" in err


def test_empty_time_zone():
    err = one_error("tz= 0 9 * * * x")
    assert err.startswith(f"{FILE}:1: option tz")


def test_unknown_time_zone_is_rejected_on_reboot_lines_too():
    err = one_error("tz=Nope/Zone @reboot warm.sh")
    assert err.startswith(f"{FILE}:1: option tz")
    assert "unknown time zone" in err


def test_unknown_option():
    err = one_error("\n\nretries=3 * * * * * x")
    assert err.startswith(f"{FILE}:3: unknown option 'retries'")
    assert "name, timeout, attempts, queue, shell, tz" in err


def test_crontab_environment_lines_are_reported_not_run():
    err = one_error("MAILTO=root")
    assert err.startswith(f"{FILE}:1: unknown option 'MAILTO'")


def test_option_given_twice():
    assert one_error("name=a timeout=5 name=b * * * * * x") == (
        f"{FILE}:1: option 'name' given twice"
    )
    assert one_error("timeout=5 timeout=5 * * * * * x") == (
        f"{FILE}:1: option 'timeout' given twice"
    )


def test_option_after_schedule_belongs_to_the_command():
    job = only_job("* * * * * name=x env")
    assert job.command == "name=x env"
    assert job.name != "x"


def test_options_alone_are_not_a_job():
    assert one_error("name=a timeout=5") == f"{FILE}:1: missing schedule and command"


# -- schedule shape --------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "sixth"),
    [
        ("*/10 * * * * * echo seconds-first", "*"),
        ("0 30 2 * * ? run", "?"),
        ("0 0 12 * * * 2026 run", "*"),
        ("* * * * * 2026 run", "2026"),
        ("0 0 1 1 * 1-5 run", "1-5"),
        ("* * * * * */5 run", "*/5"),
    ],
)
def test_six_and_seven_field_lines_are_rejected(line, sixth):
    err = one_error(line)
    assert err.startswith(f"{FILE}:1: '{sixth}' after 5 schedule fields looks like a 6th field")
    assert "5-field cron" in err


@pytest.mark.parametrize(
    ("line", "sixth"),
    [
        ("0 0 12 * * MON cmd", "MON"),
        ("0 0 12 ? * mon-fri run", "mon-fri"),
        ("0 15 10 * * SUN,SAT run", "SUN,SAT"),
        ("0 15 10 * * 6L run", "6L"),
        ("0 15 10 * * FRI#3 run", "FRI#3"),
        ("0 15 10 * * 5#3 run", "5#3"),
    ],
)
def test_a_quartz_line_with_a_day_name_sixth_is_not_read_as_a_command(line, sixth):
    # Without this check "0 0 12 * * MON cmd" ran the command "MON cmd" at 12 o'clock.
    err = one_error(line)
    assert err.startswith(f"{FILE}:1: '{sixth}' after 5 schedule fields looks like a 6th field")


@pytest.mark.parametrize(
    "command", ["monitor --all", "date", "sundial", "Mon.sh", "L", "fri-day.sh"]
)
def test_a_command_that_only_starts_like_a_day_name_is_a_command(command):
    assert only_job(f"0 0 12 * * {command}").command == command


@pytest.mark.parametrize(
    "schedule",
    [
        "5-5 * * * *",
        "0 0 * * 7-7",
        "0 0 * * MON-MON",
        "0 3-3 * * *",
        "0 0 * * 0-7",
        "0 0 * * 7",
        "1-30/7 * * * *",
        "*/2,5,10-20/3 * * * *",
        "0 0 * jan-dec/2 sun",
        "0 0 */2 * 1",
        "0 9 * * Mon-Fri",
    ],
)
def test_what_debian_cron_accepts_is_accepted(schedule):
    assert only_job(f"{schedule} x").schedule == schedule


def test_six_fields_without_command_is_reported_as_a_sixth_field():
    assert one_error("* * * * * *").startswith(f"{FILE}:1: '*' after 5 schedule fields")


def test_missing_command():
    assert one_error("*/5 * * * *") == f"{FILE}:1: missing command after schedule '*/5 * * * *'"
    assert one_error("*/5 * * * *   \t") == (
        f"{FILE}:1: missing command after schedule '*/5 * * * *'"
    )


@pytest.mark.parametrize(("line", "count"), [("*", 1), ("* *", 2), ("0 3 * *", 4)])
def test_fewer_than_five_fields(line, count):
    err = one_error(line)
    assert err.startswith(f"{FILE}:1: schedule needs 5 fields")
    assert f"got {count}" in err


@pytest.mark.parametrize(
    ("line", "field_text"),
    [
        ("60 * * * * x", "0-59"),
        ("0 24 * * * x", "0-23"),
        ("0 0 0 * * x", "1-31"),
        ("0 0 32 * * x", "1-31"),
        ("0 0 * 0 * x", "1-12"),
        ("0 0 * 13 * x", "1-12"),
        ("0 0 * * 8 x", "Day of Week"),
        ("99999999999999999999 * * * * x", "0-59"),
        ("*/100 * * * * x", "0-59"),
    ],
)
def test_out_of_range_values(line, field_text):
    err = one_error(line)
    schedule = " ".join(line.split()[:5])
    assert err.startswith(f"{FILE}:1: invalid schedule '{schedule}'")
    assert field_text in err


@pytest.mark.parametrize(
    "line",
    [
        "a b c d e x",
        "*/0 * * * * x",
        "5-1 * * * * x",
        "-1 * * * * x",
        "1,,2 * * * * x",
        "/5 * * * * x",
        "L * * * * x",
        "0 0 L * * x",
        "0 0 1W * * x",
        "0 0 * * 1#2 x",
        "H * * * * x",
        "0 0 * * sat-sun x",
    ],
)
def test_malformed_fields(line):
    assert one_error(line).startswith(f"{FILE}:1: invalid schedule '")


def test_non_ascii_in_a_field_is_rejected():
    err = one_error("\u0665 * * * * x")  # ARABIC-INDIC DIGIT FIVE
    assert err.startswith(f"{FILE}:1: minute field '\u0665': only ASCII")


@pytest.mark.parametrize(
    "line", ["0 0 31 2 * x", "0 0 30 2 * x", "0 0 30 FEB * x", "0 0 31 4,6,9,11 * x"]
)
def test_schedule_that_never_fires(line):
    schedule = " ".join(line.split()[:5])
    assert one_error(line) == f"{FILE}:1: schedule '{schedule}' never fires (no such date)"


def test_day_of_week_makes_a_feb_31_schedule_fire():
    # cron ORs day-of-month and day-of-week: "Feb 31 or any Monday in February".
    assert only_job("0 0 31 2 1 x").schedule == "0 0 31 2 1"


# -- bad bytes and characters -----------------------------------------------------


def test_non_utf8_bytes():
    err = one_error(b"* * * * * echo caf\xe9")
    assert err == f"{FILE}:1: not valid UTF-8 (byte 19)"


def test_non_utf8_in_a_comment_is_still_an_error():
    assert one_error(b"# caf\xe9\n").startswith(f"{FILE}:1: not valid UTF-8")


def test_str_with_surrogates_reports_instead_of_crashing():
    # A str decoded with surrogateescape keeps the original bytes...
    escaped = b"* * * * * echo \xff".decode("utf-8", "surrogateescape")
    assert one_error(escaped).startswith(f"{FILE}:1: not valid UTF-8")
    # ...and a lone surrogate that stands for no byte is reported the same way.
    assert one_error("* * * * * echo \ud800").startswith(f"{FILE}:1: not valid UTF-8")


@pytest.mark.parametrize(
    ("char", "code"),
    [
        ("\x00", "U+0000"),
        ("\x01", "U+0001"),
        ("\x1b", "U+001B"),
        ("\x7f", "U+007F"),
        ("\r", "U+000D"),
        ("\x0b", "U+000B"),
        ("\x85", "U+0085"),
        ("\u200b", "U+200B"),
        ("\u202e", "U+202E"),
        ("\u2028", "U+2028"),
        ("\ufeff", "U+FEFF"),
    ],
)
def test_control_and_invisible_characters(char, code):
    err = one_error(f"* * * * * echo a{char}b")
    assert err == f"{FILE}:1: control or invisible character {code} at column 17"


def test_tab_is_allowed_inside_the_command():
    assert only_job("* * * * * printf 'a\tb'").command == "printf 'a\tb'"


def test_line_too_long():
    line = "* * * * * echo " + "x" * MAX_LINE_CHARS
    err = one_error(line)
    assert err == f"{FILE}:1: line too long ({len(line)} characters, limit {MAX_LINE_CHARS})"


def test_line_at_the_limit_is_fine():
    prefix = "* * * * * echo "
    line = prefix + "x" * (MAX_LINE_CHARS - len(prefix))
    assert len(only_job(line).command) == MAX_LINE_CHARS - len("* * * * * ")


def test_long_comment_is_still_too_long():
    assert "line too long" in one_error("#" + "x" * MAX_LINE_CHARS)


# -- names -------------------------------------------------------------------------


def test_duplicate_explicit_names():
    err = one_error("name=a * * * * * x\n# gap\nname=a @daily y")
    assert err == f"{FILE}:3: duplicate job name 'a' (first on line 1)"


def test_identical_lines_without_names_collide_and_hint_at_name():
    err = one_error("*/5 * * * * echo hi\n*/5 * * * * echo hi")
    assert re.fullmatch(
        rf"{FILE}:2: duplicate job name 'jobs-[0-9a-f]{{8}}' \(first on line 1\); "
        r"give one of them name=\.\.\.",
        err,
    )


def test_identical_commands_are_fine_when_named():
    jobs = parse("name=a */5 * * * * echo hi\nname=b */5 * * * * echo hi")
    assert [j.name for j in jobs] == ["a", "b"]


def test_default_name_comes_from_the_file_stem_and_content():
    job = only_job("*/5 * * * * echo hi")
    assert re.fullmatch(r"jobs-[0-9a-f]{8}", job.name)
    other = jobfile.parse("*/5 * * * * echo hi", "/etc/kcron/Night Shift.cron").jobs[0]
    assert re.fullmatch(r"Night-Shift-[0-9a-f]{8}", other.name)
    assert other.name[-8:] == job.name[-8:]


def test_default_names_are_stable_when_lines_are_inserted_above():
    before = parse("*/5 * * * * echo a\n@daily echo b\n")
    after = parse("# new header\n\n0 * * * * echo new\n*/5 * * * * echo a\n@daily echo b\n")
    names_before = {j.command: j.name for j in before}
    names_after = {j.command: j.name for j in after}
    assert names_after["echo a"] == names_before["echo a"]
    assert names_after["echo b"] == names_before["echo b"]
    assert [j.line for j in after if j.command != "echo new"] == [4, 5]


def test_default_name_changes_when_the_schedule_or_command_changes():
    a = only_job("*/5 * * * * echo a").name
    assert only_job("*/6 * * * * echo a").name != a
    assert only_job("*/5 * * * * echo b").name != a
    # options do not change what the job is
    assert only_job("timeout=5 */5 * * * * echo a").name == a


def test_default_names_differ_between_jobs():
    jobs = parse("\n".join(f"*/{n} * * * * echo {n}" for n in range(1, 40)))
    assert len({j.name for j in jobs}) == 39


def test_explicit_name_may_not_collide_with_a_default_name():
    default = only_job("@hourly x").name
    err = one_error(f"@hourly x\nname={default} @daily y")
    assert err.startswith(f"{FILE}:2: duplicate job name '{default}'")


# -- one pass, every error -----------------------------------------------------------


def test_every_bad_line_is_reported_at_once():
    text = "\n".join(
        [
            "# jobs",  # 1
            "@hourly ok-1",  # 2
            "60 * * * * bad-minute",  # 3
            "retries=2 @daily bad-option",  # 4
            "name=dup @daily a",  # 5
            "*/5 * * * * * six-fields",  # 6
            "@weekly ok-2",  # 7
            "name=dup @daily b",  # 8
            "",  # 9
            "0 0 31 2 * never",  # 10
            "* * * * * still-ok",  # 11
        ]
    )
    with pytest.raises(JobFileError) as info:
        jobfile.parse(text, FILE)
    exc = info.value
    assert [e.line for e in exc.errors] == [3, 4, 6, 8, 10]
    assert all(e.file == FILE for e in exc.errors)
    assert exc.exit_code == ExitCode.DATAERR == 65
    message = str(exc)
    assert message.splitlines()[0] == "5 errors in job file"
    assert [line.split(":")[1] for line in message.splitlines()[1:]] == ["3", "4", "6", "8", "10"]


def test_single_error_message_is_singular():
    with pytest.raises(JobFileError) as info:
        jobfile.parse("oops", FILE)
    assert str(info.value).splitlines()[0] == "1 error in job file"


def test_line_error_str_format():
    assert str(LineError("jobs.cron", 3, "bad")) == "jobs.cron:3: bad"


def test_file_name_in_errors_is_the_display_name():
    errs = errors("\n\nbad", filename="/etc/kcron/prod.cron")
    assert errs == [
        "/etc/kcron/prod.cron:3: schedule needs 5 fields (minute hour day-of-month "
        "month day-of-week), got 1 and no command"
    ]


# -- load --------------------------------------------------------------------------


def test_load_reads_a_file(tmp_path: Path):
    path = tmp_path / "night.cron"
    path.write_text("# nightly\n@daily echo hi\n")
    loaded = jobfile.load(path)
    assert loaded.path == str(path)
    assert [(j.line, j.command, j.file) for j in loaded.jobs] == [(2, "echo hi", str(path))]
    assert loaded.jobs[0].name.startswith("night-")


def test_load_uses_display_name_in_errors(tmp_path: Path):
    path = tmp_path / "x.cron"
    path.write_bytes(b"@daily ok\nbad line\n")
    with pytest.raises(JobFileError) as info:
        jobfile.load(path, display_name="jobs.cron")
    assert str(info.value.errors[0]).startswith("jobs.cron:2: ")


def test_load_missing_file(tmp_path: Path):
    path = tmp_path / "missing.cron"
    with pytest.raises(InputFileError) as info:
        jobfile.load(path)
    assert str(info.value) == f"{path}: no such job file"
    assert info.value.exit_code == ExitCode.NOINPUT == 66


def test_load_directory(tmp_path: Path):
    with pytest.raises(InputFileError) as info:
        jobfile.load(tmp_path)
    assert str(info.value) == f"{tmp_path}: is a directory, not a job file"
    assert info.value.exit_code == ExitCode.NOINPUT


def test_load_too_large(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(jobfile, "MAX_FILE_BYTES", 16)
    path = tmp_path / "big.cron"
    path.write_text("@daily echo this is more than sixteen bytes\n")
    with pytest.raises(InputFileError, match="larger than 16 bytes"):
        jobfile.load(path)


def test_load_not_a_directory(tmp_path: Path):
    file = tmp_path / "file"
    file.write_text("")
    with pytest.raises(InputFileError) as info:
        jobfile.load(file / "jobs.cron")
    assert str(info.value).startswith(f"{file / 'jobs.cron'}: ")


def test_format_and_parse_duration_round_trip():
    for text in ["1s", "45s", "5m", "90s", "2h", "1d", "36h", "0.5s"]:
        seconds = jobfile.parse_duration(text)
        assert jobfile.parse_duration(jobfile.format_duration(seconds)) == seconds


# -- property: any input ends in jobs or a JobFileError with file:line ---------------

_FIELD_TOKENS = st.sampled_from(
    [
        "*",
        "*/5",
        "*/0",
        "0",
        "59",
        "60",
        "-1",
        "1-5",
        "5-1",
        "1,2,3",
        "1,,2",
        "?",
        "L",
        "W",
        "1#2",
        "MON",
        "mon-fri",
        "JAN",
        "FEB-JAN",
        "31",
        "30",
        "29",
        "2",
        "24",
        "23",
        "7",
        "8",
        "99999999999999999999",
        "*/",
        "/5",
        "H",
        "\u0665",
        "\uff11",
        "*-5",
        "0-59/15",
    ]
)
_OTHER_TOKENS = st.sampled_from(
    [
        "@hourly",
        "@daily",
        "@weekly",
        "@monthly",
        "@yearly",
        "@annually",
        "@midnight",
        "@reboot",
        "@every",
        "@HOURLY",
        "@",
        "echo",
        "hi",
        '"a b"',
        "'unterminated",
        "#",
        "name=a",
        "name=a",
        "name=",
        "name=-x",
        "timeout=5",
        "timeout=0",
        "timeout=1e9",
        "timeout=" + "9" * 400,
        "attempts=3",
        "attempts=0",
        "attempts=101",
        "queue=q",
        "queue=..",
        "shell=true",
        "shell=maybe",
        "tz=Europe/Paris",
        "tz=Nope/Zone",
        "tz=Europe",
        "tz=",
        "retries=2",
        "MAILTO=x",
        "=",
        "x=y=z",
        "\x00",
        "\x1b[31m",
        "\u200b",
        "\ufeff",
        "é",
        "\U0001f600",
        "\r",
        "\u2028",
        "\t",
        " ",
        "x" * 9000,
    ]
)
_LINES = st.lists(st.one_of(_FIELD_TOKENS, _OTHER_TOKENS), min_size=0, max_size=12).map(" ".join)


def _check_parse(data: bytes | str, filename: str = "fuzz.cron") -> None:
    try:
        result = jobfile.parse(data, filename)
    except JobFileError as exc:
        assert exc.errors, "JobFileError without errors"
        line_count = (data.count(b"\n") if isinstance(data, bytes) else data.count("\n")) + 1
        for err in exc.errors:
            assert str(err).startswith(f"{filename}:{err.line}: "), str(err)
            assert 1 <= err.line <= line_count
            assert err.reason.strip()
        lines = [e.line for e in exc.errors]
        assert lines == sorted(lines)
    else:
        for job in result.jobs:
            assert job.command.strip()
            assert job.is_reboot or len(job.cron_expression.split(" ")) == 5
            assert job.file == filename


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=6).map(b"\n".join))
def test_any_bytes_parse_or_fail_with_file_and_line(data):
    _check_parse(data)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(st.text(st.characters(codec=None), max_size=120), max_size=6).map("\n".join))
def test_any_text_parses_or_fails_with_file_and_line(text):
    _check_parse(text)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.text(
        st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF) | st.characters(), max_size=40
    )
)
def test_text_with_surrogates_parses_or_fails_with_file_and_line(text):
    _check_parse(text)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(_LINES, min_size=1, max_size=8).map("\n".join))
def test_cronish_lines_parse_or_fail_with_file_and_line(text):
    _check_parse(text)
    _check_parse(text.encode("utf-8", "surrogatepass"))


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(["*", "0", "*/15", "1-5", "0,30"]),
    st.sampled_from(["*", "3", "*/2", "9-17"]),
    st.sampled_from(["*", "1", "15", "1-7", "28"]),
    st.sampled_from(["*", "1", "*/3", "JAN-JUN"]),
    st.sampled_from(["*", "0", "1-5", "SUN"]),
    st.text(st.characters(codec="utf-8", categories=["L", "N", "P", "S"]), min_size=1, max_size=30)
    .filter(lambda s: not s[0].isdigit() and s[0] not in "*?/,-#")
    # A first word such as WED or mon-fri is a Quartz 6th field, rejected on purpose.
    .filter(lambda s: not jobfile._looks_like_a_field(s.split()[0] if s.split() else s)),
)
def test_valid_five_field_lines_always_parse(minute, hour, dom, month, dow, command):
    job = only_job(f"{minute} {hour} {dom} {month} {dow} {command}")
    assert job.schedule == f"{minute} {hour} {dom} {month} {dow}"
    assert job.command == command


# -- schedules repeated over many lines (validated once, reported per line) -------


def test_a_repeated_bad_schedule_is_reported_on_each_of_its_lines():
    text = "0 0 31 2 * a\n* * * * * b\n0 0 31 2 * c\n61 * * * * d\n61 * * * * e\n"
    out_of_range = one_error("61 * * * * d").removeprefix(f"{FILE}:1: ")
    assert out_of_range.startswith("invalid schedule '61 * * * *'")
    assert errors(text) == [
        f"{FILE}:1: schedule '0 0 31 2 *' never fires (no such date)",
        f"{FILE}:3: schedule '0 0 31 2 *' never fires (no such date)",
        f"{FILE}:4: {out_of_range}",
        f"{FILE}:5: {out_of_range}",
    ]


def test_a_schedule_seen_valid_is_still_checked_with_each_line_s_time_zone():
    text = "0 9 * * * a\ntz=Mars/Olympus 0 9 * * * b\ntz=Europe/Paris 0 9 * * * c\n0 9 * * * d\n"
    assert errors(text) == [f"{FILE}:2: option tz: unknown time zone 'Mars/Olympus'"]
    good = jobfile.parse(text.replace("Mars/Olympus", "Asia/Tokyo"), FILE).jobs
    assert [(j.line, j.tz) for j in good] == [
        (1, None),
        (2, "Asia/Tokyo"),
        (3, "Europe/Paris"),
        (4, None),
    ]


def test_a_file_of_many_jobs_on_few_schedules_parses_each_line():
    lines = [f"name=j{i} {i % 7} {i % 3} * * * run {i}" for i in range(3000)]
    jobs = jobfile.parse("\n".join(lines), FILE).jobs
    assert len(jobs) == 3000
    assert [(j.line, j.schedule, j.command) for j in jobs[:2]] == [
        (1, "0 0 * * *", "run 0"),
        (2, "1 1 * * *", "run 1"),
    ]
    bad = "\n".join([*lines, "name=x 0 0 30 2 * late"])
    assert errors(bad) == [f"{FILE}:3001: schedule '0 0 30 2 *' never fires (no such date)"]
