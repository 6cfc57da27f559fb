"""Tracing: when OTEL_* turns it on, the spans a run leaves (producer and worker,
retries and dead letters in the same trace), and that off means not even loaded.

The span logic runs on the SDK's in-memory exporter, the worker on the fake
Kafka (tests/unit/fake_worker_kafka.py) with its fixed clock.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from kcron.dispatch import Dispatcher, TransactionalDispatcher
from kcron.errors import ConfigError, FencedError
from kcron.executor import Outcome
from kcron.jobfile import parse
from kcron.message import format_time
from kcron.metrics import Metrics
from kcron.otel import OtelTracing
from kcron.schedule import Run
from kcron.tracing import TracingConfig, config_from_env
from tests.unit.fake_worker_kafka import DLQ, RETRY, T0, TOPIC, Harness, Plan, a_run
from tests.unit.producer_fakes import FakeTxnProducer, PlainRecorder, kafka_error

P0 = (TOPIC, 0)
R0 = (RETRY, 0)
NS = 1_000_000_000


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer(spans: InMemorySpanExporter) -> OtelTracing:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    return OtelTracing(provider)


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def traceparent(headers: Any) -> tuple[str, str]:
    """(trace id, parent span id) of a record's traceparent header."""
    found = dict(headers or [])
    _version, trace_id, span_id, _flags = bytes(found["traceparent"]).decode().split("-")
    return trace_id, span_id


def ids(span: ReadableSpan) -> tuple[str, str]:
    """(trace id, span id) as a traceparent header writes them."""
    assert span.context is not None
    return f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"


def parent_id(span: ReadableSpan) -> str | None:
    return None if span.parent is None else f"{span.parent.span_id:016x}"


# -- the environment rule ------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "exporters"),
    [
        ({}, None),
        ({"OTEL_SERVICE_NAME": "x"}, None),
        ({"OTEL_TRACES_EXPORTER": "none"}, None),
        ({"OTEL_TRACES_EXPORTER": "console"}, ("console",)),
        ({"OTEL_TRACES_EXPORTER": "otlp, console"}, ("otlp", "console")),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ("otlp",)),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, ("otlp",)),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, None),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "TRUE"}, None),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "false"}, ("console",)),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
            ("otlp",),
        ),
    ],
)
def test_tracing_is_on_only_when_the_otel_environment_asks(
    env: dict[str, str], exporters: tuple[str, ...] | None
) -> None:
    config = config_from_env(env)
    assert (None if config is None else config.exporters) == exporters


@pytest.mark.parametrize(
    ("env", "complaint"),
    [
        ({"OTEL_TRACES_EXPORTER": "jaeger"}, "unsupported exporter jaeger"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "http/protobuf only",
        ),
    ],
)
def test_an_exporter_kcron_cannot_serve_is_a_config_error(
    env: dict[str, str], complaint: str
) -> None:
    with pytest.raises(ConfigError, match=complaint):
        config_from_env(env)


# -- producer ----------------------------------------------------------------------


JOBS = "name=plain * * * * * echo plain\nname=gpu queue=cluster-a * * * * * echo gpu\n"


def test_each_dispatched_run_starts_its_own_trace_and_carries_it_in_its_headers(
    tracer: OtelTracing, spans: InMemorySpanExporter
) -> None:
    txn = FakeTxnProducer()
    dispatcher = TransactionalDispatcher(
        txn, "kcron.jobs", "jobs", "kcron.jobs.state", Metrics(), lambda s: None, tracer=tracer
    )
    jobs = parse(JOBS, "jobs.cron").jobs
    messages = dispatcher.dispatch([Run(T0, job) for job in jobs], T0, lambda: False)
    assert messages is not None

    dispatched = named(spans, "kcron.dispatch")
    assert len(dispatched) == 2
    assert len({ids(s)[0] for s in dispatched}) == 2  # a trace per run
    assert all(s.parent is None and s.status.status_code is StatusCode.UNSET for s in dispatched)
    by_run = {s.attributes["kcron.run_id"]: s for s in dispatched if s.attributes}
    gpu = next(m for m in messages if m.job == "gpu")
    attributes = by_run[gpu.id].attributes
    assert attributes is not None
    assert (
        dict(attributes).items()
        >= {
            "kcron.job": "gpu",
            "kcron.queue": "cluster-a",
            "kcron.scheduled_for": format_time(T0),
            "kcron.attempt": 1,
            "messaging.destination.name": "cluster-a",
        }.items()
    )
    # Run records carry their span's traceparent; the state records carry none.
    produced = dict(zip((t for t, _k, _v in txn.committed[0]), txn.headers, strict=True))
    trace_id, span_id = ids(by_run[gpu.id])
    assert traceparent(produced["cluster-a"]) == (trace_id, span_id)
    assert produced["kcron.jobs.state"] is None


