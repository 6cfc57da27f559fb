"""What a worker refuses to run, decided before anything is spawned. Pure.

With a key set, a run must carry a valid signature by one of its keys and
name the queue this worker serves: the queue is signed, so a signed run
copied onto another pool's topic is refused there. With an allow-list, its
command must match one of its patterns. A refused run is dead-lettered as
``rejected`` by the settler and never executed (docs/security.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from kcron.allowlist import AllowList
from kcron.message import RunMessage
from kcron.signing import KeySet, Refusal, Verdict


@dataclass(frozen=True)
class Guard:
    topic: str  # the queue this worker serves
    keys: KeySet | None = None
    allow: AllowList | None = None

    def check(self, raw: bytes | None, run: RunMessage) -> Verdict | None:
        """None to run ``run`` (decoded from ``raw``), else why not."""
        if self.keys is not None:
            refusal = self.keys.verify_raw(raw or b"")
            if refusal is not None:
                return refusal
            if run.queue != self.topic:
                return Verdict(
                    Refusal.WRONG_QUEUE,
                    f"signed for queue '{run.queue}', read from queue '{self.topic}'",
                )
        if self.allow is not None and not self.allow.allows(run.command, run.shell):
            what = "shell command" if run.shell else "command"
            return Verdict(Refusal.NOT_ALLOWED, f"{what} not in the allow-list {self.allow.path}")
        return None
