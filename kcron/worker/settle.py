"""After a run: commit it, or hand it off (retry or dead letter) and commit on delivery.

A run's offset is marked done only once its fate is settled: it succeeded, or
the record that replaces it (its next attempt on the retry topic, or its dead
letter) is confirmed by the broker. A hand-off that fails leaves the run
uncommitted, so it is delivered again (at-least-once).

Its run events (``started``, ``finished`` on ``<queue>.events``, kcron/events.py)
follow the same discipline: the offset waits for their delivery reports too,
so a committed run always has its history, and an event that is not
delivered leaves the run uncommitted. The loop's thread books each event in
the ledger; building, encoding and producing it happen on the courier's
thread (kcron/worker/courier.py), whose reports come back through the loop's
queue like every other.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from kcron import events, executor, retry, signing
from kcron.errors import DecodeError
from kcron.log import fields
from kcron.message import Attempt, RunMessage, format_time
from kcron.metrics import WorkerMetrics
from kcron.settings import Settings
from kcron.tracing import NO_TRACING, Tracer
from kcron.worker.courier import Courier, InlineCourier
from kcron.worker.port import DeliveryCallback, Headers, PartitionKey, ProducerPort, Record
from kcron.worker.runner import Done, Job, Started, ms

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


Slot = tuple[PartitionKey, int, int]  # partition, offset, generation


@dataclass
class _Waiting:
    """A run's records (events, retry, dead letter) awaiting their delivery report."""

    records: int = 0
    settled: bool = False  # its fate is decided: nothing more is produced for it
    commit: bool = False  # commit once every record is confirmed
    failed: bool = False


class Ledger:
    """Which runs wait for which delivery reports; finishes a run once all came."""

    def __init__(self, hooks: Hooks) -> None:
        self._hooks = hooks
        self._slots: dict[Slot, _Waiting] = {}

    def __len__(self) -> int:
        return sum(1 for w in self._slots.values() if w.records)

    def sent(self, slot: Slot) -> None:
        self._slots.setdefault(slot, _Waiting()).records += 1

    def settled(self, slot: Slot, commit: bool) -> None:
        waiting = self._slots.setdefault(slot, _Waiting())
        waiting.settled, waiting.commit = True, commit
        self._close(slot, waiting)

    def answered(self, slot: Slot, ok: bool) -> None:
        waiting = self._slots.get(slot)
        if waiting is None:
            return
        waiting.records -= 1
        waiting.failed = waiting.failed or not ok
        self._close(slot, waiting)

    def _close(self, slot: Slot, waiting: _Waiting) -> None:
        if not waiting.settled or waiting.records > 0:
            return
        del self._slots[slot]
        if waiting.commit and not waiting.failed and slot[2] == self._hooks.generation():
            self._hooks.finish(slot[0], slot[1])


def _finish(done: Done, step: str, retry_at: datetime | None, now: datetime) -> events.Finish:
    result = done.result
    assert result is not None
    return events.Finish(
        outcome=result.outcome.value,
        exit_code=result.exit_code,
        duration_ms=ms(result.duration_s),
        tail=result.tail.decode("utf-8", errors="replace"),
        next=step,
        finished_at=done.finished_at or now,
        started_at=done.started_at,
        retry_at=retry_at,
        error=result.error,
    )


def _started_event(event: Started, queue: str, worker: str) -> Callable[[], bytes]:
    """The ``started`` record, to build on the courier's thread."""
    job = event.job

    def build() -> bytes:
        return events.encode(
            events.started(
                job.run, queue=queue, worker=worker, partition=job.partition, offset=job.offset,
                started_at=event.started_at, lateness_ms=event.lateness_ms,
            )
        )  # fmt: skip

    return build


def _finished_event(
    done: Done, step: str, now: datetime, retry_at: datetime | None, queue: str, worker: str
) -> Callable[[], bytes]:
    """The ``finished`` record, to build on the courier's thread."""

    def build() -> bytes:
        finish = _finish(done, step, retry_at, now)
        return events.encode(
            events.finished(done.job.run, queue=queue, worker=worker, finish=finish)
        )

    return build


def _reporter(
    report: Callable[[Delivered], None], slot: Slot, topic: str, job: str
) -> DeliveryCallback:
    key, offset, generation = slot

    def on_delivery(error: str | None) -> None:
        # Served by whichever thread polls the producer; only queued here,
        # so the ledger and offsets are only ever touched by the loop.
        report(Delivered(key, offset, topic, job, error, generation))

    return on_delivery