def test_a_fenced_dispatch_ends_its_spans_as_errors(
    tracer: OtelTracing, spans: InMemorySpanExporter
) -> None:
    txn = FakeTxnProducer()
    txn.fail_commits.append(kafka_error(-144, fatal=True))  # _FENCED
    dispatcher = TransactionalDispatcher(
        txn, "kcron.jobs", "jobs", "kcron.jobs.state", Metrics(), lambda s: None, tracer=tracer
    )
    job = parse(JOBS, "jobs.cron").jobs[0]
    with pytest.raises(FencedError):
        dispatcher.dispatch([Run(T0, job)], T0, lambda: False)
    [span] = named(spans, "kcron.dispatch")
    assert span.status.status_code is StatusCode.ERROR
    assert "another producer" in (span.status.description or "")


def test_backfill_and_trigger_runs_are_traced_too(
    tracer: OtelTracing, spans: InMemorySpanExporter
) -> None:
    class Recorder(PlainRecorder):
        def __init__(self) -> None:
            super().__init__()
            self.headers: list[Any] = []

        def produce(
            self, topic: str, *, key: Any, value: bytes, on_delivery: Any, **kw: Any
        ) -> None:
            super().produce(topic, key=key, value=value, on_delivery=on_delivery)
            self.headers.append(kw.get("headers"))
            on_delivery(None, None)

    recorder = Recorder()
    dispatcher = Dispatcher(recorder, "kcron.jobs", Metrics(), tracer=tracer)
    msg = dispatcher.send(Run(T0, parse(JOBS, "jobs.cron").jobs[0]), T0, trigger="manual")
    [span] = named(spans, "kcron.dispatch")
    assert span.attributes is not None and span.attributes["kcron.trigger"] == "manual"
    assert span.attributes["kcron.run_id"] == msg.id
    assert traceparent(recorder.headers[0]) == ids(span)


# -- worker ------------------------------------------------------------------------


def dispatched_headers(tracer: OtelTracing, run: Any) -> list[tuple[str, Any]]:
    trace = tracer.dispatch([run])
    headers = trace.headers(run.id)
    trace.end()
    assert headers is not None
    return headers


def test_a_run_is_held_executed_and_settled_in_its_dispatch_trace(
    tracer: OtelTracing, spans: InMemorySpanExporter
) -> None:
    h = Harness({"backup": Plan(seconds=3)}, tracer=tracer)
    run = a_run(scheduled_for=T0 + timedelta(seconds=2), queue=TOPIC)
    h.kafka.add(P0, run.encode(), headers=dispatched_headers(tracer, run))
    h.kafka.at(0, lambda: h.kafka.assign([P0]))
    h.kafka.when(lambda: h.kafka.stored == {P0: 1}, h.signal)

    assert h.run() == 0

    [dispatch] = named(spans, "kcron.dispatch")
    [hold] = named(spans, "kcron.hold")
    [execute] = named(spans, "kcron.execute")
    [settle] = named(spans, "kcron.settle")
    trace_id, dispatch_id = ids(dispatch)
    for span in (hold, execute, settle):
        assert ids(span)[0] == trace_id
        assert parent_id(span) == dispatch_id
        assert span.attributes is not None
        assert span.attributes["kcron.job"] == "backup"
        assert span.attributes["kcron.queue"] == TOPIC
        assert span.attributes["kcron.run_id"] == run.id
        assert span.attributes["kcron.attempt"] == 1
    # Taken at once, held until due 2 s later, ran 3 s: the worker's own clock.
    t0 = round(T0.timestamp()) * NS
    assert hold.start_time is not None and hold.end_time is not None
    assert hold.start_time < t0 + NS // 2 and hold.end_time >= t0 + 2 * NS
    assert execute.start_time == hold.end_time
    assert execute.start_time is not None and execute.end_time is not None
    assert 3 * NS <= execute.end_time - execute.start_time < 3.5 * NS  # the fake's poll steps
    assert execute.attributes is not None
    assert execute.attributes["kcron.outcome"] == "succeeded"
    assert execute.attributes["kcron.exit_code"] == 0
    assert execute.status.status_code is StatusCode.UNSET
    assert settle.attributes is not None and settle.attributes["kcron.next"] == "committed"
    assert all(p.headers is None for p in h.kafka.events)  # run events carry no trace


