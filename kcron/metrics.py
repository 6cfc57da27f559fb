"""Prometheus metrics, served only when ``--metrics-port`` is given.

Each process builds its own registry (no module-level globals), so tests and
several workers in one interpreter never share counters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# Lateness and duration both span milliseconds (a healthy tick) to hours (a
# backfill, a long job), hence the wide buckets.
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.dispatched = Counter(
            "kcron_runs_dispatched", "Runs the producer delivered to Kafka.", ["job"], registry=r
        )
        self.delivery_failures = Counter(
            "kcron_delivery_failures", "Runs Kafka did not accept.", ["job"], registry=r
        )
        self.runs = Counter(
            "kcron_runs",
            "Runs a worker finished, by outcome (skipped: overlap=forbid, not started).",
            ["job", "outcome"],
            registry=r,
        )
        self.undecodable = Counter(
            "kcron_undecodable_messages", "Messages skipped as not a valid run.", registry=r
        )
        self.retries = Counter(
            "kcron_retries",
            "Failed runs sent to the retry topic for another attempt.",
            ["job"],
            registry=r,
        )
        self.dead_letters = Counter(
            "kcron_dead_letters",
            "Runs and messages sent to the dead-letter topic, by kind "
            "(exhausted, permanent, undecodable, rejected).",
            ["job", "kind"],
            registry=r,
        )
        self.handoff_failures = Counter(
            "kcron_handoff_failures",
            "Retries and dead letters Kafka did not accept; their runs stay uncommitted.",
            ["topic"],
            registry=r,
        )
        self.rejected = Counter(
            "kcron_runs_rejected",
            "Messages a worker refused to run (unsigned, bad_signature, unknown_key, "
            "wrong_queue, not_allowed); each goes to the dead-letter topic.",
            ["reason", "queue"],
            registry=r,
        )
        self.late = Counter(
            "kcron_runs_late", "Runs started well after they were due.", ["job"], registry=r
        )
        self.lateness = Histogram(
            "kcron_run_lateness_seconds", "Start time minus the due time.", buckets=_SECONDS,
            registry=r,
        )  # fmt: skip
        self.duration = Histogram(
            "kcron_run_duration_seconds", "How long runs took.", buckets=_SECONDS, registry=r
        )
        self.running = Gauge("kcron_runs_running", "Runs executing now.", registry=r)

    def serve(self, port: int, addr: str) -> None:
        start_http_server(port, addr=addr, registry=self.registry)
