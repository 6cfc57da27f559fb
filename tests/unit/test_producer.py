"""The producer's election loop on fakes: take-over keeps the membership alive,
and a role change during take-over is acted on before anything is dispatched."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import pytest

from kcron import producer
from kcron.schedule import Run
from kcron.settings import Settings

NOW = datetime(2028, 1, 1, 10, 0, 30, tzinfo=UTC)
LAST = datetime(2028, 1, 1, 9, 58, tzinfo=UTC)  # 09:59 and 10:00 were missed


class FakeElector:
    """Membership changes at given poll numbers; the last scripted poll stops the service."""

    script: ClassVar[dict[int, str]] = {}
    service: ClassVar[producer.ProducerService]
    last: ClassVar[FakeElector]

    def __init__(self, *_args: Any) -> None:
        self.active = False
        self.changed = False
        self.polls = 0
        FakeElector.last = self

    def poll(self) -> None:
        self.polls += 1
        action = self.script.get(self.polls)
        if action == "assign":
            self.active, self.changed = True, True
        elif action == "revoke":
            self.active, self.changed = False, True
        if self.polls >= max(self.script):
            self.service.request_stop()

    def close(self) -> None:
        pass


class FakeDispatcher:
    made: ClassVar[list[FakeDispatcher]] = []

    def __init__(self, *_args: Any) -> None:
        self.dispatched: list[Run] = []
        self.closed = False
        FakeDispatcher.made.append(self)

    def dispatch(self, runs: Sequence[Run], now: datetime) -> list[object]:
        assert not self.closed
        self.dispatched.extend(runs)
        return []

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> producer.ProducerService:
    jobs = tmp_path / "jobs.cron"
    jobs.write_text("name=m * * * * * echo m\n")
    polls_in_read_state: list[int] = []

    def read_state(
        settings: Settings, topic: str, producer_id: str, keep_alive: Callable[[], None]
    ) -> dict[str, datetime]:
        for _ in range(3):  # a big state: several batches
            keep_alive()
            polls_in_read_state.append(FakeElector.last.polls)
        return {"m": LAST}

    monkeypatch.setattr(producer, "_Elector", FakeElector)
    monkeypatch.setattr(producer, "TransactionalDispatcher", FakeDispatcher)
    monkeypatch.setattr(producer, "read_state", read_state)
    monkeypatch.setattr(producer.kafka, "wait_for_broker", lambda settings: None)
    monkeypatch.setattr(producer.kafka, "ensure_topic", lambda *args, **kwargs: None)
    monkeypatch.setattr(producer.signal, "signal", lambda *args: None)
    monkeypatch.setattr(producer, "MAX_SLEEP_S", 0.0)  # the loop never waits
    FakeDispatcher.made = []
    svc = producer.ProducerService(Settings.from_values({}), str(jobs), clock=lambda: NOW)
    FakeElector.service = svc
    svc.polls_in_read_state = polls_in_read_state  # type: ignore[attr-defined]
    return svc


def test_take_over_polls_the_elector_and_then_dispatches_the_missed_tick(
    service: producer.ProducerService,
) -> None:
    FakeElector.script = {1: "assign", 12: "stop"}
    assert service.run() == 0
    # polled on each batch of the state read (2, 3, 4), then between the steps
    assert service.polls_in_read_state == [2, 3, 4]  # type: ignore[attr-defined]
    (dispatcher,) = FakeDispatcher.made
    assert [r.scheduled_for for r in dispatcher.dispatched] == [
        datetime(2028, 1, 1, 10, 0, tzinfo=UTC)
    ]


def test_a_revocation_during_take_over_is_not_swallowed(
    service: producer.ProducerService, caplog: pytest.LogCaptureFixture
) -> None:
    FakeElector.script = {1: "assign", 3: "revoke", 12: "stop"}
    with caplog.at_level(logging.INFO, logger="kcron.producer"):
        assert service.run() == 0
    (dispatcher,) = FakeDispatcher.made
    assert dispatcher.dispatched == [], "dispatched after the role was lost"
    assert dispatcher.closed
    assert "lost the active role; standing by" in caplog.messages


def test_a_role_lost_and_regained_during_take_over_takes_over_again(
    service: producer.ProducerService,
) -> None:
    FakeElector.script = {1: "assign", 3: "revoke", 4: "assign", 20: "stop"}
    assert service.run() == 0
    first, second = FakeDispatcher.made
    assert first.closed and first.dispatched == []
    assert [r.scheduled_for for r in second.dispatched] == [datetime(2028, 1, 1, 10, 0, tzinfo=UTC)]