def test_a_failing_run_keeps_its_trace_through_its_retry_into_its_dead_letter(
    tracer: OtelTracing, spans: InMemorySpanExporter
) -> None:
    h = Harness({"backup": Plan(seconds=1, outcome=Outcome.FAILED, exit_code=7)}, tracer=tracer)
    run = a_run(max_attempts=2, queue=TOPIC)
    h.kafka.add(P0, run.encode(), headers=dispatched_headers(tracer, run))
    h.kafka.at(0, lambda: h.kafka.assign([P0, R0]))

    def forward_the_retry() -> None:
        [retry] = [p for p in h.kafka.produced if p.topic == RETRY]
        h.kafka.add(R0, retry.value, retry.key, retry.headers)

    h.kafka.when(lambda: any(p.topic == RETRY for p in h.kafka.produced), forward_the_retry)
    h.kafka.when(lambda: any(p.topic == DLQ for p in h.kafka.produced), h.signal)

    assert h.run() == 0

    [dispatch] = named(spans, "kcron.dispatch")
    trace_id = ids(dispatch)[0]
    executes = named(spans, "kcron.execute")
    settles = named(spans, "kcron.settle")
    assert {ids(s)[0] for s in spans.get_finished_spans()} == {trace_id}  # one trace
    assert [s.attributes["kcron.attempt"] for s in executes if s.attributes] == [1, 2]
    assert all(s.status.status_code is StatusCode.ERROR for s in executes)
    assert all(s.attributes and s.attributes["kcron.exit_code"] == 7 for s in executes)
    assert [s.attributes["kcron.next"] for s in settles if s.attributes] == [
        "retry",
        "dead_lettered",
    ]
    # Attempt 2 continues from attempt 1's settle span, through the retry's header.
    first_settle = ids(settles[0])[1]
    assert parent_id(executes[1]) == first_settle
    [retry] = [p for p in h.kafka.produced if p.topic == RETRY]
    [dead] = [p for p in h.kafka.produced if p.topic == DLQ]
    assert traceparent(retry.headers) == (trace_id, first_settle)
    assert traceparent(dead.headers) == ids(settles[1])
    assert json.loads(dead.value)["kind"] == "exhausted"
    assert h.kafka.committed == {P0: 1, R0: 1}


def test_a_run_without_a_trace_gets_one_rooted_at_its_hold(
    tracer: OtelTracing, spans: InMemorySpanExporter
) -> None:
    h = Harness(tracer=tracer)
    h.kafka.add(P0, a_run().encode())  # written by hand, or by a producer not tracing
    h.kafka.at(0, lambda: h.kafka.assign([P0]))
    h.kafka.when(lambda: h.kafka.stored == {P0: 1}, h.signal)

    assert h.run() == 0

    [hold] = named(spans, "kcron.hold")
    [execute] = named(spans, "kcron.execute")
    assert hold.parent is None
    assert parent_id(execute) == ids(hold)[1]
    assert ids(execute)[0] == ids(hold)[0]


