"""Which partition a run goes to: runs due at the same instant spread evenly. Pure.

A run's key is its run id, a fresh UUID, and the key's hash picks a partition
that looks random: with 10 runs due the same minute on 2 partitions, one gets
7 or more of them in about a third of minutes (P(>= 7 of 10) = 34 %), and the
worker that owns it starts them one after the other while the other idles.
So the producer picks the partition itself: the n-th run due at an instant in
a queue goes to partition ``(start + n) mod partitions``, ``start`` a hash of
the queue and the instant (a queue with one run a minute still uses every
partition). The key stays the run id. The partition is left to the key when
the queue's partition count is unknown, and for an ``overlap=forbid`` job,
whose runs must share the partition their job name's key picks.
(docs/partitions.md)
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from datetime import datetime

from kcron.message import RunMessage

# Instants remembered per placement; past that the oldest are forgotten (their
# runs were dispatched long ago: a producer dispatches an instant's runs in one go).
MAX_INSTANTS = 4096

Counts = Callable[[str], int | None]  # a topic's partition count, None if unknown


def start_of(topic: str, instant: datetime, partitions: int) -> int:
    """The partition an instant's first run goes to, the same on every producer."""
    return zlib.crc32(f"{topic}|{instant.isoformat()}".encode()) % partitions


def spread(start: int, n: int, partitions: int) -> list[int]:
    """Partitions of ``n`` runs due together, round robin from ``start``."""
    return [(start + i) % partitions for i in range(n)]


class Placement:
    """Counts the runs placed per (queue, instant) and deals them round robin."""

    def __init__(self, counts: Counts) -> None:
        self._counts = counts
        self._placed: dict[tuple[str, datetime], int] = {}

    def choose(self, topic: str, run: RunMessage) -> int | None:
        """The run's partition in ``topic``, or None: leave it to the key."""
        if run.forbids_overlap:
            return None
        partitions = self._counts(topic)
        if partitions is None or partitions < 2:
            return None
        instant = (topic, run.scheduled_for)
        n = self._placed.get(instant)
        if n is None:
            if len(self._placed) >= MAX_INSTANTS:
                del self._placed[next(iter(self._placed))]  # the oldest: insertion order
            n = 0
        self._placed[instant] = n + 1
        return (start_of(topic, run.scheduled_for, partitions) + n) % partitions
