"""Runs due at the same instant spread evenly over their queue's partitions."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from kcron.dispatch import Dispatcher, PartitionCounts, TransactionalDispatcher
from kcron.jobfile import parse
from kcron.message import RunMessage, new_run_id
from kcron.metrics import ProducerMetrics as Metrics
from kcron.placement import Placement, spread, start_of
from kcron.schedule import Run
from tests.unit.producer_fakes import FakeTxnProducer

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def a_run(n: int = 0, at: datetime = T0, **changes: Any) -> RunMessage:
    values: dict[str, Any] = {
        "id": new_run_id(), "job": f"job-{n}", "command": "true", "scheduled_for": at,
        "produced_at": at,
    }  # fmt: skip
    values.update(changes)
    return RunMessage(**values)


def counts(**known: int) -> Any:
    return lambda topic: known.get(topic.replace(".", "_"))


def test_ten_runs_due_at_once_on_two_partitions_go_five_and_five():
    placement = Placement(counts(jobs=2))
    chosen = [placement.choose("jobs", a_run(n)) for n in range(10)]
    assert Counter(chosen) == {0: 5, 1: 5}


def test_three_partitions_and_seven_runs_differ_by_at_most_one():
    placement = Placement(counts(jobs=3))
    chosen = Counter(placement.choose("jobs", a_run(n)) for n in range(7))
    assert sorted(chosen.values()) == [2, 2, 3]


def test_queues_are_spread_independently_of_each_other():
    placement = Placement(counts(jobs=2, gpu=3))
    chosen: dict[str, list[int | None]] = {"jobs": [], "gpu": []}
    for n in range(12):  # interleaved, as a tick's runs of two queues come
        topic = "jobs" if n % 2 else "gpu"
        chosen[topic].append(placement.choose(topic, a_run(n)))
    assert Counter(chosen["jobs"]) == {0: 3, 1: 3}
    assert Counter(chosen["gpu"]) == {0: 2, 1: 2, 2: 2}


def test_each_instant_starts_its_own_round_at_its_own_partition():
    placement = Placement(counts(jobs=4))
    instants = [T0 + timedelta(minutes=m) for m in range(40)]
    firsts = [placement.choose("jobs", a_run(0, at)) for at in instants]
    # A queue with one run a minute still uses every partition, not only partition 0.
    assert set(firsts) == {0, 1, 2, 3}
    assert firsts == [start_of("jobs", at, 4) for at in instants]
    assert spread(3, 6, 4) == [3, 0, 1, 2, 3, 0]


def test_the_key_decides_when_the_count_is_unknown_or_one_or_overlap_is_forbidden():
    assert Placement(counts()).choose("jobs", a_run()) is None
    assert Placement(counts(jobs=1)).choose("jobs", a_run()) is None
    forbid = a_run(overlap="forbid")
    assert Placement(counts(jobs=2)).choose("jobs", forbid) is None


def test_the_producers_transaction_places_each_run_and_keeps_its_key():
    jobs = parse("".join(f"name=j{n} * * * * * true\n" for n in range(10)), "jobs.cron").jobs
    txn = FakeTxnProducer()
    dispatcher = TransactionalDispatcher(
        txn, "kcron.jobs", "jobs", "kcron.jobs.state", Metrics(), lambda s: None,
        counts=counts(kcron_jobs=2),
    )  # fmt: skip
    sent = dispatcher.dispatch([Run(T0, job) for job in jobs], T0, lambda: False)
    assert sent is not None
    runs = [
        p for p, call in zip(txn.partitions, txn.calls[1:], strict=False) if "state" not in call
    ]
    assert Counter(runs[:10]) == {0: 5, 1: 5}
    (committed,) = txn.committed
    assert [key for topic, key, _ in committed if topic == "kcron.jobs"] == [m.key for m in sent]


class Metadata:
    def __init__(self, partitions: int | None) -> None:
        self.partitions = partitions
        self.asked = 0

    def list_topics(self, topic: str, timeout: float) -> Any:
        self.asked += 1
        if self.partitions is None:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, "down"))
        meta = type("T", (), {"error": None, "partitions": dict.fromkeys(range(self.partitions))})
        return type("M", (), {"topics": {topic: meta}})


def test_partition_counts_are_cached_and_asked_again_after_their_age_or_a_forget():
    now = [0.0]
    producer = Metadata(3)
    known = PartitionCounts(producer, max_age_s=300, monotonic=lambda: now[0])  # type: ignore[arg-type]
    assert (known("jobs"), known("jobs"), producer.asked) == (3, 3, 1)
    producer.partitions = 4  # grown with kafka-topics --alter
    now[0] = 301
    assert (known("jobs"), producer.asked) == (4, 2)
    known.forget("jobs")
    assert (known("jobs"), producer.asked) == (4, 3)


def test_an_unknown_partition_makes_the_transaction_ask_for_the_count_again():
    metadata = Metadata(2)
    txn = FakeTxnProducer()
    txn.fail_commits.append(KafkaException(KafkaError(KafkaError._UNKNOWN_PARTITION, "gone")))
    dispatcher = TransactionalDispatcher(
        txn, "kcron.jobs", "jobs", "kcron.jobs.state", Metrics(), lambda s: None,
        counts=PartitionCounts(metadata),  # type: ignore[arg-type]
    )  # fmt: skip
    job = parse("name=a * * * * * true\n", "jobs.cron").jobs[0]
    assert dispatcher.dispatch([Run(T0, job)], T0, lambda: False) is not None
    assert metadata.asked == 2  # once, then again for the retried transaction


def test_an_unreachable_broker_leaves_the_partition_to_the_key():
    known = PartitionCounts(Metadata(None))  # type: ignore[arg-type]
    assert known("jobs") is None


class PlainRecorder:
    def __init__(self) -> None:
        self.partitions: list[int | None] = []

    def produce(self, topic: str, *, key: Any, value: bytes, on_delivery: Any, **kw: Any) -> None:
        self.partitions.append(kw.get("partition"))

    def poll(self, timeout: float = -1) -> int:
        return 0

    def flush(self, timeout: float = -1) -> int:
        return 0


@pytest.mark.parametrize("known", [2, None])
def test_backfill_and_trigger_spread_runs_due_together_too(known):
    recorder = PlainRecorder()
    dispatcher = Dispatcher(recorder, "kcron.jobs", Metrics(), counts=lambda _t: known)
    job = parse("name=a * * * * * true\n", "jobs.cron").jobs[0]
    for _ in range(6):
        dispatcher.send(Run(T0, job), T0)
    if known is None:
        assert recorder.partitions == [None] * 6  # the key's partitioner, as before
    else:
        assert Counter(recorder.partitions) == {0: 3, 1: 3}
