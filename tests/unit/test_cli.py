"""The command line as a user meets it: messages, exit codes, env vars. No broker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from kcron.cli import cli
from kcron.errors import ExitCode

FIVE_ERRORS = """\
# five different mistakes, one per line
61 * * * * echo minute out of range
* * * * * * echo six fields
colour=blue * * * * * echo unknown option
@every echo not a macro
* * * * *
name=ok * * * * * echo fine
"""


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def write(tmp_path: Path, text: str, name: str = "jobs.cron") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_check_lists_every_error_with_file_and_line(runner: CliRunner, tmp_path: Path) -> None:
    path = write(tmp_path, FIVE_ERRORS)
    result = runner.invoke(cli, ["check", str(path)])
    assert result.exit_code == ExitCode.DATAERR == 65
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith(f"{path}:")]
    assert [int(ln.split(":")[1]) for ln in lines] == [2, 3, 4, 5, 6]
    assert "0-59" in lines[0]
    assert "6th field" in lines[1]
    assert "unknown option 'colour'" in lines[2]
    assert "unknown macro '@every'" in lines[3]
    assert "missing command" in lines[4]
    assert result.stderr.rstrip().endswith("5 errors in job file")


def test_check_shows_each_job_with_its_next_three_runs(runner: CliRunner, tmp_path: Path) -> None:
    path = write(tmp_path, 'name=five timeout=30s attempts=3 */5 * * * * echo "hello world"\n')
    result = runner.invoke(cli, ["check", str(path)])
    assert result.exit_code == 0, result.output
    assert "five" in result.stdout
    assert 'echo "hello world"' in result.stdout
    assert "timeout=30s attempts=3" in result.stdout
    next_line = next(ln for ln in result.stdout.splitlines() if "next:" in ln)
    times = next_line.split("next:")[1].split(", ")
    assert len(times) == 3
    assert all(
        t.strip()[14:16] in {"00", "05", "10", "15", "20", "25", "30", "35", "40", "45", "50", "55"}
        for t in times
    )
    assert "OK, 1 job" in result.stdout


def test_check_json_output_is_machine_readable(runner: CliRunner, tmp_path: Path) -> None:
    path = write(tmp_path, "@reboot echo boot\n0 0 1 * * echo monthly\n")
    result = runner.invoke(cli, ["check", "--format", "json", str(path)])
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert [j["schedule"] for j in doc["jobs"]] == ["@reboot", "0 0 1 * *"]
    assert doc["jobs"][0]["next"] == ["at producer start"]
    assert all(t.endswith("-01T00:00:00.000Z") for t in doc["jobs"][1]["next"])


def test_check_reads_the_timezone_from_env_and_the_flag_wins(
    runner: CliRunner, tmp_path: Path
) -> None:
    path = write(tmp_path, "0 9 * * * echo nine\n")
    from_env = runner.invoke(
        cli, ["check", "--count", "1", str(path)], env={"KCRON_TIMEZONE": "Asia/Tokyo"}
    )
    assert "T00:00:00.000Z" in from_env.stdout  # 09:00 in Tokyo is 00:00 UTC
    from_flag = runner.invoke(
        cli,
        ["check", "--count", "1", "--timezone", "UTC", str(path)],
        env={"KCRON_TIMEZONE": "Asia/Tokyo"},
    )
    assert "T09:00:00.000Z" in from_flag.stdout


def test_missing_job_file_is_a_clear_error(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(cli, ["check", str(tmp_path / "nope.cron")])
    assert result.exit_code == ExitCode.NOINPUT
    assert "no such job file" in result.stderr
    assert "Traceback" not in result.output


def test_produce_refuses_a_bad_file_before_touching_kafka(
    runner: CliRunner, tmp_path: Path
) -> None:
    path = write(tmp_path, FIVE_ERRORS)
    result = runner.invoke(
        cli, ["produce", "--jobs", str(path), "--bootstrap-servers", "127.0.0.1:1"]
    )
    assert result.exit_code == 65
    assert result.stderr.count(f"{path}:") == 5


def test_backfill_dry_run_lists_the_window_half_open(runner: CliRunner, tmp_path: Path) -> None:
    path = write(tmp_path, "name=q */15 * * * * echo quarter\n")
    result = runner.invoke(
        cli,
        [
            "backfill",
            "--jobs",
            str(path),
            "--from",
            "2026-03-01T10:00Z",
            "--to",
            "2026-03-01T11:00Z",
            "--dry-run",
        ],
    )
    assert result.exit_code == 0, result.output
    assert [ln.split()[0] for ln in result.stdout.splitlines()] == [
        "2026-03-01T10:00:00.000Z",
        "2026-03-01T10:15:00.000Z",
        "2026-03-01T10:30:00.000Z",
        "2026-03-01T10:45:00.000Z",
    ]


def test_backfill_rejects_a_backwards_window(runner: CliRunner, tmp_path: Path) -> None:
    path = write(tmp_path, "* * * * * echo x\n")
    result = runner.invoke(
        cli, ["backfill", "--jobs", str(path), "--from", "now", "--to", "now-1h", "--dry-run"]
    )
    assert result.exit_code == ExitCode.USAGE
    assert "--to must be later than --from" in result.stderr


def test_backfill_rejects_a_time_it_cannot_read(runner: CliRunner, tmp_path: Path) -> None:
    path = write(tmp_path, "* * * * * echo x\n")
    result = runner.invoke(
        cli, ["backfill", "--jobs", str(path), "--from", "yesterday-ish", "--dry-run"]
    )
    assert result.exit_code == ExitCode.USAGE
    assert "ISO 8601" in result.stderr


def test_invalid_settings_name_the_problem(runner: CliRunner, tmp_path: Path) -> None:
    path = write(tmp_path, "* * * * * echo x\n")
    result = runner.invoke(cli, ["produce", "--jobs", str(path), "--timezone", "Mars/Olympus"])
    assert result.exit_code == ExitCode.CONFIG
    assert "unknown time zone 'Mars/Olympus'" in result.stderr


def test_bad_kafka_option_is_a_usage_error(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["consume", "-X", "no-equals-sign"])
    assert result.exit_code == ExitCode.USAGE
    assert "KEY=VALUE" in result.stderr


def test_help_names_the_env_var_of_each_option(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["consume", "--help"])
    assert result.exit_code == 0
    for var in (
        "KCRON_BOOTSTRAP_SERVERS",
        "KCRON_TOPIC",
        "KCRON_GROUP",
        "KCRON_CONCURRENCY",
        "KCRON_GRACE",
        "KCRON_LOG_FORMAT",
        "KCRON_LOG_LEVEL",
    ):
        assert var in result.stdout


def test_backfill_refuses_future_runs_that_belong_to_the_producer(
    runner: CliRunner, tmp_path: Path
) -> None:
    path = write(tmp_path, "* * * * * echo x\n")
    result = runner.invoke(
        cli, ["backfill", "--jobs", str(path), "--from", "now-1h", "--to", "now+1h"]
    )
    assert result.exit_code == ExitCode.USAGE
    assert "in the future" in result.stderr
    preview = runner.invoke(
        cli, ["backfill", "--jobs", str(path), "--from", "now", "--to", "now+10m", "--dry-run"]
    )
    assert preview.exit_code == 0
    assert len(preview.stdout.splitlines()) == 10


def test_check_from_lists_the_runs_strictly_after_an_instant(
    runner: CliRunner, tmp_path: Path
) -> None:
    # What runs over the Paris DST weekends of 2026, asked before they happen.
    path = write(
        tmp_path,
        "name=fixed tz=Europe/Paris 30 2 * * * echo fixed\n"
        "name=every2h tz=Europe/Paris 0 */2 * * * echo wild\n"
        "@reboot echo boot\n",
    )
    as_json = ["check", str(path), "--format", "json"]
    spring = runner.invoke(cli, [*as_json, "--from", "2026-03-29T00:00:00+01:00", "--count", "2"])
    assert spring.exit_code == 0, spring.output
    doc = json.loads(spring.stdout)
    assert doc["file"] == str(path)
    nexts = {job["name"]: job["next"] for job in doc["jobs"]}
    assert nexts["fixed"] == ["2026-03-29T01:00:00.000Z", "2026-03-30T00:30:00.000Z"]
    # Strictly after: the 00:00 run at --from is not listed; 02:00 does not exist
    # that night and a wildcard job does not run it late (no 03:00 run).
    assert nexts["every2h"] == ["2026-03-29T02:00:00.000Z", "2026-03-29T04:00:00.000Z"]
    assert doc["jobs"][2]["next"] == ["at producer start"]
    # A naive --from is read in --timezone.
    autumn = runner.invoke(
        cli, [*as_json, "--from", "2026-10-25T00:30", "--timezone", "Europe/Paris", "--count", "3"]
    )
    nexts = {job["name"]: job["next"] for job in json.loads(autumn.stdout)["jobs"]}
    assert nexts["fixed"] == [
        "2026-10-25T00:30:00.000Z",  # 02:30 CEST, once: not again at 02:30 CET
        "2026-10-26T01:30:00.000Z",
        "2026-10-27T01:30:00.000Z",
    ]
    assert nexts["every2h"] == [
        "2026-10-25T00:00:00.000Z",  # 02:00 CEST
        "2026-10-25T01:00:00.000Z",  # 02:00 CET: a wildcard job runs on both passes
        "2026-10-25T03:00:00.000Z",  # 04:00 CET
    ]


def test_check_from_rejects_what_is_not_a_time(runner: CliRunner, tmp_path: Path) -> None:
    path = write(tmp_path, "0 9 * * * echo nine\n")
    result = runner.invoke(cli, ["check", str(path), "--from", "next tuesday"])
    assert result.exit_code == ExitCode.USAGE
    assert "--from" in result.stderr
    assert "not a time" in result.stderr
