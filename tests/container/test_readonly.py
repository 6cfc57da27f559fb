"""The image on a read-only root filesystem (``docker run --read-only``).

Only two places must be writable, each a tmpfs: KCRON_RUN_DIR (/run/kcron:
the rendered pools.conf, supervisord's socket and pid file; owned by the
image's uid 10001) and /tmp (supervisord will not start without a usable
temporary directory). Everything else, the job file included, stays
read-only. The container joins the host network and the test broker
(tests/conftest.py: KCRON_TEST_BOOTSTRAP or one started for the run).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Broker
from tests.container.conftest import FIGURES, run

pytestmark = pytest.mark.container

# What --read-only needs, exactly as docs/containers.md shows it.
TMPFS = ["--tmpfs", "/run/kcron:uid=10001,gid=10001,mode=0755", "--tmpfs", "/tmp:mode=1777"]
JOB = (
    "name=ro * * * * * sh -c 'touch /tmp/kcron-ro && echo tmp-writable; "
    "touch /etc/kcron-ro 2>/dev/null || echo rootfs-read-only; id -u'\n"
)


@pytest.fixture
def read_only_container(
    kcron_image: str, broker: Broker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A supervised kcron (1 producer, 1 consumer) on a read-only root, on its own topic."""
    jobs = tmp_path_factory.mktemp("readonly") / "jobs.cron"
    jobs.write_text(JOB)
    jobs.chmod(0o644)
    jobs.parent.chmod(0o755)
    name = f"kcrontest-ro-{uuid.uuid4().hex[:8]}"
    topic = f"kcron.test.ro.{uuid.uuid4().hex[:8]}"
    argv = ["docker", "run", "-d", "--name", name, "--read-only", *TMPFS, "--network", "host"]
    for key, value in {
        "KCRON_BOOTSTRAP_SERVERS": broker.bootstrap,
        "KCRON_TOPIC": topic,
        "KCRON_CONSUMERS": "1",
        "KCRON_SESSION_TIMEOUT_MS": "6000",
        # Host networking: metrics ports clear of the compose project's.
        "KCRON_METRICS_PORT_OFFSET": "5000",
    }.items():
        argv += ["-e", f"{key}={value}"]
    run([*argv, "-v", f"{jobs}:/etc/kcron/jobs.cron:ro", kcron_image])
    try:
        yield name
    finally:
        run(["docker", "rm", "-f", name], check=False)


def _logs(name: str) -> str:
    out = run(["docker", "logs", name], check=False)
    return out.stdout + out.stderr


def _wait(name: str, predicate: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while predicate not in _logs(name):
        if time.monotonic() > deadline:
            raise AssertionError(f"no '{predicate}' after {timeout:g} s\n{_logs(name)[-6000:]}")
        time.sleep(0.5)


def _health(name: str) -> str:
    out = run(["docker", "inspect", "-f", "{{json .State}}", name])
    state = json.loads(out.stdout)
    return str(state.get("Health", {}).get("Status", state["Status"]))


def test_a_read_only_container_starts_gets_healthy_and_runs_a_backfilled_job(
    read_only_container: str,
) -> None:
    name = read_only_container
    started = time.monotonic()
    _wait(name, "partitions assigned", 60)
    status = run(["docker", "exec", name, "supervisorctl", "status"]).stdout
    assert status.count("RUNNING") == 2, status  # the producer and the consumer
    check = run(["docker", "exec", name, "kcron", "check", "/etc/kcron/jobs.cron", "--count", "1"])
    assert "1 job" in check.stdout + check.stderr
    window = ["--from", "2026-01-01T00:00:00Z", "--to", "2026-01-01T00:01:00Z"]
    run(["docker", "exec", name, "kcron", "backfill", "--jobs", "/etc/kcron/jobs.cron", *window])
    _wait(name, "run succeeded", 30)
    logs = _logs(name)
    assert "tmp-writable" in logs and "rootfs-read-only" in logs
    assert "] 10001 stream=stdout" in logs  # the job ran as the image's user, not root
    deadline = time.monotonic() + 90  # the healthcheck runs every 15 s
    while (health := _health(name)) != "healthy":
        assert health in ("starting", "running"), f"{health}\n{logs[-4000:]}"
        assert time.monotonic() < deadline, f"not healthy after 90 s\n{_logs(name)[-4000:]}"
        time.sleep(1)
    FIGURES["read-only"] = (
        f"--read-only with tmpfs /run/kcron and /tmp: healthy, backfilled run ok, "
        f"{time.monotonic() - started:.0f} s"
    )


def test_without_the_tmpfs_the_read_only_container_says_why_it_cannot_start(
    kcron_image: str,
) -> None:
    result = run(
        ["docker", "run", "--rm", "--read-only", "--network", "none", kcron_image],
        check=False,
        timeout=60,
    )
    assert result.returncode != 0
    assert "Read-only file system: '/run/kcron/pools.conf.tmp'" in result.stderr


def test_the_tmpfs_list_is_the_one_documented() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs/containers.md").read_text()
    assert " ".join(TMPFS) in doc
