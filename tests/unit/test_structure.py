"""The shape the codebase promises its next engineer (docs/development.md).

- no import cycle inside kcron/, counting imports inside functions too;
- the side-effect-free modules never import confluent_kafka;
- no function over 60 lines, no class over 250;
- ``kcron check`` loads no Kafka client and none of the dev tooling.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

KCRON = Path(__file__).resolve().parents[2] / "kcron"
MAX_FUNCTION_LINES = 60
MAX_CLASS_LINES = 250
# The modules of the one-way flow that compute and never talk to Kafka.
PURE = {
    "kcron.jobfile",
    "kcron.schedule",
    "kcron.misfire",
    "kcron.message",
    "kcron.when",
    "kcron.settings",
    "kcron.errors",
    "kcron.retry",
    "kcron.offsets",
    "kcron.executor",
    "kcron.log",
    "kcron.options",
    "kcron.cli_dlq",
    "kcron.topics",
    "kcron.events",
    "kcron.history",
    "kcron.cli_runs",
    "kcron.metrics",
    "kcron.jobtimes",
    "kcron.lag",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(KCRON.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, ast.Module]:
    return {_module_name(p): ast.parse(p.read_text(), str(p)) for p in KCRON.rglob("*.py")}


def _imports(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """Every kcron module this one imports, at top level or inside a function."""
    package = name if name in known and (KCRON / "/".join(name.split(".")[1:])).is_dir() else None
    base = package or name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                anchor = base.rsplit(".", node.level - 1)[0] if node.level > 1 else base
                module = f"{anchor}.{module}" if module else anchor
            targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
        found.update(t for t in targets if t in known and t != name)
    return found


def test_no_import_cycle_in_kcron() -> None:
    modules = _modules()
    graph = {name: _imports(name, tree, set(modules)) for name, tree in modules.items()}
    # A package imports its own submodules by design (re-exports); only
    # module-to-module cycles count.
    for name in graph:
        graph[name] = {t for t in graph[name] if not t.startswith(name + ".")}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt) :], nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_side_effect_free_modules_never_import_kafka() -> None:
    modules = _modules()
    for name in sorted(PURE & set(modules)):
        for node in ast.walk(modules[name]):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n.startswith("confluent_kafka") for n in names), name


def test_functions_and_classes_stay_small() -> None:
    too_long = []
    for path in sorted(KCRON.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                limit = MAX_CLASS_LINES if isinstance(node, ast.ClassDef) else MAX_FUNCTION_LINES
                # From `def`/`class` to the end: a command's option decorators
                # declare its interface and are not counted.
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > limit:
                    rel = path.relative_to(KCRON.parent)
                    too_long.append(f"{rel}:{node.lineno} {node.name}: {length} > {limit} lines")
    assert not too_long, "\n".join(too_long)


def test_check_loads_no_kafka_client_and_no_tooling(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.cron"
    jobs.write_text("*/5 * * * * echo hello\n")
    probe = (
        "import sys\n"
        "from kcron.cli import main\n"
        f"sys.argv = ['kcron', 'check', {str(jobs)!r}]\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "heavy = ('confluent_kafka', 'prometheus_client', 'matplotlib', 'docker', "
        "'testcontainers', 'supervisor')\n"
        "print('LOADED', sorted({m.split('.')[0] for m in sys.modules if m.startswith(heavy)}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert "OK, 1 job" in out
    assert "LOADED []" in out, out
