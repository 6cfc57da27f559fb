"""Tracing on the real broker: the producer's dispatch and the worker's loop run
in this process, each on its own tracer provider with an in-memory exporter (no
OTLP collector here), and the trace context travels in real Kafka headers."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from confluent_kafka import Producer
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from kcron import deadletter, kafka, retry, state
from kcron.dispatch import TransactionalDispatcher, transactional_id
from kcron.jobfile import parse
from kcron.metrics import Metrics
from kcron.otel import OtelTracing
from kcron.schedule import Run
from kcron.worker import Worker
from tests.conftest import Broker
from tests.integration.runs import create_topics, settings_for

pytestmark = pytest.mark.integration

JOBS = "name=fine * * * * * true\nname=broken attempts=2 * * * * * sh -c 'exit 3'\n"
TIMEOUT_S = 60.0


def in_memory() -> tuple[OtelTracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return OtelTracing(provider), exporter


def attr(span: ReadableSpan, name: str) -> object:
    return (span.attributes or {}).get(name)


def trace_id(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"{span.context.trace_id:032x}"


def stop_when(worker: Worker, done: Callable[[], bool]) -> threading.Thread:
    """SIGTERM's flag for ``worker`` (running on this thread) once ``done()``, or at the timeout."""

    def watch() -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while not done() and time.monotonic() < deadline:
            time.sleep(0.1)
        worker._on_signal(signal.SIGTERM, None)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_a_run_and_its_retry_and_dead_letter_stay_in_the_trace_its_dispatch_began(
    broker: Broker, topic: str, group: str
) -> None:
    settings = settings_for(
        broker.bootstrap,
        topic,
        group=group,
        retry_base_s=0.2,
        retry_cap_s=0.4,
        session_timeout_ms=6000,
        partitions=1,
    )
    create_topics(broker.bootstrap, topic, 1)
    state_topic = state.state_topic(settings)
    kafka.ensure_topic(settings, state_topic, 1, config={"cleanup.policy": "compact"})

    # -- the producer: one transaction, a kcron.dispatch span and a traceparent per run
    produced, producer_spans = in_memory()
    config = kafka.transactional_producer_config(settings, transactional_id(settings, topic))
    dispatcher = TransactionalDispatcher(
        Producer(config), topic, topic, state_topic, Metrics(), tracer=produced
    )
    now = datetime.now(UTC)
    messages = dispatcher.dispatch([Run(now, job) for job in parse(JOBS, "jobs.cron").jobs], now)
    dispatcher.close()
    assert messages is not None
    run_of = {m.job: m.id for m in messages}
    dispatch = {attr(s, "kcron.job"): s for s in producer_spans.get_finished_spans()}
    assert set(dispatch) == {"fine", "broken"}

    # -- the worker, on this thread, until the broken run is dead-lettered
    consumed, worker_spans = in_memory()
    worker = Worker(settings, tracer=consumed)

    def settled() -> list[object]:
        return [
            attr(s, "kcron.next")
            for s in worker_spans.get_finished_spans()
            if s.name == "kcron.settle"
        ]

    watcher = stop_when(worker, lambda: {"committed", "dead_lettered"} <= set(settled()))
    assert worker.run() == 0
    watcher.join()
    spans = worker_spans.get_finished_spans()
    assert sorted(map(str, settled())) == ["committed", "dead_lettered", "retry"], settled()

    # The fine run: dispatch, hold, execute, settle in one trace.
    fine = [s for s in spans if attr(s, "kcron.run_id") == run_of["fine"]]
    assert sorted(s.name for s in fine) == ["kcron.execute", "kcron.hold", "kcron.settle"]
    assert {trace_id(s) for s in fine} == {trace_id(dispatch["fine"])}
    [execute] = [s for s in fine if s.name == "kcron.execute"]
    assert (attr(execute, "kcron.outcome"), attr(execute, "kcron.exit_code")) == ("succeeded", 0)
    assert attr(execute, "kcron.queue") == topic

    # The broken run: both attempts, its retry and its dead letter, in its dispatch's trace.
    broken = [s for s in spans if attr(s, "kcron.run_id") == run_of["broken"]]
    assert {trace_id(s) for s in broken} == {trace_id(dispatch["broken"])}
    executes = [s for s in broken if s.name == "kcron.execute"]
    assert sorted(int(str(attr(s, "kcron.attempt"))) for s in executes) == [1, 2]
    assert all(attr(s, "kcron.exit_code") == 3 for s in executes)
    assert all(s.status.status_code is StatusCode.ERROR for s in executes)

    # The dead letter on the DLQ topic keeps the traceparent header.
    [letter] = deadletter.read_topic(settings, retry.dlq_topic(topic), 1.0)
    headers = dict(letter.headers() or [])
    traceparent = bytes(headers["traceparent"]).decode()
    assert traceparent.split("-")[1] == trace_id(dispatch["broken"])
    assert retry.read_dead_letter(letter.value(), retry.Source("", 0, 0)).id == run_of["broken"]
