"""Run events leave the loop's thread: built, encoded and produced on a thread of their own.

Two run events a run (kcron/events.py) were 42 % of the loop thread's work
(docs/performance.md, round 2): building the record, five timestamps, JSON,
produce. The loop thread decides what to write and books it in the settler's
ledger (kcron/worker/settle.py); the courier's thread does the rest. Its
delivery reports still reach the ledger through the loop's event queue only,
so a run's offset still waits for them, and a failed event leaves the run
uncommitted as before.

Kafka's producer is thread-safe; a report is served by whichever thread polls
the producer (the loop, once per turn) and only queues a message for the loop.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger("kcron.worker")

Work = Callable[[], None]


class Courier(Protocol):
    def post(self, work: Work) -> None:
        """Run ``work`` later, in the order posted; it reports its own failures."""

    def drain(self, timeout_s: float) -> bool:
        """Wait until everything posted so far has run; False on timeout."""

    def close(self) -> None: ...


class InlineCourier:
    """Runs the work at once, on the caller's thread (the loop's, as before round 2)."""

    def post(self, work: Work) -> None:
        work()

    def drain(self, timeout_s: float) -> bool:
        return True

    def close(self) -> None:
        pass


class ThreadCourier:
    """One daemon thread working through what the loop posts, in order."""

    def __init__(self, name: str = "kcron-events") -> None:
        self._queue: queue.SimpleQueue[Work | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def post(self, work: Work) -> None:
        self._queue.put(work)

    def _serve(self) -> None:
        while True:
            work = self._queue.get()
            if work is None:
                return
            try:
                work()
            except Exception:  # the work reports its own failures; never lose the thread
                log.exception("run event work failed")

    def drain(self, timeout_s: float) -> bool:
        done = threading.Event()
        self._queue.put(done.set)
        return done.wait(timeout_s)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(1.0)
