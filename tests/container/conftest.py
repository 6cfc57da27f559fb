"""Fixtures of the container tests (``pytest -m container``, ``make test-container``).

They build the kcron image (containers/build-image.sh) and bring up the
compose project of docker-compose.yml on host networking
(containers/compose-hostnet.sh), every byte on 127.0.0.1: apache/kafka when
that image is present or pullable, else the dev broker image.

No Docker engine: skipped, with the reason. Under CI (``CI=true``) that is a
failure instead (set ``KCRON_SKIP_CONTAINER_TESTS=1`` on a CI without Docker),
and so is anything that breaks once an engine answers.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kcron.broker import free_port
from tests.support import REPO

IMAGE = os.environ.get("KCRON_TEST_IMAGE", "kcron:test")
HERE = Path(__file__).resolve().parent

# Timings and facts for the summary at the end of the run.
FIGURES: dict[str, str] = {}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> None:
    """Skip, or fail under CI: there the container tests must really run."""
    if in_ci() and os.environ.get("KCRON_SKIP_CONTAINER_TESTS") != "1":
        pytest.fail(f"CI=true but {reason} (KCRON_SKIP_CONTAINER_TESTS=1 to skip them)")
    pytest.skip(reason)


def run(
    argv: list[str], *, timeout: float = 120, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{shlex.join(argv)} exited {result.returncode}\n"
            f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"
        )
    return result


def compose_command() -> list[str] | None:
    """`docker compose` (v2) if present, else docker-compose (v1), else None."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


@pytest.fixture(scope="session")
def compose_cmd() -> list[str]:
    if shutil.which("docker") is None:
        unavailable("no docker command (install Docker, e.g. .ci/docker-setup.sh)")
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        info = None
    if info is None or info.returncode != 0:
        unavailable(
            "no Docker engine answers (`docker info` failed; start one, e.g. .ci/docker-setup.sh)"
        )
    cmd = compose_command()
    if cmd is None:
        # The engine answers: from here on, anything missing is a failure.
        pytest.fail(
            "a Docker engine answers but neither `docker compose` nor docker-compose exists"
        )
    return cmd


@pytest.fixture(scope="session")
def kcron_image(compose_cmd: list[str]) -> str:
    """The image, built as `make image` builds it (cached layers make reruns fast).

    KCRON_TEST_IMAGE=name KCRON_TEST_BUILD=0 tests an image built elsewhere instead.
    """
    if os.environ.get("KCRON_TEST_BUILD") == "0":
        labels = run(["docker", "image", "inspect", "-f", "{{json .Config.Labels}}", IMAGE])
        base = (json.loads(labels.stdout) or {}).get("org.kcron.base-image", "?")
        FIGURES["image"] = f"{IMAGE} FROM {base} (prebuilt, KCRON_TEST_BUILD=0)"
        return IMAGE
    start = time.monotonic()
    result = run([str(REPO / "containers/build-image.sh"), IMAGE], timeout=900)
    elapsed = time.monotonic() - start
    base = result.stdout.strip().splitlines()[-1].removeprefix("BASE_IMAGE=")
    size = int(run(["docker", "image", "inspect", "-f", "{{.Size}}", IMAGE]).stdout)
    FIGURES["image"] = f"{IMAGE} FROM {base}: {size / 1e6:.0f} MB, build {elapsed:.1f} s"
    return IMAGE


@dataclass
class Project:
    """One compose project of the test run (unique name, host networking)."""

    cmd: list[str]
    name: str
    file: Path
    port: int
    broker: str
    started_at: float = 0.0
    cids: dict[str, str] = field(default_factory=dict)  # service -> container id

    def compose(
        self, *args: str, timeout: float = 180, check: bool = True, profiles: bool = False
    ) -> subprocess.CompletedProcess[str]:
        argv = [*self.cmd, "-p", self.name, "-f", str(self.file), "--project-directory", str(REPO)]
        if profiles:
            argv += ["--profile", "workers"]
        return run([*argv, *args], timeout=timeout, check=check)

    def exec(
        self, service: str, *argv: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return self.compose("exec", "-T", service, *argv, check=check, timeout=timeout)

    def container(self, service: str) -> str:
        if service not in self.cids:
            cid = self.compose("ps", "-q", service, profiles=True).stdout.strip()
            assert cid, f"no container for service {service}"
            self.cids[service] = cid
        return self.cids[service]

    def logs(self, service: str) -> str:
        """The container's raw stdout + stderr, as `docker logs` shows them."""
        out = run(["docker", "logs", self.container(service)])
        return out.stdout + out.stderr


@pytest.fixture(scope="module")
def project(
    compose_cmd: list[str], kcron_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Project]:
    """docker-compose.yml up on host networking, torn down (down -v) whatever happens."""
    workdir = tmp_path_factory.mktemp("compose")
    ports = set()
    while len(ports) < 3:
        ports.add(free_port())
    port, external, controller = sorted(ports)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KCRON_", "COMPOSE_")) and k != "DOCKER_HOST_IP"
    }
    env.update(
        KCRON_IMAGE=kcron_image,
        KCRON_CONSUMERS="2",
        KCRON_PARTITIONS="2",
        KCRON_CI_KAFKA_PORT=str(port),
        KCRON_CI_KAFKA_EXTERNAL_PORT=str(external),
        KCRON_CI_KAFKA_CONTROLLER_PORT=str(controller),
        COMPOSE=shlex.join(compose_cmd),
    )
    if "KCRON_PULL" in os.environ:
        env["KCRON_PULL"] = os.environ["KCRON_PULL"]
    rendered = workdir / "compose.yml"
    out = run(
        [
            str(REPO / "containers/compose-hostnet.sh"),
            str(rendered),
            str(HERE / "compose.test.yml"),
        ],
        env=env,
    )
    broker = out.stdout.split()[0].removeprefix("broker=")
    proj = Project(compose_cmd, f"kcrontest-{uuid.uuid4().hex[:8]}", rendered, port, broker)
    try:
        proj.started_at = time.time()
        proj.compose("up", "-d", "--no-build", timeout=300)
        FIGURES["compose"] = (
            f"project {proj.name}, broker "
            f"{'apache/kafka' if broker == 'kafka' else 'dev broker (Tansu)'} on 127.0.0.1:{port}, "
            f"up -d {time.time() - proj.started_at:.1f} s"
        )
        yield proj
    finally:
        ps = proj.compose("ps", check=False, profiles=True)
        if os.environ.get("KCRON_TEST_KEEP_COMPOSE") == "1":
            print(
                f"\nkept compose project {proj.name}: {shlex.join(proj.cmd)} -p {proj.name} "
                f"-f {rendered} --project-directory {REPO} down -v"
            )
        else:
            proj.compose(
                "down",
                "-v",
                "--remove-orphans",
                "--timeout",
                "30",
                profiles=True,
                check=False,
                timeout=300,
            )
        leftover = run(
            ["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={proj.name}"],
            check=False,
        )
        if leftover.stdout.strip() and os.environ.get("KCRON_TEST_KEEP_COMPOSE") != "1":
            pytest.fail(f"compose project {proj.name} left containers behind:\n{ps.stdout}")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for key, value in FIGURES.items():
        terminalreporter.write_line(f"[kcron] container {key}: {value}")
