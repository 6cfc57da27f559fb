"""Every run a producer or backfill writes is signed when a key is configured."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kcron.dispatch import Dispatcher, TransactionalDispatcher
from kcron.jobfile import Job, parse
from kcron.message import decode
from kcron.metrics import ProducerMetrics as Metrics
from kcron.schedule import Run
from kcron.signing import load_keys
from tests.unit.producer_fakes import FakeTxnProducer

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
JOBS = "name=plain * * * * * echo plain\nname=gpu queue=cluster-a * * * * * echo gpu\n"


def jobs() -> tuple[Job, ...]:
    return tuple(parse(JOBS, "jobs.cron").jobs)


def a_key(tmp_path: Path) -> Any:
    path = tmp_path / "kcron.key"
    path.write_text("k1:" + "s" * 64)
    os.chmod(path, 0o600)
    return load_keys(str(path))


class Recorder:
    def __init__(self) -> None:
        self.values: list[bytes] = []

    def produce(self, topic: str, *, key: Any, value: bytes, on_delivery: Any) -> None:
        self.values.append(value)

    def poll(self, timeout: float = -1) -> int:
        return 0

    def flush(self, timeout: float = -1) -> int:
        return 0


def test_the_transactional_dispatcher_signs_every_run_of_every_queue(tmp_path):
    keys = a_key(tmp_path)
    txn = FakeTxnProducer()
    dispatcher = TransactionalDispatcher(
        txn, "kcron.jobs", "jobs", "kcron.jobs.state", Metrics(), lambda s: None, keys
    )
    dispatcher.dispatch([Run(T0, job) for job in jobs()], T0, lambda: False)

    (committed,) = txn.committed
    values = [value for topic, _key, value in committed if not topic.endswith(".state")]
    assert len(values) == 2
    assert all(keys.verify_raw(value) is None for value in values)
    assert [decode(v).queue for v in values] == ["kcron.jobs", "cluster-a"]


def test_backfill_signs_its_runs_and_without_a_key_writes_them_unsigned(tmp_path):
    keys = a_key(tmp_path)
    signed, plain = Recorder(), Recorder()
    for recorder, key_set in ((signed, keys), (plain, None)):
        dispatcher = Dispatcher(recorder, "kcron.jobs", Metrics(), key_set)
        for job in jobs():
            dispatcher.send(Run(T0, job), T0)

    assert all(keys.verify_raw(value) is None for value in signed.values)
    assert all(b'"sig"' not in value for value in plain.values)
    assert [decode(v).job for v in plain.values] == ["plain", "gpu"]
