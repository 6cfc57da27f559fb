"""--run-as: whom jobs run as, the refusals at start, and the switch itself."""

from __future__ import annotations

import grp
import logging
import os
import pwd
import queue

import pytest

from kcron.errors import ConfigError, ExitCode
from kcron.executor import Credentials, ExecSpec, Outcome, run
from kcron.metrics import WorkerMetrics
from kcron.runas import job_credentials, log_job_user, resolve
from kcron.settings import Settings
from kcron.worker.runner import Done, Job, JobRunner, ThreadPool, run_environment
from tests.unit.fake_worker_kafka import T0, TOPIC, a_run

pytestmark = pytest.mark.timeout(20)

NOBODY = pwd.getpwnam("nobody")
ROOT, NOT_ROOT = 0, 4242
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")


def test_a_user_resolves_to_its_uid_gid_groups_and_home():
    creds = resolve("nobody")
    assert (creds.user, creds.uid, creds.gid) == ("nobody", NOBODY.pw_uid, NOBODY.pw_gid)
    assert NOBODY.pw_gid in creds.groups
    assert creds.home == NOBODY.pw_dir
    assert resolve(str(NOBODY.pw_uid)) == creds  # a numeric uid names the same user


def test_supplementary_groups_come_from_the_group_database():
    root = resolve("root")
    member_of = [g for g in grp.getgrall() if "root" in g.gr_mem]
    assert set(root.groups) == {0} | {g.gr_gid for g in member_of}


def test_an_unknown_user_is_a_config_error():
    with pytest.raises(ConfigError, match="no such user 'no-such-user-kcron'") as err:
        resolve("no-such-user-kcron")
    assert err.value.exit_code == ExitCode.CONFIG == 78
    with pytest.raises(ConfigError, match="no such user"):
        job_credentials(Settings(run_as="no-such-user-kcron"), ROOT)


def test_root_without_run_as_refuses_unless_allowed():
    with pytest.raises(ConfigError, match="refusing to run jobs as root: give --run-as USER"):
        job_credentials(Settings(), ROOT)
    assert job_credentials(Settings(allow_root_jobs=True), ROOT) is None


def test_run_as_root_is_root_jobs_too():
    with pytest.raises(ConfigError, match="--run-as root is root: add --allow-root-jobs"):
        job_credentials(Settings(run_as="root"), ROOT)
    with pytest.raises(ConfigError, match="is root"):
        job_credentials(Settings(run_as="0"), ROOT)


def test_root_with_run_as_switches_to_that_user():
    creds = job_credentials(Settings(run_as="nobody"), ROOT)
    assert creds is not None and creds.uid == NOBODY.pw_uid


def test_a_worker_that_is_not_root_runs_jobs_as_itself():
    assert job_credentials(Settings(), NOT_ROOT) is None
    # asking for its own user needs no switch
    assert job_credentials(Settings(run_as="nobody"), NOBODY.pw_uid) is None


def test_a_worker_that_is_not_root_cannot_switch_to_another_user():
    with pytest.raises(ConfigError, match="runs as uid 4242, not root, and cannot switch"):
        job_credentials(Settings(run_as="nobody"), NOT_ROOT)


def test_whom_jobs_run_as_is_said_at_start(caplog):
    caplog.set_level(logging.INFO, logger="kcron")
    log_job_user(resolve("nobody"), ROOT)
    log_job_user(None, ROOT)
    log_job_user(None, NOT_ROOT)
    said = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert said[0] == ("INFO", "jobs run as another user")
    assert said[1][0] == "WARNING" and said[1][1].startswith("jobs run as root")
    assert len(said) == 2  # a worker that is not root runs jobs as itself, quietly