def test_a_skipped_run_ends_its_hold_as_skipped(
    tracer: OtelTracing, spans: InMemorySpanExporter
) -> None:
    h = Harness({"sync": Plan(seconds=90)}, tracer=tracer)
    h.kafka.add(P0, a_run("sync", overlap="forbid").encode())
    later = T0 + timedelta(seconds=60)
    h.kafka.add(P0, a_run("sync", n=1, overlap="forbid", scheduled_for=later).encode())
    h.kafka.at(0, lambda: h.kafka.assign([P0]))
    h.kafka.at(100, h.signal)

    assert h.run() == 0

    holds = named(spans, "kcron.hold")
    outcomes = [s.attributes.get("kcron.outcome") for s in holds if s.attributes]
    assert outcomes == [None, "skipped"]
    assert len(named(spans, "kcron.execute")) == 1


def test_with_tracing_off_no_record_carries_a_trace_header() -> None:
    h = Harness({"backup": Plan(seconds=1, outcome=Outcome.FAILED, exit_code=1)})
    h.kafka.add(P0, a_run().encode())
    h.kafka.at(0, lambda: h.kafka.assign([P0]))
    h.kafka.when(lambda: bool(h.kafka.produced), h.signal)

    assert h.run() == 0

    assert [p.topic for p in h.kafka.produced] == [RETRY]
    assert all(p.headers is None for p in h.kafka.produced + h.kafka.events)


# -- off means not loaded ------------------------------------------------------------

PROBE = """
import sys
from datetime import UTC, datetime
from kcron.options import build_settings
from kcron.worker import Worker
from kcron import dispatch, producer
from kcron.telemetry import start_tracing
from kcron.jobfile import parse
from kcron.message import format_time
from kcron.schedule import Run

settings = build_settings("consume", {"topic": "jobs"})
worker = Worker(settings)
job = parse("name=a * * * * * true", "jobs.cron").jobs[0]
msg = dispatch.build_message(Run(datetime.now(UTC), job), datetime.now(UTC), "jobs")
start_tracing(settings.tracing, "probe").dispatch([msg]).end()
print("TRACING", settings.tracing)
print("LOADED", sorted({m.split(".")[0] for m in sys.modules if m.startswith("opentelemetry")}))
"""


def _probe(**otel: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(otel)
    return subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
    ).stdout


def test_without_otel_environment_the_worker_and_producer_never_import_opentelemetry() -> None:
    out = _probe()
    assert "TRACING None" in out and "LOADED []" in out, out


def test_with_otel_environment_opentelemetry_is_loaded() -> None:
    # The counterpart: the probe above can see opentelemetry when it is there.
    out = _probe(OTEL_TRACES_EXPORTER="none, console", OTEL_BSP_SCHEDULE_DELAY="10")
    assert "TracingConfig(exporters=('console',))" in out
    assert "LOADED ['opentelemetry']" in out, out
    assert isinstance(config_from_env({"OTEL_TRACES_EXPORTER": "console"}), TracingConfig)


def test_the_off_cost_bench_runs_and_off_stays_far_from_the_sdk(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from bench import tracing_cost

    tracing_cost.main(["--runs", "2000", "--repeat", "3", "--no-sdk"])
    out = capsys.readouterr().out
    off = float(out.split("cost when off:")[1].split("ns")[0])
    # About 0.3 µs on the dev machine; the SDK's spans cost some 70 µs. A hook that
    # started doing real work when off would cross this bound by far.
    assert off < 10_000, out


def test_a_command_asked_for_an_unsupported_exporter_stops_as_misconfigured(
    tmp_path: Path,
) -> None:
    from click.testing import CliRunner

    from kcron.cli import cli

    jobs = tmp_path / "jobs.cron"
    jobs.write_text("name=hello * * * * * true\n")
    env = {"OTEL_TRACES_EXPORTER": "jaeger", "KCRON_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    result = CliRunner().invoke(cli, ["trigger", "hello", "--jobs", str(jobs)], env=env)
    assert result.exit_code == 78, result.output
    assert "unsupported exporter jaeger" in result.output
    # A command that neither writes nor runs runs does not read OTEL_* at all.
    assert CliRunner().invoke(cli, ["check", str(jobs)], env=env).exit_code == 0
