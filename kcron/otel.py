"""Tracing on: kcron's spans over OpenTelemetry. The only module that imports it.

Loaded by kcron.tracing.start only when the environment turns tracing on.
The tracer provider is this object's own, passed explicitly (never the
global one): the CLI builds one per process and shuts it down at exit, and
tests build theirs on an in-memory exporter.

Worker spans take their times from the worker's clock (the instants it logs),
so one attempt's hold, execute and settle spans line up with its log lines.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import datetime

from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from kcron import __version__
from kcron.executor import Outcome
from kcron.message import RunMessage, format_time
from kcron.tracing import TRACE_HEADERS, Headers, RecordHeaders, RunTrace, TracingConfig
from kcron.worker.runner import Done, Job, Started

_PROPAGATOR = TraceContextTextMapPropagator()  # stateless: W3C traceparent/tracestate
# A stopping process waits this long for its last spans: an unreachable collector
# (the exporter retries for up to OTEL_EXPORTER_OTLP_TIMEOUT) must not hold back a
# producer's hand-over or overrun supervisord's stopwaitsecs.
SHUTDOWN_WAIT_S = 2.0


def ns(when: datetime) -> int:
    """Epoch nanoseconds, as spans take their times."""
    return round(when.timestamp() * 1_000_000) * 1000


def run_attributes(run: RunMessage, topic: str) -> dict[str, str | int]:
    """What every span of a run says about it; ``topic``: where its record is."""
    queue = run.queue or topic.removesuffix(".retry")  # kcron.retry.retry_topic
    attributes: dict[str, str | int] = {
        "kcron.job": run.job,
        "kcron.queue": queue,
        "kcron.run_id": run.id,
        "kcron.scheduled_for": format_time(run.scheduled_for),
        "kcron.attempt": run.attempt,
        "kcron.max_attempts": run.max_attempts,
        "messaging.system": "kafka",
        "messaging.destination.name": topic,
    }
    if run.trigger is not None:
        attributes["kcron.trigger"] = run.trigger
    return attributes


def inject(span: Span) -> Headers:
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=set_span_in_context(span))
    headers: Headers = [(name, value.encode()) for name, value in carrier.items()]
    return headers


def extract(headers: RecordHeaders | None) -> Context | None:
    """The trace context in a record's headers, None if it carries none."""
    carrier = {
        name: value.decode("ascii", errors="replace") if isinstance(value, bytes) else value
        for name, value in headers or ()
        if name in TRACE_HEADERS and value is not None
    }
    if "traceparent" not in carrier:
        return None
    context = _PROPAGATOR.extract(carrier)
    return context if context else None


def _resource(service: str) -> Resource:
    """The SDK's resource (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES), named ``service``
    unless the environment names it."""
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service}))
    return resource


def _exporter(name: str) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    # Reads OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, _HEADERS, _TIMEOUT, ... itself.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


class _Dispatch:
    """One ``kcron.dispatch`` span per run of a producer transaction, each its own trace."""

    def __init__(self, otel: OtelTracing, runs: Sequence[RunMessage]) -> None:
        self._spans: dict[str, Span] = {}
        self._headers: dict[str, Headers] = {}
        for run in runs:
            span = otel.tracer.start_span(
                "kcron.dispatch",
                context=Context(),  # a new trace per run
                kind=SpanKind.PRODUCER,
                attributes=run_attributes(run, run.queue or ""),
            )
            self._spans[run.id] = span
            self._headers[run.id] = inject(span)

    def headers(self, run_id: str) -> Headers | None:
        return self._headers.get(run_id)

    def end(self, error: str | None = None) -> None:
        for span in self._spans.values():
            if error is not None:
                span.set_status(Status(StatusCode.ERROR, error))
            span.end()