def _event_work(
    producer: ProducerPort,
    topic: str,
    key: bytes | None,
    build: Callable[[], bytes],
    on_delivery: DeliveryCallback,
) -> Callable[[], None]:
    """Build and produce one run event, on the courier's thread: only immutable
    run data goes in; any failure is reported like an undelivered record."""

    def work() -> None:
        try:
            producer.produce(topic, key, build(), on_delivery)
        except Exception as exc:  # e.g. a bug in building the record: never a silent commit
            on_delivery(f"run event not produced: {exc!r}")

    return work


def _log_retry(
    nxt: RunMessage, decision: retry.Decision, result: executor.ExecResult, queue: str
) -> None:
    assert decision.not_before is not None
    log.warning(
        "retry scheduled",
        extra=fields(
            job=nxt.job,
            run=nxt.id,
            queue=queue,
            attempt=nxt.attempt,
            max_attempts=nxt.max_attempts,
            not_before=format_time(decision.not_before),
            delay_ms=ms(decision.delay_s),
            outcome=result.outcome.value,
            exit_code=result.exit_code,
        ),
    )


class Settler:
    def __init__(
        self,
        settings: Settings,
        producer: ProducerPort,
        hooks: Hooks,
        metrics: WorkerMetrics,
        clock: Clock,
        rng: random.Random,
        keys: signing.KeySet | None = None,
        tracer: Tracer = NO_TRACING,
        courier: Courier | None = None,
    ) -> None:
        self._settings = settings
        self._courier = courier or InlineCourier()  # where run events are built and produced
        self._tracer = tracer
        self._keys = keys  # re-signs retries: the next attempt is a new message
        self._producer = producer
        self._hooks = hooks
        self._metrics = metrics
        self._clock = clock
        self._rng = rng
        self.retry_topic = retry.retry_topic(settings.topic)
        self.dlq_topic = retry.dlq_topic(settings.topic)
        self.events_topic = events.events_topic(settings.topic)
        self._ledger = Ledger(hooks)
        self.executed = 0

    @property
    def handoffs(self) -> int:
        """Runs whose events, retry or dead letter await their delivery report."""
        return len(self._ledger)

    def started(self, event: Started) -> None:
        """Write the run's ``started`` event; its offset now waits for it too."""
        job = event.job
        self._tracer.started(event)
        if not self._hooks.owns(job.partition, job.generation):
            return
        queue = job.run.queue or self._settings.topic
        self._send_event(job, _started_event(event, queue, self._settings.instance))

    def _record(
        self, done: Done, step: str, now: datetime, retry_at: datetime | None = None
    ) -> None:
        queue = done.job.run.queue or self._settings.topic
        build = _finished_event(done, step, now, retry_at, queue, self._settings.instance)
        self._send_event(done.job, build)

    def _send_event(self, job: Job, build: Callable[[], bytes]) -> None:
        """Book the event for the run's offset here, on the loop; the courier does the rest."""
        slot = (job.partition, job.offset, job.generation)
        on_delivery = _reporter(self._hooks.report, slot, self.events_topic, job.run.job)
        self._ledger.sent(slot)
        self._courier.post(
            _event_work(self._producer, self.events_topic, job.run.key, build, on_delivery)
        )

    def settle(self, done: Done) -> None:
        result, job = done.result, done.job
        self._tracer.finished(done)
        slot = (job.partition, job.offset, job.generation)
        if result is None or result.outcome is executor.Outcome.CANCELLED:
            self._ledger.settled(slot, commit=False)
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
            self._ledger.settled(slot, commit=False)
            return
        now = self._clock()
        finished = done.finished_at or now
        decision = retry.decide(
            job.run, result, finished, self._settings.retry_base_s, self._settings.retry_cap_s,
            self._rng,
        )  # fmt: skip
        if decision.verdict is retry.Verdict.SUCCEEDED:
            self._tracer.settled(done, events.COMMITTED, now)
            self._record(done, events.COMMITTED, now)
        else:
            attempt = retry.attempt_of(job.run, result, done.started_at or finished, finished)
            if decision.verdict is retry.Verdict.RETRY:
                self._retry(done, decision, attempt, now)
                self._record(done, events.RETRY, now, decision.not_before)
            else:
                self._dead(done, decision, attempt, now)
                self._record(done, events.DEAD_LETTERED, now)
        self._ledger.settled(slot, commit=True)

    def _retry(self, done: Done, decision: retry.Decision, attempt: Attempt, now: datetime) -> None:
        run, result = done.job.run, done.result
        assert decision.not_before is not None and result is not None
        nxt = retry.next_attempt(run, attempt, decision.not_before, now)
        self._metrics.retried(run.job)
        _log_retry(nxt, decision, result, run.queue or self._settings.topic)
        trace = self._tracer.settled(done, events.RETRY, now)  # the next attempt's parent
        self._send(done.job, self.retry_topic, signing.encode_run(nxt, self._keys), trace)

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
        self._metrics.dead_lettered(run.job, decision.kind.value)
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
        trace = self._tracer.settled(done, events.DEAD_LETTERED, now)
        self._send(done.job, self.dlq_topic, retry.encode_dead_letter(record), trace)

    def undecodable(self, record: Record, exc: DecodeError) -> None:
        """Not a run: dead-letter the raw bytes, commit once the broker has them."""
        self._metrics.undecodable.inc()
        place = {"topic": record.where[0], "partition": record.where[1], "offset": record.offset}
        log.error(
            "undecodable message skipped",
            extra=fields(**place, reason=exc.reason, excerpt=exc.excerpt()),
        )
        reason = f"undecodable message: {exc.reason}"
        log.error(
            "dead letter",
            extra=fields(kind=retry.DeadKind.UNDECODABLE.value, reason=reason, **place),
        )
        self._raw_letter(record, retry.DeadKind.UNDECODABLE, reason, exc.raw, None)

    def rejected(self, record: Record, run: RunMessage, refusal: signing.Verdict) -> None:
        """A run refused unrun: dead-letter its raw bytes, commit once the broker has them.

        The letter holds no ``run``, so ``kcron dlq requeue`` cannot sign and
        send back what no key holder wrote; job and metric labels never come
        from the unverified message, so a flood cannot grow them.
        """
        self._metrics.refused(refusal.code)
        reason = f"rejected ({refusal.code}): {refusal.reason}"
        log.error(
            "run rejected, not executed",
            extra=fields(
                job=run.job, run=run.id, topic=record.where[0], partition=record.where[1],
                offset=record.offset, refusal=refusal.code, reason=reason,
            ),
        )  # fmt: skip
        # The job as the message claims it: for the listing only.
        self._raw_letter(record, retry.DeadKind.REJECTED, reason, record.value, run.job)

    def _raw_letter(
        self, record: Record, kind: retry.DeadKind, reason: str, raw: bytes | None, job: str | None
    ) -> None:
        """Dead-letter a message that is not a run to execute, then commit it."""
        key, offset = record.where, record.offset
        self._metrics.dead_lettered("", kind.value)
        letter = retry.dead_letter(
            kind=kind,
            reason=reason,
            dead_at=self._clock(),
            source=retry.Source(key[0], key[1], offset),
            raw=raw,
            key=record.key,
        )
        if job is not None:
            letter["job"] = job
        slot = (key, offset, self._hooks.generation())
        self._produce(slot, self.dlq_topic, "", record.key, retry.encode_dead_letter(letter))
        self._ledger.settled(slot, commit=True)

    def _send(self, job: Job, topic: str, value: bytes, headers: Headers | None = None) -> None:
        slot = (job.partition, job.offset, job.generation)
        self._produce(slot, topic, job.run.job, job.run.key, value, headers)

    def _produce(
        self,
        slot: Slot,
        topic: str,
        job: str,
        record_key: bytes | None,
        value: bytes,
        headers: Headers | None = None,
    ) -> None:
        """Produce a record the run at ``slot`` waits for; its delivery report
        (through the loop's queue) decides whether to commit."""
        on_delivery = _reporter(self._hooks.report, slot, topic, job)
        self._ledger.sent(slot)
        if headers is None:  # tracing off: the call as it always was
            self._producer.produce(topic, record_key, value, on_delivery)
        else:
            self._producer.produce(topic, record_key, value, on_delivery, headers)

    def delivered(self, event: Delivered) -> None:
        slot = (event.partition, event.offset, event.generation)
        self._ledger.answered(slot, ok=event.error is None)
        if event.error is None:
            return
        self._metrics.handoff_failures.labels(event.topic).inc()
        if event.topic == self.events_topic:
            what = "run event"
        else:
            what = "retry or dead letter"
            self._metrics.delivery_failed(event.job)
        log.error(
            f"{what} not delivered; the run stays uncommitted and is delivered again "
            "after a restart or rebalance",
            extra=fields(
                to=event.topic,
                topic=event.partition[0],
                partition=event.partition[1],
                offset=event.offset,
                error=event.error,
            ),
        )

    def flush(self, timeout_s: float) -> None:
        """Wait for pending retries, dead letters and events, so their runs can be committed."""
        if not self._courier.drain(timeout_s):
            log.error("run events still being written; their runs stay uncommitted")
        if self._producer.pending():
            left = self._producer.flush(timeout_s)
            if left:
                log.error(
                    "retries or dead letters still unconfirmed; their runs stay uncommitted",
                    extra=fields(pending=left),
                )
