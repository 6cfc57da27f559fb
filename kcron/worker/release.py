"""Giving runs back: when partitions move (revoke, lost) and when the worker stops.

Runs not started yet are dropped (their offsets stay uncommitted, so they are
delivered again); running ones get a grace to finish, then what finished is
committed. A second signal cuts every wait short: running jobs are killed and
nothing is committed for them.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from kcron.log import fields
from kcron.settings import Settings
from kcron.worker.hold import HoldQueue
from kcron.worker.partitions import Partitions
from kcron.worker.port import ConsumerPort, PartitionKey, ProducerPort
from kcron.worker.runner import Pool
from kcron.worker.settle import Settler

log = logging.getLogger("kcron.worker")

# How long a rebalance or shutdown waits for pending retries and dead letters
# to be confirmed before committing; unconfirmed ones stay uncommitted.
HANDOFF_FLUSH_S = 10.0


@dataclass(frozen=True)
class Crew:
    """The worker's collaborators once it is connected; shared by the loop and this."""

    settings: Settings
    consumer: ConsumerPort
    producer: ProducerPort
    settler: Settler
    pool: Pool
    partitions: Partitions
    hold: HoldQueue
    kill_signal: Callable[[], int | None]  # a second signal came: stop at once


class Releaser:
    def __init__(
        self, crew: Crew, drain: Callable[[], None], monotonic: Callable[[], float]
    ) -> None:
        self._crew = crew
        self._drain = drain
        self._monotonic = monotonic

    def _now_or_never(self) -> bool:
        return self._crew.kill_signal() is not None

    # -- rebalance ---------------------------------------------------------------
    def on_assign(self, keys: Sequence[PartitionKey], now: datetime | None = None) -> None:
        parts = self._crew.partitions
        # A partition's previous owner gets up to the grace to finish its runs on
        # revoke: forbid runs here wait as long (kcron/worker/overlap.py).
        quiet = now + timedelta(seconds=self._crew.settings.grace_s) if now else None
        parts.assign(keys, quiet_until=quiet)
        log.info("partitions assigned", extra=fields(**parts.split(parts.assigned)))

    def on_revoke(self, keys: Sequence[PartitionKey]) -> None:
        moved = set(keys)
        log.info("partitions revoked", extra=fields(**self._crew.partitions.split(moved)))
        self._release(moved, wait_s=self._crew.settings.grace_s)
        if not self._now_or_never():
            self._crew.settler.flush(HANDOFF_FLUSH_S)
            self._drain()
            self._commit("commit on revoke")
        self._crew.partitions.forget(moved)

    def on_lost(self, keys: Sequence[PartitionKey]) -> None:
        lost = set(keys)
        log.warning(
            "partitions lost; their unfinished runs will be redelivered",
            extra=fields(**self._crew.partitions.split(lost)),
        )
        self._release(lost, wait_s=0)
        self._crew.partitions.forget(lost, lost=True)

    def _release(self, keys: set[PartitionKey], wait_s: float) -> None:
        """Hand back queued runs of ``keys``; give running ones ``wait_s`` to finish."""
        pool = self._crew.pool
        self._crew.hold.drop(keys)
        pool.cancel_queued(keys)
        deadline = self._monotonic() + wait_s
        while pool.pending(keys) and self._monotonic() < deadline and not self._now_or_never():
            self._drain()
            self._crew.producer.poll(0.01)  # hand-off reports; also the pause between checks
        self._drain()
        still = [f"{job.partition[1]}@{job.offset}" for job in pool.pending(keys)]
        if still:
            log.warning(
                "runs still going on a moved partition; the new owner may run them again",
                extra=fields(runs=still),
            )

    def _commit(self, what: str) -> None:
        result = self._crew.consumer.commit()
        if result.error is not None:
            log.warning(f"{what} failed", extra=fields(error=result.error))
            return
        log_committed(result.offsets)

    # -- shutdown --------------------------------------------------------------
    def shutdown(self) -> int | None:
        """Stop taking runs, let running ones finish within the grace, commit.

        Returns the second signal if one cut this short, else None.
        """
        crew, pool = self._crew, self._crew.pool
        crew.hold.clear()  # not started: left uncommitted, so redelivered
        pool.cancel_queued()
        grace_s = crew.settings.grace_s
        log.info("shutting down", extra=fields(running=len(pool.pending()), grace_s=grace_s))
        if crew.partitions.assigned:
            crew.consumer.pause(crew.partitions.pause_all())
        self._wait(self._monotonic() + grace_s)
        if pool.pending() and not self._now_or_never():
            log.warning(
                "grace period over; killing running jobs, they will be redelivered",
                extra=fields(runs=len(pool.pending())),
            )
            pool.cancel_running()
            self._wait(None)
        if self._now_or_never():
            return self._halt()
        crew.settler.flush(HANDOFF_FLUSH_S)
        self._drain()
        self._commit("final commit")
        return None

    def _wait(self, deadline: float | None) -> None:
        """Until the pool is empty, ``deadline`` passes, or a second signal comes."""
        pool = self._crew.pool
        while pool.pending() and not self._now_or_never():
            if deadline is not None and self._monotonic() >= deadline:
                return
            self._crew.consumer.poll(0.05)  # keeps group membership alive while jobs finish
            self._drain()

    def _halt(self) -> int:
        signum = self._crew.kill_signal()
        assert signum is not None
        killed = self._crew.pool.kill()
        log.warning(
            "second signal: stopping now; running runs killed, not committed",
            extra=fields(signal=signal.Signals(signum).name, killed=killed),
        )
        return signum


def log_committed(offsets: Mapping[PartitionKey, int]) -> None:
    """DEBUG: which offsets the group now has; fault tests use it to bound duplicates."""
    if not log.isEnabledFor(logging.DEBUG):
        return
    shown: dict[str, Any] = {f"{t}:{p}": o for (t, p), o in offsets.items() if o >= 0}
    if shown:
        log.debug("offsets committed", extra=fields(offsets=shown))