def test_the_job_environment_names_the_user_and_drops_the_worker_credentials():
    base = {"HOME": "/root", "USER": "root", "PATH": "/bin", "KCRON_KAFKA_OPTIONS": "x=y"}
    creds = Credentials("nobody", 65534, 65534, (65534,), "/nonexistent")
    env = run_environment(a_run("j"), base, creds)
    assert (env["HOME"], env["USER"], env["LOGNAME"]) == ("/nonexistent", "nobody", "nobody")
    assert "KCRON_KAFKA_OPTIONS" not in env and env["PATH"] == "/bin"
    assert run_environment(a_run("j"), base)["KCRON_KAFKA_OPTIONS"] == "x=y"  # unchanged


def _output(spec: ExecSpec) -> tuple[Outcome, list[str]]:
    lines: list[str] = []
    result = run(spec, lambda _stream, line: lines.append(line))
    return result.outcome, lines


@as_root
def test_the_executor_runs_a_job_as_another_user():
    creds = resolve("nobody")
    outcome, lines = _output(
        ExecSpec(
            "sh -c 'id -u; id -g; id -G; pwd'", credentials=creds, env={"PATH": "/bin:/usr/bin"}
        )
    )
    assert outcome is Outcome.SUCCEEDED
    assert lines[0] == str(NOBODY.pw_uid) and lines[1] == str(NOBODY.pw_gid)
    assert sorted(map(int, lines[2].split())) == sorted(creds.groups)
    assert lines[3] == creds.workdir  # its home, or / when it has none


@as_root
def test_a_timed_out_job_of_another_user_is_killed_with_its_group():
    creds = resolve("nobody")
    spec = ExecSpec("sh -c 'sleep 30 & sleep 30'", timeout_s=0.5, credentials=creds)
    result = run(spec, lambda _s, _l: None, kill_grace_s=0.5)
    assert result.outcome is Outcome.TIMED_OUT
    assert result.duration_s < 5


@as_root
def test_a_worker_pool_runs_jobs_as_the_run_as_user(caplog):
    caplog.set_level(logging.INFO, logger="kcron")
    done: queue.SimpleQueue[Done] = queue.SimpleQueue()
    runner = JobRunner(1024, TOPIC, WorkerMetrics(), lambda: T0, run_as=resolve("nobody"))
    pool = ThreadPool(runner, 1, done.put)
    run_msg = a_run("who", command="sh -c 'id -u; echo $USER $HOME'", max_attempts=1)
    pool.submit(Job(run_msg, (TOPIC, 0), 0, 1))
    back = done.get(timeout=10)
    pool.close()
    assert back.result is not None and back.result.outcome is Outcome.SUCCEEDED
    lines = [r.getMessage() for r in caplog.records if r.name == "kcron.job"]
    assert lines == [str(NOBODY.pw_uid), f"nobody {NOBODY.pw_dir}"]


def _consume(monkeypatch: pytest.MonkeyPatch, euid: int, *args: str, **env: str):
    from click.testing import CliRunner

    from kcron.cli import cli

    monkeypatch.setattr("kcron.runas.os.geteuid", lambda: euid)
    clean = {k: None for k in os.environ if k.startswith("KCRON_")}
    # 127.0.0.1:9 answers nothing: a worker that got past the check would hang, not exit 78.
    argv = ["consume", "--bootstrap-servers", "127.0.0.1:9", *args]
    return CliRunner().invoke(cli, argv, env={**clean, **env})


def test_consume_as_root_without_run_as_exits_78_with_the_reason(monkeypatch):
    result = _consume(monkeypatch, ROOT)
    assert result.exit_code == 78
    assert "refusing to run jobs as root: give --run-as USER" in result.output


def test_consume_with_an_unknown_user_exits_78(monkeypatch):
    result = _consume(monkeypatch, ROOT, "--run-as", "no-such-user-kcron")
    assert result.exit_code == 78
    assert "no such user 'no-such-user-kcron'" in result.output


def test_consume_not_root_asking_for_another_user_exits_78(monkeypatch):
    result = _consume(monkeypatch, NOT_ROOT, KCRON_RUN_AS="nobody")
    assert result.exit_code == 78
    assert "cannot switch to another user" in result.output
