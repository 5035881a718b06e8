"""The code's shape, checked from its syntax trees: no import cycle in the library, nothing in the
library imports the runner or the experiments, no module reaches into another's underscore names,
and no module grows past 450 lines."""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "supsup_jax"
MAX_LINES = 450
# Underscore names that are public API by convention: NamedTuple methods, jit's cache counter.
ALLOWED_PRIVATE = {"_replace", "_asdict", "_fields", "_make", "_cache_size"}


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules(folder: pathlib.Path) -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in sorted(folder.rglob("*.py"))}


def _imports(path: pathlib.Path, known: set[str]) -> set[str]:
    """The known modules ``path`` imports, at any depth of its body (function-level too)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for t in targets:
            # `from a import b` names module a.b if it exists, else a name inside module a.
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m):
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def _graph() -> dict[str, set[str]]:
    modules = _modules(LIBRARY)
    known = set(modules) | set(_modules(ROOT / "experiments"))
    # A package's __init__ re-exporting its submodules is not an edge back from them.
    return {m: {n for n in _imports(p, known) if not m.startswith(n + ".")}
            for m, p in modules.items()}


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_the_library():
    graph = _graph()
    assert len(graph) > 40 and "supsup_jax.bank" in graph["supsup_jax.inference"]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_library_imports_neither_the_runner_nor_the_experiments():
    for m, deps in _graph().items():
        if m.startswith("supsup_jax.runner"):
            continue
        bad = {d for d in deps if d.startswith(("supsup_jax.runner", "experiments"))}
        assert not bad, f"{m} imports {sorted(bad)}"


def _private_uses(path: pathlib.Path) -> list[str]:
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                and not node.attr.startswith("__") and node.attr not in ALLOWED_PRIVATE
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
            found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
        if isinstance(node, ast.ImportFrom) and node.module:
            found += [f"{where}:{node.lineno}: from {node.module} import {a.name}"
                      for a in node.names if a.name.startswith("_")]
    return found


@pytest.mark.parametrize("folder", ["supsup_jax", "experiments", "benchmarks", "scripts"])
def test_no_module_uses_another_modules_underscore_names(folder, tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from supsup_jax import bank\nbank._write(1)\nself._ok = 1\n")
    assert len(_private_uses(bad)) == 1  # the checker itself sees a use
    uses = [u for p in sorted((ROOT / folder).rglob("*.py")) for u in _private_uses(p)]
    assert not uses, "\n".join(uses)


def test_no_module_is_longer_than_450_lines():
    long = {str(p.relative_to(ROOT)): n for folder in ("supsup_jax", "experiments")
            for p in (ROOT / folder).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long
