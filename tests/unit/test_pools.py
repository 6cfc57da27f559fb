"""The consumer pools per queue (etc/render-pools.py) and the image's healthcheck.

The renderer is not part of the kcron package (it runs before kcron, in
etc/run-local.sh and the image's entrypoint), so it is loaded from its file.
What supervisord makes of its output is checked with supervisord's own
config parser: the process names a user sees in `supervisorctl status`.
"""

from __future__ import annotations

import importlib.util
import os
import stat
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from supervisor.options import ServerOptions

from tests.support import REPO

CONF = REPO / "etc" / "supervisord.conf"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("render_pools", REPO / "etc/render-pools.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


pools = _load()


def render(tmp_path: Path, capsys: pytest.CaptureFixture[str], **env: str) -> tuple[int, str, str]:
    """main() as a launcher runs it: (exit code, stdout, stderr); the file in tmp_path."""
    code = pools.main(["--conf", str(CONF), "--out", str(tmp_path / "pools.conf")], env=env)
    out, err = capsys.readouterr()
    return code, out, err


def supervised(tmp_path: Path, consumers: str) -> dict[str, list[str]]:
    """{group: [process, ...]} as supervisord reads etc/supervisord.conf + the rendered file."""
    options = ServerOptions()
    options.environ_expansions = {
        "ENV_KCRON_RUN_DIR": str(tmp_path),
        "ENV_KCRON_JOBS": "/etc/kcron/jobs.cron",
        "ENV_KCRON_PRODUCER": "false",
        "ENV_KCRON_CONSUMERS": consumers,
    }
    section = options.read_config(str(CONF))
    return {
        group.name: [process.name for process in group.process_configs]
        for group in section.process_group_configs
    }


def names(**env: str) -> list[str]:
    return [name for pool in pools.parse_pools(env) for name in pool.process_names()]


# --- what a setting means -------------------------------------------------------


def test_without_kcron_queues_the_default_queue_has_kcron_consumers_workers_as_before() -> None:
    assert names() == ["kcron-consumer-00", "kcron-consumer-01"]
    assert names(KCRON_CONSUMERS="3") == [f"kcron-consumer-0{n}" for n in range(3)]
    assert names(KCRON_QUEUES="  ", KCRON_CONSUMERS="1") == ["kcron-consumer-00"]


def test_kcron_queues_names_each_pools_processes_after_its_queue() -> None:
    assert names(KCRON_QUEUES="kcron.jobs=2 cluster-a=2 cluster-b=1") == [
        "kcron-consumer-00",
        "kcron-consumer-01",
        "kcron-consumer-cluster-a-00",
        "kcron-consumer-cluster-a-01",
        "kcron-consumer-cluster-b-00",
    ]
    # commas work as separators too
    assert names(KCRON_QUEUES="cluster-b=1,kcron.jobs=1") == [
        "kcron-consumer-00",
        "kcron-consumer-cluster-b-00",
    ]


def test_kcron_queues_wins_a_queue_it_does_not_name_gets_no_worker() -> None:
    """How a consumer-only node serves just its queue: KCRON_CONSUMERS is then ignored."""
    parsed = pools.parse_pools({"KCRON_QUEUES": "cluster-a=1", "KCRON_CONSUMERS": "4"})
    assert [(p.queue, p.count) for p in parsed] == [("kcron.jobs", 0), ("cluster-a", 1)]
    assert names(KCRON_QUEUES="cluster-a=1", KCRON_CONSUMERS="4") == ["kcron-consumer-cluster-a-00"]


def test_the_default_queue_is_kcron_topic() -> None:
    env = {"KCRON_TOPIC": "jobs.main", "KCRON_QUEUES": "jobs.main=1 kcron.jobs=1"}
    assert names(**env) == ["kcron-consumer-00", "kcron-consumer-kcron.jobs-00"]


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("cluster-a", "'cluster-a' is not NAME=COUNT"),
        ("=2", "'=2' is not NAME=COUNT"),
        ("cluster-a=-1", "count must be a whole number from 0 to 99, not '-1'"),
        ("cluster-a=two", "count must be a whole number from 0 to 99, not 'two'"),
        ("cluster-a=100", "count must be a whole number from 0 to 99, not '100'"),
        ("cluster-a=", "count must be a whole number from 0 to 99, not ''"),
        ("cluster/a=1", "'cluster/a' is not a legal Kafka topic name"),
        ("..=1", "'..' is not a legal Kafka topic name"),
        (f"{'q' * 250}=1", "is not a legal Kafka topic name"),
        ("cluster-a=1 cluster-a=2", "queue 'cluster-a' is named twice"),
        ("cluster-a.dlq=1", "'cluster-a.dlq' is a topic kcron derives from a queue"),
    ],
)
def test_a_bad_kcron_queues_is_a_clear_error_exit_78_and_nothing_written(
    spec: str, reason: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = render(tmp_path, capsys, KCRON_QUEUES=spec)
    assert code == 78 and out == ""
    assert err.startswith("render-pools: KCRON_QUEUES") and reason in err, err
    assert not (tmp_path / "pools.conf").exists()


def test_a_bad_kcron_consumers_or_topic_is_an_error_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = render(tmp_path, capsys, KCRON_CONSUMERS="-1")
    assert code == 78 and "render-pools: KCRON_CONSUMERS: count must be" in err
    code, _, err = render(tmp_path, capsys, KCRON_TOPIC="a b", KCRON_QUEUES="x=1")
    assert code == 78 and "render-pools: KCRON_TOPIC: 'a b' is not a legal" in err


# --- what supervisord runs -------------------------------------------------------


def test_supervisord_runs_one_group_per_pool_each_a_copy_of_the_default_section(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = render(tmp_path, capsys, KCRON_QUEUES="kcron.jobs=2 cluster-a=2 cluster-b=1")
    assert code == 0
    assert out == "2\n"  # the default pool's size: the launcher exports it as KCRON_CONSUMERS
    assert err == (
        "consumer pools: kcron.jobs=2 (kcron-consumer-00..01), "
        "cluster-a=2 (kcron-consumer-cluster-a-00..01), "
        "cluster-b=1 (kcron-consumer-cluster-b-00)\n"
    )
    groups = supervised(tmp_path, out.strip())
    assert groups == {
        "kcron-consumer": ["kcron-consumer-00", "kcron-consumer-01"],
        "kcron-consumer-cluster-a": ["kcron-consumer-cluster-a-00", "kcron-consumer-cluster-a-01"],
        "kcron-consumer-cluster-b": ["kcron-consumer-cluster-b-00"],
        "kcron-producer": ["kcron-producer"],
    }
    options = ServerOptions()
    options.environ_expansions = {
        "ENV_KCRON_RUN_DIR": str(tmp_path),
        "ENV_KCRON_JOBS": "j",
        "ENV_KCRON_PRODUCER": "true",
        "ENV_KCRON_CONSUMERS": "2",
    }
    configs = {
        p.name: p
        for g in options.read_config(str(CONF)).process_group_configs
        for p in g.process_configs
    }
    default, queue_a = configs["kcron-consumer-00"], configs["kcron-consumer-cluster-a-01"]
    # Each process its own metrics port: 9401 + n, the first other pool 9501 + n.
    assert default.command == "kcron consume --metrics-port 9401+0"
    assert queue_a.command == "kcron consume --metrics-port 9501+1 --topic cluster-a"
    assert configs["kcron-producer"].command == "kcron produce --jobs j --metrics-port 9400"
    # Every setting but the command is the default pool's: same stop timeout,
    # restart policy, priority (before the producer) and logs.
    for attr in ("stopwaitsecs", "stopsignal", "autorestart", "startsecs", "priority"):
        assert getattr(queue_a, attr) == getattr(default, attr), attr
    assert queue_a.stdout_logfile == "/dev/stdout" and queue_a.stderr_logfile == "/dev/stderr"
    assert queue_a.priority < configs["kcron-producer"].priority


def test_a_consumer_only_node_of_one_queue_runs_only_that_pool(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = render(tmp_path, capsys, KCRON_QUEUES="cluster-a=1", KCRON_PRODUCER="false")
    assert (code, out) == (0, "0\n")
    groups = supervised(tmp_path, out.strip())
    assert groups["kcron-consumer"] == []  # numprocs=0: listed nowhere
    assert groups["kcron-consumer-cluster-a"] == ["kcron-consumer-cluster-a-00"]


def test_rendering_again_replaces_the_pools_of_the_last_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    render(tmp_path, capsys, KCRON_QUEUES="cluster-a=1 cluster-b=1")
    code, out, _ = render(tmp_path, capsys)
    assert (code, out) == (0, "2\n")
    assert set(supervised(tmp_path, "2")) == {"kcron-consumer", "kcron-producer"}


def test_targets_list_each_process_port_as_supervisord_passes_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {"KCRON_QUEUES": "kcron.jobs=2 cluster-a=1 cluster-z=0 cluster-b=2"}
    code, out, _ = render(tmp_path, capsys, **env)
    assert code == 0
    options = ServerOptions()
    options.environ_expansions = {
        "ENV_KCRON_RUN_DIR": str(tmp_path),
        "ENV_KCRON_JOBS": "j",
        "ENV_KCRON_PRODUCER": "true",
        "ENV_KCRON_CONSUMERS": out.strip(),
    }
    passed = {
        # "--metrics-port 9501+1": kcron adds it up (tests/unit/test_cli.py)
        p.name: str(sum(map(int, p.command.split("--metrics-port ")[1].split()[0].split("+"))))
        for g in options.read_config(str(CONF)).process_group_configs
        for p in g.process_configs
    }
    assert pools.main(["--targets"], env=env) == 0
    listed = dict(line.split() for line in capsys.readouterr().out.splitlines())
    assert listed == passed
    assert listed == {
        "kcron-producer": "9400",
        "kcron-consumer-00": "9401",
        "kcron-consumer-01": "9402",
        "kcron-consumer-cluster-a-00": "9501",
        # cluster-z=0 still holds its hundred: adding a worker to it moves no other port
        "kcron-consumer-cluster-b-00": "9701",
        "kcron-consumer-cluster-b-01": "9702",
    }
    assert pools.main(["--targets"], env={**env, "KCRON_PRODUCER": "false"}) == 0
    assert "kcron-producer" not in capsys.readouterr().out


def test_usage_without_arguments_is_exit_64(capsys: pytest.CaptureFixture[str]) -> None:
    assert pools.main([], env={}) == 64
    assert "--conf and --out, or --names" in capsys.readouterr().err


# --- the image's healthcheck --------------------------------------------------------


def healthcheck(tmp_path: Path, status: str, **env: str) -> subprocess.CompletedProcess[str]:
    """containers/healthcheck.sh with a fake supervisorctl printing ``status``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "supervisorctl"
    (tmp_path / "status").write_text(status)
    rc = 3 if any(" RUNNING " not in f"{line} " for line in status.splitlines()) else 0
    fake.write_text(f"#!/bin/sh\ncat {tmp_path / 'status'}\nexit {rc}\n")
    renderer = bin_dir / "kcron-render-pools"
    renderer.write_text(f'#!/bin/sh\nexec {sys.executable} {REPO / "etc/render-pools.py"} "$@"\n')
    for script in (fake, renderer):
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    path = f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin"
    return subprocess.run(
        ["sh", str(REPO / "containers/healthcheck.sh")],
        env={"PATH": path, **env},
        capture_output=True,
        text=True,
        check=False,
    )


def row(name: str, state: str) -> str:
    group = name if name == "kcron-producer" else name.rsplit("-", 1)[0]
    prefix = "" if name == "kcron-producer" else f"{group}:"
    return f"{prefix}{name}   {state}   pid 7, uptime 0:00:09\n"


QUEUES = "kcron.jobs=1 cluster-a=2"
POOL_ROWS = ("kcron-consumer-00", "kcron-consumer-cluster-a-00", "kcron-consumer-cluster-a-01")


def test_healthcheck_is_healthy_when_every_pool_is_running(tmp_path: Path) -> None:
    status = "".join(row(n, "RUNNING") for n in (*POOL_ROWS, "kcron-producer"))
    result = healthcheck(tmp_path, status, KCRON_QUEUES=QUEUES)
    assert result.returncode == 0, result.stdout
    assert result.stdout.strip().endswith("healthy")


@pytest.mark.parametrize(
    ("states", "said"),
    [
        ({"kcron-consumer-cluster-a-01": "BACKOFF"}, "kcron-consumer-cluster-a-01=BACKOFF"),
        ({"kcron-consumer-cluster-a-01": None}, "kcron-consumer-cluster-a-01=missing"),
        ({"kcron-consumer-00": "FATAL"}, "kcron-consumer-00=FATAL"),
        ({"kcron-producer": "STARTING"}, "kcron-producer=STARTING"),
    ],
)
def test_healthcheck_is_unhealthy_when_any_pool_is_not_running(
    tmp_path: Path, states: dict[str, str | None], said: str
) -> None:
    wanted = {n: "RUNNING" for n in (*POOL_ROWS, "kcron-producer")} | states
    status = "".join(row(n, s) for n, s in wanted.items() if s is not None)
    result = healthcheck(tmp_path, status, KCRON_QUEUES=QUEUES)
    assert result.returncode == 1
    assert result.stdout.strip().splitlines()[-1] == f"unhealthy: {said}"


def test_healthcheck_of_a_consumer_only_node_of_one_queue(tmp_path: Path) -> None:
    status = row("kcron-consumer-cluster-b-00", "RUNNING") + row("kcron-producer", "STOPPED")
    ok = healthcheck(tmp_path, status, KCRON_QUEUES="cluster-b=1", KCRON_PRODUCER="false")
    assert ok.returncode == 0, ok.stdout
    # The same node without its pool's process.
    stopped = row("kcron-producer", "STOPPED")
    lost = healthcheck(tmp_path, stopped, KCRON_QUEUES="cluster-b=1", KCRON_PRODUCER="false")
    assert lost.returncode == 1 and "kcron-consumer-cluster-b-00=missing" in lost.stdout


def test_healthcheck_with_a_bad_setting_is_unhealthy_and_says_why(tmp_path: Path) -> None:
    result = healthcheck(tmp_path, row("kcron-producer", "RUNNING"), KCRON_QUEUES="cluster-a")
    assert result.returncode == 1
    assert "unhealthy: render-pools: KCRON_QUEUES: 'cluster-a' is not NAME=COUNT" in result.stdout
