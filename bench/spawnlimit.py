"""The machine's spawn limit: how many `true` processes it can fork, exec and reap
per second with every core busy, the best of several honest ways (issue 16).

- ``subprocess.run``: one Python loop per core, ``subprocess.run([TRUE])``;
- ``posix_spawn``: one Python loop per core, ``os.posix_spawn`` + ``os.waitpid``
  (no pipes, no PATH search, no Python ``Popen`` object);
- ``xargs -P``: ``xargs -P<cores>`` runs one ``sh`` loop per core, each
  forking and exec'ing ``/usr/bin/true`` (the binary, not the shell builtin)
  a fixed number of times, sized from the rates just measured.

The limit is the highest of the three, measured in the same P3 repeat right
before kcron's runs, so both see the same machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from typing import Any

METHODS = ("subprocess.run", "posix_spawn", "xargs -P")

_RUN_LOOP = """
import subprocess, sys, time
true = sys.argv[2]
end = time.monotonic() + float(sys.argv[1])
n = 0
while time.monotonic() < end:
    subprocess.run([true])
    n += 1
print(n)
"""

_SPAWN_LOOP = """
import os, sys, time
true = sys.argv[2]
env = dict(os.environ)
end = time.monotonic() + float(sys.argv[1])
n = 0
while time.monotonic() < end:
    os.waitpid(os.posix_spawn(true, [true], env), 0)
    n += 1
print(n)
"""


def true_path() -> str:
    return shutil.which("true") or "/bin/true"


def _python_loops(code: str, seconds: float, loops: int) -> dict[str, Any]:
    started = time.monotonic()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(seconds), true_path()],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(loops)
    ]
    counts = [int(p.communicate()[0].strip() or 0) for p in procs]
    elapsed = max(seconds, time.monotonic() - started)
    return {
        "spawns": sum(counts),
        "seconds": seconds,
        "per_s": sum(counts) / seconds,
        "per_s_per_loop": [c / seconds for c in counts],
        "wall_s": elapsed,
    }


def _xargs(seconds: float, loops: int, guess_per_s: float) -> dict[str, Any]:
    """``loops`` shell loops under ``xargs -P``, sized to take about ``seconds``."""
    each = max(20, int(guess_per_s * seconds / loops))
    script = f'i=0; while [ "$i" -lt {each} ]; do {true_path()}; i=$((i+1)); done'
    started = time.monotonic()
    subprocess.run(
        ["xargs", "-P", str(loops), "-n", "1", "sh", "-c", script, "sh"],
        input="x\n" * loops,
        text=True,
        check=True,
        capture_output=True,
    )
    elapsed = time.monotonic() - started
    return {"spawns": each * loops, "seconds": elapsed, "per_s": each * loops / elapsed}


def measure(seconds: float, loops: int | None = None) -> dict[str, Any]:
    """Each method for about ``seconds``, one after the other; the limit is the best."""
    loops = loops or os.cpu_count() or 1
    methods: dict[str, dict[str, Any]] = {
        "subprocess.run": _python_loops(_RUN_LOOP, seconds, loops),
        "posix_spawn": _python_loops(_SPAWN_LOOP, seconds, loops),
    }
    guess = max(m["per_s"] for m in methods.values())
    methods["xargs -P"] = _xargs(seconds, loops, guess)
    best = max(methods, key=lambda name: methods[name]["per_s"])
    return {
        "loops": loops,
        "methods": methods,
        "best": best,
        "per_s": methods[best]["per_s"],
    }


def main() -> int:
    """`python -m bench.spawnlimit [SECONDS]`: print the limit and each method."""
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
    limit = measure(seconds)
    for name, row in limit["methods"].items():
        print(f"{name:15} {row['per_s']:8.0f} /s")
    print(f"{'limit':15} {limit['per_s']:8.0f} /s ({limit['best']}, {limit['loops']} loops)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
