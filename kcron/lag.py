"""A queue's worker group as the producer's metrics show it: members and lag. Pure.

The numbers come through ``GroupsPort`` (kcron/probe.py over Kafka's admin
API; a fake in the unit tests). A broker that cannot answer one of the
questions leaves that metric out, and says so once, rather than exporting a
made-up zero.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from kcron.log import fields
from kcron.settings import group_for

log = logging.getLogger("kcron.metrics")

Watermarks = Mapping[int, tuple[int, int]]  # partition -> (low, high)


class GroupsPort(Protocol):
    """What the producer asks the broker about a queue; each raises on failure."""

    def members(self, group: str) -> int: ...

    def committed(self, group: str, topic: str) -> Mapping[int, int]:
        """The group's committed offset per partition of ``topic`` (absent: none)."""

    def watermarks(self, topic: str) -> Watermarks: ...


def lag(watermarks: Watermarks, committed: Mapping[int, int]) -> int:
    """Messages the group has not committed: a partition without a commit counts
    from its low watermark (what a new group starting at the earliest reads)."""
    total = 0
    for partition, (low, high) in watermarks.items():
        done = committed.get(partition, -1)
        start = done if done >= 0 else low
        total += max(0, high - max(start, low))
    return total


@dataclass
class QueueReader:
    """Reads each queue's members and lag; a failing question is logged once, then
    at debug level, and its metric left out (None)."""

    port: GroupsPort
    group: str | None = None  # --group, when set
    _failing: set[str] = field(default_factory=set)

    def read(self, queue: str) -> tuple[int | None, int | None]:
        group = group_for(queue, self.group)
        members = self._ask("describe consumer groups", queue, lambda: self.port.members(group))
        behind = self._ask(
            "consumer group offsets and watermarks",
            queue,
            lambda: lag(self.port.watermarks(queue), self.port.committed(group, queue)),
        )
        return members, behind

    def _ask(self, what: str, queue: str, question: _Question) -> int | None:
        try:
            answer = question()
        except Exception as exc:  # any client error: the metric is left out, never fatal
            level = logging.DEBUG if what in self._failing else logging.WARNING
            self._failing.add(what)
            log.log(
                level,
                f"cannot read the queue's {what}; its metric is left out",
                extra=fields(queue=queue, error=str(exc)),
            )
            return None
        if what in self._failing:
            self._failing.discard(what)
            log.info(f"the queue's {what} can be read again", extra=fields(queue=queue))
        return answer


class _Question(Protocol):
    def __call__(self) -> int: ...
