"""Which tracer a process gets: kcron.tracing's no-op hooks, or OpenTelemetry's.

Apart from kcron/tracing.py so that kcron/otel.py, which implements its
hooks, is loaded from here alone, and only when tracing is on.
"""

from __future__ import annotations

from kcron.tracing import NO_TRACING, Tracer, TracingConfig


def start_tracing(config: TracingConfig | None, service: str) -> Tracer:
    """The tracer for this process (``service``: kcron-producer or kcron-worker)."""
    if config is None:
        return NO_TRACING
    from kcron import otel  # imports opentelemetry: only when tracing is on

    return otel.OtelTracing.configured(config, service)
