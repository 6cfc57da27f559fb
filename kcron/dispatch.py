"""Writing run messages to Kafka.

``TransactionalDispatcher`` is the producer service's: one tick's runs and
the jobs' dispatch state in one transaction. ``Dispatcher`` writes outside
any transaction, for ``kcron backfill``. Both send each run to its job's
queue (queue= in the job file), else to the default topic.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Protocol

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from kcron import kafka, misfire, signing
from kcron.errors import BrokerError, FencedError
from kcron.log import fields
from kcron.message import RunMessage, format_time, new_run_id
from kcron.metrics import ProducerMetrics
from kcron.schedule import Run
from kcron.settings import Settings
from kcron.telemetry import start_tracing
from kcron.tracing import NO_TRACING, DispatchTrace, Headers, Tracer

log = logging.getLogger("kcron.producer")

FLUSH_TIMEOUT_S = 30.0
TXN_TIMEOUT_S = 30.0
TXN_ATTEMPTS = 5
# A second SIGTERM/SIGINT means "now": an abort gets this long, not TXN_TIMEOUT_S.
ABORT_NOW_TIMEOUT_S = 2.0

Clock = Callable[[], datetime]
DeliveryReport = Callable[[KafkaError | None, Message], None]


def utc_now() -> datetime:
    return datetime.now(UTC)


def transactional_id(settings: Settings, producer_id: str) -> str:
    return f"kcron-producer.{settings.topic}.{producer_id}"


def build_message(
    run: Run, produced_at: datetime, default_topic: str, trigger: str | None = None
) -> RunMessage:
    """The run's message, addressed to its job's queue (``default_topic`` without queue=).

    ``trigger`` marks a run not made by the schedule ("manual": kcron trigger).
    """
    job = run.job
    return RunMessage(
        id=new_run_id(),
        job=job.name,
        command=job.command,
        scheduled_for=run.scheduled_for,
        produced_at=produced_at,
        source=job.source,
        shell=job.shell,
        attempt=1,
        max_attempts=job.attempts,
        timeout_s=job.timeout,
        queue=job.queue_or(default_topic),
        trigger=trigger,
        overlap=job.overlap,
    )


class PlainProducer(Protocol):
    """The part of a confluent_kafka Producer a plain dispatcher uses."""

    def produce(
        self,
        topic: str,
        *,
        key: bytes | None,
        value: bytes,
        on_delivery: Callable[..., None] | None,
        headers: Headers | None = ...,
    ) -> None: ...

    def poll(self, timeout: float) -> int: ...

    def flush(self, timeout: float = ...) -> int: ...


class TxnProducer(PlainProducer, Protocol):
    """A transactional producer: the calls TransactionalDispatcher makes."""

    def init_transactions(self, timeout: float = ...) -> None: ...

    def begin_transaction(self) -> None: ...

    def commit_transaction(self, timeout: float = ...) -> None: ...

    def abort_transaction(self, timeout: float = ...) -> None: ...


class Dispatcher:
    """Writes run messages to Kafka outside any transaction (backfill) and counts failures."""

    def __init__(
        self,
        producer: PlainProducer,
        topic: str,
        metrics: ProducerMetrics,
        keys: signing.KeySet | None = None,
        tracer: Tracer = NO_TRACING,
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._metrics = metrics
        self._keys = keys  # signs every run when set (docs/security.md)
        self._tracer = tracer
        self.failed = 0

    @classmethod
    def connect(cls, settings: Settings, metrics: ProducerMetrics) -> Dispatcher:
        """With its own tracer (off unless OTEL_* turned it on): ``close`` ends it."""
        keys = signing.load_optional(settings.signing_key_file)
        producer = Producer(kafka.producer_config(settings))
        tracer = start_tracing(settings.tracing, "kcron-producer")
        return cls(producer, settings.topic, metrics, keys, tracer)

    def send(self, run: Run, now: datetime, trigger: str | None = None) -> RunMessage:
        msg = build_message(run, now, self._topic, trigger)
        topic = msg.queue or self._topic
        trace = self._tracer.dispatch([msg])

        def on_delivery(err: KafkaError | None, _record: Message) -> None:
            trace.end(None if err is None else str(err))
            if err is None:
                return
            self.failed += 1
            self._metrics.delivery_failed(msg.job, topic)
            log.error(
                "delivery failed",
                extra=fields(
                    job=msg.job,
                    run=msg.id,
                    topic=topic,
                    error=str(err),
                    scheduled_for=format_time(msg.scheduled_for),
                ),
            )

        value = signing.encode_run(msg, self._keys)
        headers = trace.headers(msg.id)
        kafka.produce_patiently(self._producer, topic, msg.key, value, on_delivery, headers)
        return msg

    def flush(self, timeout: float = FLUSH_TIMEOUT_S) -> int:
        """Wait for outstanding deliveries; return how many are still undelivered."""
        return int(self._producer.flush(timeout))

    def close(self) -> None:
        """Export the buffered spans (tracing on); after the last flush."""
        self._tracer.shutdown()


def backfill(
    settings: Settings,
    runs: Sequence[Run],
    progress: Callable[[int], None] | None = None,
    clock: Clock = utc_now,
    metrics: ProducerMetrics | None = None,
) -> int:
    """Produce every given run now, to its queue, keeping each run's true ``scheduled_for``."""
    kafka.wait_for_broker(settings)
    kafka.ensure_topic(settings)
    for queue in sorted({run.job.queue for run in runs if run.job.queue is not None}):
        kafka.ensure_topic(settings, queue)
    dispatcher = Dispatcher.connect(settings, metrics or ProducerMetrics(settings.topic))
    count = 0
    try:
        for run in runs:
            dispatcher.send(run, clock())
            count += 1
            if progress is not None:
                progress(1)
        left = dispatcher.flush()
    finally:
        dispatcher.close()
    if left or dispatcher.failed:
        raise BrokerError(f"{left + dispatcher.failed} of {count} runs were not delivered")
    return count


