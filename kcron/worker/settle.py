"""After a run: commit it, or hand it off (retry or dead letter) and commit on delivery.

A run's offset is marked done only once its fate is settled: it succeeded, or
the record that replaces it (its next attempt on the retry topic, or its dead
letter) is confirmed by the broker. A hand-off that fails leaves the run
uncommitted, so it is delivered again (at-least-once).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from kcron import executor, retry
from kcron.errors import DecodeError
from kcron.log import fields
from kcron.message import Attempt, RunMessage, format_time
from kcron.metrics import Metrics
from kcron.settings import Settings
from kcron.worker.port import PartitionKey, ProducerPort, Record
from kcron.worker.runner import Done, ms

log = logging.getLogger("kcron.worker")

Clock = Callable[[], datetime]


@dataclass(frozen=True)
class Delivered:
    """The broker's answer for the retry or dead letter that replaces a run."""

    partition: PartitionKey
    offset: int
    topic: str  # where the record went
    job: str  # the run's job, "" for an undecodable message
    error: str | None
    generation: int = 0


@dataclass(frozen=True)
class Hooks:
    """What the settler needs from the loop: its partitions and its event queue."""

    owns: Callable[[PartitionKey, int], bool]  # (partition, generation) still ours?
    generation: Callable[[], int]
    finish: Callable[[PartitionKey, int], None]  # mark the offset done
    report: Callable[[Delivered], None]  # queue a delivery report for the loop


