"""What a worker refuses to run, decided before anything is spawned. Pure.

With a key set, a run must carry a valid signature by one of its keys and
name the queue this worker serves: the queue is signed, so a signed run
copied onto another pool's topic is refused there. With an allow-list, its
command must match one of its patterns. A refused run is dead-lettered as
``rejected`` by the settler and never executed (docs/security.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from kcron.allowlist import AllowList
from kcron.message import RunMessage, format_time
from kcron.signing import KeySet, Refusal, Verdict


@dataclass(frozen=True)
class Guard:
    topic: str  # the queue this worker serves
    keys: KeySet | None = None
    allow: AllowList | None = None
    max_age: timedelta | None = None  # the replay window, with keys only

    def check(self, raw: bytes | None, run: RunMessage, now: datetime) -> Verdict | None:
        """None to run ``run`` (decoded from ``raw``) at ``now``, else why not."""
        if self.keys is not None:
            refusal = self.keys.verify_raw(raw or b"")
            if refusal is not None:
                return refusal
            if run.queue != self.topic:
                # Every signing writer names the queue; a signed run without one is
                # not one of ours, and could be replayed onto any topic.
                signed_for = "no queue" if run.queue is None else f"queue '{run.queue}'"
                return Verdict(
                    Refusal.WRONG_QUEUE, f"signed for {signed_for}, read from queue '{self.topic}'"
                )
            # Every writer signs with produced_at = now (a retry and a requeue
            # too), so a verbatim replay is refused once it is this old.
            if self.max_age is not None and now - run.produced_at > self.max_age:
                return Verdict(
                    Refusal.STALE,
                    f"written at {format_time(run.produced_at)}, longer ago than the "
                    f"max run age of {self.max_age.total_seconds():g} s",
                )
        if self.allow is not None and not self.allow.allows(run.command, run.shell):
            what = "shell command" if run.shell else "command"
            return Verdict(Refusal.NOT_ALLOWED, f"{what} not in the allow-list {self.allow.path}")
        return None