class OtelTracing:
    """kcron.tracing.Tracer over an OpenTelemetry tracer provider."""

    def __init__(self, provider: TracerProvider) -> None:
        self._provider = provider
        self.tracer = provider.get_tracer("kcron", __version__)

    @classmethod
    def configured(cls, config: TracingConfig, service: str) -> OtelTracing:
        # OTEL_TRACES_SAMPLER applies. No atexit flush: shutdown() bounds the wait, and
        # a second signal (stop at once) skips it.
        provider = TracerProvider(resource=_resource(service), shutdown_on_exit=False)
        for name in config.exporters:
            processor: SpanProcessor = BatchSpanProcessor(_exporter(name))
            provider.add_span_processor(processor)
        return cls(provider)

    def shutdown(self) -> None:
        """Export what is buffered, waiting at most SHUTDOWN_WAIT_S (then the spans are lost)."""
        flushing = threading.Thread(
            target=self._provider.shutdown, name="otel-shutdown", daemon=True
        )
        flushing.start()
        flushing.join(SHUTDOWN_WAIT_S)

    # -- producer ---------------------------------------------------------------
    def dispatch(self, runs: Sequence[RunMessage]) -> _Dispatch:
        return _Dispatch(self, runs)

    # -- worker -----------------------------------------------------------------
    def taken(self, headers: RecordHeaders | None, now: datetime) -> RunTrace:
        parent = extract(headers)
        hold = self.tracer.start_span(
            "kcron.hold",
            context=parent or Context(),
            kind=SpanKind.CONSUMER,
            start_time=ns(now),
        )
        # Without a producer's trace the hold span is the attempt's root.
        return RunTrace(parent if parent is not None else set_span_in_context(hold), now, hold)

    def _job_attributes(self, span: Span, job: Job) -> None:
        span.set_attributes(run_attributes(job.run, job.partition[0]))
        span.set_attribute("messaging.destination.partition.id", str(job.partition[1]))
        span.set_attribute("messaging.kafka.offset", job.offset)

    def _end_hold(self, job: Job, at: datetime | None, outcome: str | None = None) -> None:
        trace = job.trace
        if not isinstance(trace, RunTrace) or not isinstance(trace.hold, Span):
            return
        if not trace.hold.is_recording():  # ended already
            return
        self._job_attributes(trace.hold, job)
        if outcome is not None:
            trace.hold.set_attribute("kcron.outcome", outcome)
        trace.hold.end(ns(at or trace.taken_at))

    def started(self, event: Started) -> None:
        self._end_hold(event.job, event.started_at)

    def finished(self, done: Done) -> None:
        job, result = done.job, done.result
        if result is not None and result.outcome is Outcome.SKIPPED:
            self._end_hold(job, done.finished_at, result.outcome.value)
            return
        if done.started_at is None:  # cancelled before it started
            return
        span = self._child(job, "kcron.execute", done.started_at)
        if span is None:
            return
        if result is None:
            span.set_status(Status(StatusCode.ERROR, "internal error while executing the run"))
        else:
            span.set_attribute("kcron.outcome", result.outcome.value)
            if result.exit_code is not None:
                span.set_attribute("kcron.exit_code", result.exit_code)
                span.set_attribute("process.exit.code", result.exit_code)
            if not result.ok:
                span.set_status(Status(StatusCode.ERROR, result.error or result.outcome.value))
        span.end(ns(done.finished_at or done.started_at))

    def settled(self, done: Done, step: str, now: datetime) -> Headers | None:
        # From the command's end to its fate decided and handed off.
        span = self._child(done.job, "kcron.settle", min(done.finished_at or now, now))
        if span is None:
            return None
        span.set_attribute("kcron.next", step)
        headers = inject(span)
        span.end(ns(now))
        return headers

    def _child(self, job: Job, name: str, start: datetime) -> Span | None:
        trace = job.trace
        if not isinstance(trace, RunTrace) or not isinstance(trace.parent, Context):
            return None
        span = self.tracer.start_span(name, context=trace.parent, start_time=ns(start))
        self._job_attributes(span, job)
        return span
