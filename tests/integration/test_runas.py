"""--run-as with a real worker and broker: a worker started as root runs jobs as
another user, and will not run them as root unasked."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from tests.conftest import Broker
from tests.support import Kcron, backfill, kcron_env

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs a worker run as root"),
]


def test_a_root_worker_runs_a_backfilled_job_as_the_run_as_user(
    broker: Broker, topic: str, group: str, tmp_path: Path, procs: list[Kcron]
) -> None:
    nobody = pwd.getpwnam("nobody")
    jobs = tmp_path / "jobs.cron"
    jobs.write_text("""name=who * * * * * sh -c 'echo "$(id -u) $(id -g) $USER"'\n""")
    env = kcron_env(broker.bootstrap, topic, group, KCRON_RUN_AS="nobody")
    consumer = Kcron(["consume"], env, tmp_path / "consume.log")
    procs.append(consumer)
    consumer.wait_for(lambda: consumer.messages("jobs run as another user"), 30, "the start")
    backfill(broker.bootstrap, topic, jobs, "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z")
    consumer.wait_for(lambda: consumer.messages("run succeeded"), 30, "the run")
    output = [r["msg"] for r in consumer.records() if r["logger"] == "kcron.job"]
    assert output == [f"{nobody.pw_uid} {nobody.pw_gid} nobody"]
    said = consumer.messages("jobs run as another user")[0]
    assert (said["run_as"], said["uid"]) == ("nobody", nobody.pw_uid)


def test_a_root_worker_without_run_as_refuses_to_start(
    broker: Broker, topic: str, group: str, tmp_path: Path, procs: list[Kcron]
) -> None:
    env = kcron_env(broker.bootstrap, topic, group, KCRON_ALLOW_ROOT_JOBS="false")
    consumer = Kcron(["consume"], env, tmp_path / "consume.log")
    procs.append(consumer)
    assert consumer.wait(30) == 78
    assert "refusing to run jobs as root: give --run-as USER" in consumer.text()
