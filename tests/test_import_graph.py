"""The house rules of DESIGN.md, checked on the source: every import arrow of ``compiler/``,
``passes/`` and ``targets/`` points down, and there is no cycle.

Imports are read with ``ast`` at module *and* function level alike (an import inside a
function is still an arrow), so hiding a cycle in a function does not pass.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("compiler", "passes", "targets")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module (or package) ``name`` refers to, trimming attribute names off the end."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imports(mod: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Our modules that ``mod`` imports anywhere in its file."""
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base_name = ".".join(base + ([node.module] if node.module else []))
            else:
                base_name = node.module or ""
            names = [f"{base_name}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] in PACKAGES:
                target = _resolve(name, modules)
                if target and target != mod:
                    out.add(target)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(m, p, modules) for m, p in modules.items()}


def _room(mod: str) -> str:
    """The room of a module: ``targets``, ``passes``, or ``compiler.<folder or file>``."""
    parts = mod.split(".")
    if parts[0] != "compiler":
        return parts[0]
    return ".".join(parts[:2]) if len(parts) > 1 else "compiler"


# room -> rooms it must never import (DESIGN.md, "Rooms and the arrows between them")
FORBIDDEN = {
    "targets": {"passes", "compiler.*"},
    "passes": {"compiler.*"},
    "compiler.errors": {"compiler.*", "passes"},
    "compiler.data": {"compiler.frontend", "compiler.lower", "compiler.artifact",
                      "compiler.pipeline", "compiler.api", "compiler.tuning",
                      "compiler.search", "compiler.cli", "passes"},
    "compiler.artifact": {"compiler.frontend", "compiler.lower", "compiler.pipeline",
                          "compiler.api", "compiler.tuning", "compiler.search", "compiler.cli",
                          "passes"},
    "compiler.frontend": {"compiler.lower", "compiler.pipeline", "compiler.api",
                          "compiler.tuning", "compiler.search", "compiler.cli", "passes"},
    "compiler.lower": {"compiler.frontend", "compiler.pipeline", "compiler.api",
                       "compiler.tuning", "compiler.search", "compiler.cli", "compiler.artifact"},
    "compiler.evaluate": {"compiler.api", "compiler.tuning", "compiler.search", "compiler.cli",
                          "compiler.frontend", "compiler.lower", "compiler.pipeline"},
    "compiler.stats": {"compiler.api", "compiler.tuning", "compiler.search", "compiler.cli"},
    "compiler.pipeline": {"compiler.api", "compiler.tuning", "compiler.search", "compiler.cli",
                          "compiler.lower", "compiler.artifact"},
    "compiler.api": {"compiler.tuning.tune", "compiler.search", "compiler.cli"},
    "compiler.tuning": {"compiler.api", "compiler.search", "compiler.cli",
                        "compiler.embedded"},
    # the embedded lowering: below the API, beside lower/ (it shares the tuning logs' lock)
    "compiler.embedded": {"compiler.frontend", "compiler.lower", "compiler.pipeline",
                          "compiler.api", "compiler.search", "compiler.cli",
                          "compiler.artifact", "compiler.tuning.tune"},
    "compiler.search": {"compiler.cli", "compiler.tuning"},
}

# what passes/ may import of its own: only the IR helpers are shared by the compiler's rooms
COMPILER_MAY_IMPORT_OF_PASSES = {
    "compiler.lower": {"passes._ir"},
    "compiler.embedded": {"passes._ir", "passes.calibration"},
    "compiler.frontend": set(),
}


def _matches(target: str, rule: str) -> bool:
    if rule.endswith(".*"):
        return target == rule[:-2] or target.startswith(rule[:-1])
    return target == rule or target.startswith(rule + ".")


def test_no_arrow_points_up() -> None:
    bad = []
    for mod, targets in _graph().items():
        room = _room(mod)
        for rule_room, rules in FORBIDDEN.items():
            if not _matches(mod, rule_room):
                continue
            for t in targets:
                if _room(t) != room and any(_matches(t, r) for r in rules):
                    bad.append(f"{mod} -> {t}")
        allowed = COMPILER_MAY_IMPORT_OF_PASSES.get(room)
        if allowed is not None:
            bad += [f"{mod} -> {t} (only {sorted(allowed) or 'nothing'} of passes/)"
                    for t in targets if _room(t) == "passes" and t not in allowed]
    assert not bad, "imports that point up:\n" + "\n".join(sorted(bad))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle a depth-first walk of ``graph`` closes (each as a path back to its start)."""
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return cycles


def test_no_import_cycles() -> None:
    cycles = _cycles(_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


@pytest.mark.parametrize("room", ["targets", "passes"])
def test_bottom_rooms_never_import_the_compiler(room: str) -> None:
    """Checked on its own too: the rule a newcomer is most likely to break."""
    bad = [f"{m} -> {t}" for m, ts in _graph().items() if _room(m) == room
           for t in ts if t.startswith("compiler")]
    assert not bad, "\n".join(bad)


def test_the_checker_sees_function_level_imports(tmp_path: Path) -> None:
    """A negative case: an import hidden inside a function is still an arrow."""
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from compiler import api\n    return api\n")
    assert _imports("passes.m", src, _modules()) == {"compiler.api"}
