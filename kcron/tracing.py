"""Tracing hooks: the one interface the producer and the worker call, and when it is on.

OpenTelemetry is optional and off by default. The CLI reads the standard
``OTEL_*`` environment once (``config_from_env``) into ``Settings.tracing``;
``kcron.telemetry.start_tracing`` then gives either ``NoTracing``, whose hooks do nothing, or the
OpenTelemetry implementation in kcron/otel.py, which is the only module that
imports opentelemetry, and only then. So a process without tracing never loads
it, and each hook costs one method call (docs/monitoring.md#tracing).

Spans follow a run (docs/monitoring.md#tracing): ``kcron.dispatch`` on the
producer, then on the worker ``kcron.hold``, ``kcron.execute`` and
``kcron.settle`` for each attempt. The W3C ``traceparent`` travels in the Kafka
record headers of the run, of its retries and of its dead letter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from kcron.errors import ConfigError

if TYPE_CHECKING:
    from kcron.message import RunMessage
    from kcron.worker.runner import Done, Started

# Kafka record headers, as confluent_kafka takes them (kcron writes bytes values).
Headers = list[tuple[str, str | bytes | None]]
# A consumed record's headers.
RecordHeaders = Sequence[tuple[str, str | bytes | None]]
# The headers kcron reads and writes (W3C Trace Context).
TRACE_HEADERS = ("traceparent", "tracestate")
EXPORTERS = ("otlp", "console")
OTLP_PROTOCOL = "http/protobuf"  # the only OTLP transport kcron ships


@dataclass(frozen=True)
class TracingConfig:
    """Tracing is on, exporting spans through ``exporters`` (otlp, console).

    The exporters' own settings (endpoint, headers, timeout), the service name
    and the sampler are read by the OpenTelemetry SDK from the same
    environment, when the CLI starts tracing.
    """

    exporters: tuple[str, ...]


def _flag(env: Mapping[str, str], name: str) -> str:
    return env.get(name, "").strip().lower()


def config_from_env(env: Mapping[str, str]) -> TracingConfig | None:
    """The tracing the environment asks for; None: off. ConfigError if it asks for the unsupported.

    On when ``OTEL_TRACES_EXPORTER`` names exporters other than ``none``, or,
    with it unset, when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set (then: otlp). Off otherwise,
    and always with ``OTEL_SDK_DISABLED=true``. Unlike the SDK's own default,
    an empty environment means off: kcron never sends spans nobody asked for.
    """
    if _flag(env, "OTEL_SDK_DISABLED") == "true":
        return None
    names = [n.strip() for n in _flag(env, "OTEL_TRACES_EXPORTER").split(",") if n.strip()]
    if not names:
        endpoints = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        names = ["otlp"] if any(env.get(e, "").strip() for e in endpoints) else []
    names = [n for n in names if n != "none"]
    if not names:
        return None
    unknown = sorted(set(names) - set(EXPORTERS))
    if unknown:
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER: unsupported exporter {', '.join(unknown)} "
            f"(kcron supports {', '.join(EXPORTERS)}, or none)"
        )
    if "otlp" in names:
        for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
            protocol = _flag(env, name)
            if protocol:
                if protocol != OTLP_PROTOCOL:
                    raise ConfigError(
                        f"{name}={protocol}: kcron exports OTLP over {OTLP_PROTOCOL} only"
                    )
                break
    return TracingConfig(tuple(dict.fromkeys(names)))


@dataclass(frozen=True)
class RunTrace:
    """A taken run's trace: the parent of its spans (an OpenTelemetry Context), when
    it was taken and its open hold span."""

    parent: object
    taken_at: datetime
    hold: object


class DispatchTrace(Protocol):
    """The ``kcron.dispatch`` spans of one batch of runs."""

    def headers(self, run_id: str) -> Headers | None:
        """The record headers that carry run ``run_id``'s trace."""

    def end(self, error: str | None = None) -> None:
        """The batch is committed (or, with ``error``, not)."""


class Tracer(Protocol):
    """What the producer and the worker call at each step of a run."""

    def dispatch(self, runs: Sequence[RunMessage]) -> DispatchTrace:
        """Start one trace per run about to be produced."""

    def taken(self, headers: RecordHeaders | None, now: datetime) -> RunTrace | None:
        """The worker took a run (of a record with ``headers``)."""

    def started(self, event: Started) -> None:
        """The run's command starts: its hold is over."""

    def finished(self, done: Done) -> None:
        """The run came back from the pool."""

    def settled(self, done: Done, step: str, now: datetime) -> Headers | None:
        """Its fate (``step``: committed, retry, dead_lettered): the headers
        for the retry or dead letter that carries the trace on."""

    def shutdown(self) -> None:
        """Export what is buffered; called once, at the end of the process."""


class _NoDispatch:
    def headers(self, run_id: str) -> Headers | None:
        return None

    def end(self, error: str | None = None) -> None:
        return None


_NO_DISPATCH = _NoDispatch()


class NoTracing:
    """Tracing off: every hook returns at once, and opentelemetry is never imported."""

    def dispatch(self, runs: Sequence[RunMessage]) -> DispatchTrace:
        return _NO_DISPATCH

    def taken(self, headers: RecordHeaders | None, now: datetime) -> RunTrace | None:
        return None

    def started(self, event: Started) -> None:
        return None

    def finished(self, done: Done) -> None:
        return None

    def settled(self, done: Done, step: str, now: datetime) -> Headers | None:
        return None

    def shutdown(self) -> None:
        return None


NO_TRACING = NoTracing()