def _never() -> bool:
    return False


class TransactionalDispatcher:
    """Writes one tick's runs and the jobs' dispatch state in one transaction.

    Either the runs and the new state are both visible (to read_committed
    workers and to the next producer) or neither is: a producer that dies
    mid-tick leaves nothing behind, and its successor re-dispatches the tick.
    """

    def __init__(
        self,
        producer: TxnProducer,
        topic: str,
        producer_id: str,
        state_topic: str,
        metrics: ProducerMetrics,
        sleep: Callable[[float], None] = time.sleep,
        keys: signing.KeySet | None = None,
        tracer: Tracer = NO_TRACING,
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._tracer = tracer
        self._producer_id = producer_id
        self._state_topic = state_topic
        self._metrics = metrics
        self._sleep = sleep
        self._keys = keys  # signs every run when set (docs/security.md)
        try:
            # Fences any older producer with the same id and aborts its open transaction.
            producer.init_transactions(TXN_TIMEOUT_S)
        except KafkaException as exc:
            raise BrokerError(f"cannot start a Kafka transaction: {exc.args[0]}") from None

    @classmethod
    def connect(
        cls,
        settings: Settings,
        producer_id: str,
        state_topic: str,
        metrics: ProducerMetrics,
        sleep: Callable[[float], None] = time.sleep,
    ) -> TransactionalDispatcher:
        config = kafka.transactional_producer_config(
            settings, transactional_id(settings, producer_id)
        )
        keys = signing.load_optional(settings.signing_key_file)
        producer = Producer(config)
        # Its own tracer (off unless OTEL_* turned it on), one per take-over: close ends it.
        tracer = start_tracing(settings.tracing, "kcron-producer")
        return cls(producer, settings.topic, producer_id, state_topic, metrics, sleep, keys, tracer)

    def dispatch(
        self, runs: Sequence[Run], now: datetime, interrupted: Callable[[], bool] = _never
    ) -> list[RunMessage] | None:
        """Commit ``runs`` and their state; raise FencedError or BrokerError on failure.

        Returns None, with the transaction aborted, when ``interrupted()`` says
        to stop at once (a second SIGTERM/SIGINT): nothing is committed then.
        """
        messages = [build_message(run, now, self._topic) for run in runs]
        trace = self._tracer.dispatch(messages)  # one kcron.dispatch span per run
        placed: dict[str, tuple[int | None, int | None]] = {}

        def reporter(run_id: str) -> DeliveryReport:
            # One report per run, bound to its id: an overlap=forbid job's runs
            # share their key (the job name), so the key cannot tell them apart.
            # Only runs ask for a report (state records do not), whatever their queue.
            def on_delivery(err: KafkaError | None, record: Message) -> None:
                if err is None:
                    placed[run_id] = (record.partition(), record.offset())

            return on_delivery

        for attempt in range(1, TXN_ATTEMPTS + 1):
            try:
                if not self._commit(messages, now, reporter, interrupted, trace):
                    trace.end("interrupted: transaction aborted")
                    return None
                break
            except KafkaException as exc:
                try:
                    self._failed(exc.args[0], attempt, messages)
                except (FencedError, BrokerError) as failed:
                    trace.end(str(failed))
                    raise
                if interrupted():
                    self._abort_now()
                    trace.end("interrupted: transaction aborted")
                    return None
                self._sleep(min(2.0, 0.1 * 2**attempt))
        trace.end()
        for msg in messages:
            partition, offset = placed.get(msg.id, (None, None))
            self._metrics.dispatched(msg.job, msg.queue or self._topic)
            log.info(
                "run dispatched",
                extra=fields(
                    job=msg.job, run=msg.id, scheduled_for=format_time(msg.scheduled_for),
                    queue=msg.queue, partition=partition, offset=offset,
                ),
            )  # fmt: skip
        return messages

    def _commit(
        self,
        messages: Sequence[RunMessage],
        now: datetime,
        reporter: Callable[[str], DeliveryReport],
        interrupted: Callable[[], bool],
        trace: DispatchTrace,
    ) -> bool:
        """One attempt; False if interrupted before the commit (then aborted)."""
        last: dict[str, datetime] = {}
        for msg in messages:
            last[msg.job] = max(msg.scheduled_for, last.get(msg.job, msg.scheduled_for))
        producer = self._producer
        producer.begin_transaction()
        for msg in messages:
            topic = msg.queue or self._topic
            value = signing.encode_run(msg, self._keys)
            headers = trace.headers(msg.id)
            if headers is None:  # tracing off: the call as it always was
                producer.produce(topic, key=msg.key, value=value, on_delivery=reporter(msg.id))
            else:
                producer.produce(
                    topic, key=msg.key, value=value, on_delivery=reporter(msg.id), headers=headers
                )
        for job_name, when in last.items():
            producer.produce(
                self._state_topic,
                key=misfire.state_key(self._producer_id, job_name),
                value=misfire.encode_state(job_name, when, now),
                on_delivery=None,
            )
        if interrupted():
            self._abort_now()
            return False
        producer.commit_transaction(TXN_TIMEOUT_S)
        return True

    def _failed(self, err: KafkaError, attempt: int, messages: Sequence[RunMessage]) -> None:
        """Raise for fencing and for the last attempt; otherwise abort, count and log."""
        if err.fatal() or err.code() == KafkaError._FENCED:
            raise FencedError(
                "another producer with the same producer id took over "
                f"({err.str()}); this one stops dispatching"
            ) from None
        if err.txn_requires_abort():
            with contextlib.suppress(KafkaException):
                self._producer.abort_transaction(TXN_TIMEOUT_S)
        for msg in messages:
            self._metrics.delivery_failed(msg.job, msg.queue or self._topic)
        log.warning(
            "transaction failed; retrying",
            extra=fields(attempt=attempt, runs=len(messages), error=err.str()),
        )
        if attempt == TXN_ATTEMPTS:
            raise BrokerError(f"cannot commit dispatch transaction: {err}") from None

    def _abort_now(self) -> None:
        # Aborted rather than left to time out: an open transaction holds back
        # every read_committed worker on its partitions until it ends.
        with contextlib.suppress(KafkaException):
            self._producer.abort_transaction(ABORT_NOW_TIMEOUT_S)

    def close(self, interrupted: Callable[[], bool] = _never) -> None:
        """Wait for outstanding deliveries, in slices: a second signal is not kept waiting."""
        try:
            for _ in range(int(FLUSH_TIMEOUT_S / 0.1)):
                if self._producer.flush(0.1) == 0 or interrupted():
                    return
        finally:
            if not interrupted():  # exporting spans may wait for a collector
                self._tracer.shutdown()