class Settler:
    def __init__(
        self,
        settings: Settings,
        producer: ProducerPort,
        hooks: Hooks,
        metrics: Metrics,
        clock: Clock,
        rng: random.Random,
    ) -> None:
        self._settings = settings
        self._producer = producer
        self._hooks = hooks
        self._metrics = metrics
        self._clock = clock
        self._rng = rng
        self.retry_topic = retry.retry_topic(settings.topic)
        self.dlq_topic = retry.dlq_topic(settings.topic)
        self._handoffs: dict[tuple[PartitionKey, int], str] = {}  # awaiting delivery -> topic
        self.executed = 0

    @property
    def handoffs(self) -> int:
        """Retries and dead letters awaiting their delivery report."""
        return len(self._handoffs)

    def settle(self, done: Done) -> None:
        result, job = done.result, done.job
        if result is None or result.outcome is executor.Outcome.CANCELLED:
            return  # not run to the end: leave the offset for redelivery
        if result.outcome is not executor.Outcome.SKIPPED:  # overlap=forbid: never started
            self.executed += 1
        if not self._hooks.owns(job.partition, job.generation):
            # The partition moved while the run went on (past the grace); its
            # new owner, maybe this worker again, starts from the uncommitted
            # offset and runs it again, retries included.
            if not result.ok:
                log.warning(
                    "run failed after its partition moved; the new owner runs it again",
                    extra=fields(job=job.run.job, run=job.run.id),
                )
            return
        now = self._clock()
        finished = done.finished_at or now
        decision = retry.decide(
            job.run, result, finished, self._settings.retry_base_s, self._settings.retry_cap_s,
            self._rng,
        )  # fmt: skip
        if decision.verdict is retry.Verdict.SUCCEEDED:
            self._hooks.finish(job.partition, job.offset)
            return
        attempt = retry.attempt_of(job.run, result, done.started_at or finished, finished)
        if decision.verdict is retry.Verdict.RETRY:
            self._retry(done, decision, attempt, now)
        else:
            self._dead(done, decision, attempt, now)

    def _retry(self, done: Done, decision: retry.Decision, attempt: Attempt, now: datetime) -> None:
        run, result = done.job.run, done.result
        assert decision.not_before is not None and result is not None
        nxt = retry.next_attempt(run, attempt, decision.not_before, now)
        self._metrics.retries.labels(run.job).inc()
        log.warning(
            "retry scheduled",
            extra=fields(
                job=run.job,
                run=run.id,
                queue=run.queue or self._settings.topic,
                attempt=nxt.attempt,
                max_attempts=nxt.max_attempts,
                not_before=format_time(decision.not_before),
                delay_ms=ms(decision.delay_s),
                outcome=result.outcome.value,
                exit_code=result.exit_code,
            ),
        )
        self._hand_off(done.job.partition, done.job.offset, self.retry_topic, run, nxt.encode())

    def _dead(self, done: Done, decision: retry.Decision, attempt: Attempt, now: datetime) -> None:
        run, result, key = done.job.run, done.result, done.job.partition
        assert decision.kind is not None and result is not None
        record = retry.dead_letter(
            kind=decision.kind,
            reason=decision.reason,
            dead_at=now,
            source=retry.Source(key[0], key[1], done.job.offset),
            run=run,
            result=result,
            attempt=attempt,
        )
        self._metrics.dead_letters.labels(run.job, decision.kind.value).inc()
        log.error(
            "dead letter",
            extra=fields(
                job=run.job,
                run=run.id,
                queue=run.queue or self._settings.topic,
                kind=decision.kind.value,
                reason=decision.reason,
                attempts=record["attempts"],
                exit_code=result.exit_code,
            ),
        )
        value = retry.encode_dead_letter(record)
        self._hand_off(key, done.job.offset, self.dlq_topic, run, value)

    def undecodable(self, record: Record, exc: DecodeError) -> None:
        """Not a run: dead-letter the raw bytes, commit once the broker has them."""
        key, offset = record.where, record.offset
        self._metrics.undecodable.inc()
        self._metrics.dead_letters.labels("", retry.DeadKind.UNDECODABLE.value).inc()
        place = {"topic": key[0], "partition": key[1], "offset": offset}
        log.error(
            "undecodable message skipped",
            extra=fields(**place, reason=exc.reason, excerpt=exc.excerpt()),
        )
        letter = retry.dead_letter(
            kind=retry.DeadKind.UNDECODABLE,
            reason=f"undecodable message: {exc.reason}",
            dead_at=self._clock(),
            source=retry.Source(key[0], key[1], offset),
            raw=exc.raw,
            key=record.key,
        )
        log.error(
            "dead letter",
            extra=fields(kind=retry.DeadKind.UNDECODABLE.value, reason=letter["reason"], **place),
        )
        value = retry.encode_dead_letter(letter)
        self._produce(key, offset, self.dlq_topic, "", record.key, value)

    def _hand_off(
        self, key: PartitionKey, offset: int, topic: str, run: RunMessage, value: bytes
    ) -> None:
        self._produce(key, offset, topic, run.job, run.key, value)

    def _produce(
        self,
        key: PartitionKey,
        offset: int,
        topic: str,
        job: str,
        record_key: bytes | None,
        value: bytes,
    ) -> None:
        """Produce the record that replaces the run at ``key``/``offset``; its
        delivery report (through the loop's queue) decides whether to commit."""
        generation = self._hooks.generation()

        def on_delivery(error: str | None) -> None:
            # Served by producer.poll/flush on the loop's thread; still queued,
            # so offsets are only ever touched from one place.
            self._hooks.report(Delivered(key, offset, topic, job, error, generation))

        self._handoffs[(key, offset)] = topic
        self._producer.produce(topic, record_key, value, on_delivery)

    def delivered(self, event: Delivered) -> None:
        self._handoffs.pop((event.partition, event.offset), None)
        if event.error is not None:
            self._metrics.handoff_failures.labels(event.topic).inc()
            self._metrics.delivery_failures.labels(event.job).inc()
            log.error(
                "retry or dead letter not delivered; the run stays uncommitted and is "
                "delivered again after a restart or rebalance",
                extra=fields(
                    to=event.topic,
                    topic=event.partition[0],
                    partition=event.partition[1],
                    offset=event.offset,
                    error=event.error,
                ),
            )
            return
        if event.generation == self._hooks.generation():
            self._hooks.finish(event.partition, event.offset)

    def flush(self, timeout_s: float) -> None:
        """Wait for pending retries and dead letters, so their runs can be committed."""
        if self._producer.pending():
            left = self._producer.flush(timeout_s)
            if left:
                log.error(
                    "retries or dead letters still unconfirmed; their runs stay uncommitted",
                    extra=fields(pending=left),
                )
