"""The structure docs/architecture.md describes, held against the code: imports go one way and never in a
circle, nothing reaches into another module's private names, no module outgrows a sitting, and
everything outside ``unsee.models`` uses a model only through the ``Adapter`` protocol."""

from __future__ import annotations

import ast
from pathlib import Path

import grimp
import pytest
from importlinter import cli

from unsee.models.base import Adapter

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "unsee"
MAX_LINES = 500


def _sources(*folders: Path) -> list[Path]:
    return sorted(p for folder in folders for p in folder.rglob("*.py"))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def test_imports_follow_the_layers_of_pyproject(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    assert cli.lint_imports(no_cache=True, no_logo=True) == 0, "run lint-imports: an import goes against the layers"


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return out


def test_no_module_imports_itself_through_others() -> None:
    graph = grimp.build_graph("unsee", exclude_type_checking_imports=True, cache_dir=None)
    assert _cycles(graph) == []


def test_no_private_name_crosses_a_module_border() -> None:
    crossings = []
    for path in _sources(SRC, ROOT / "benchmarks"):
        tree = _tree(path)
        modules = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                   and (n.module or "").startswith("unsee") for a in n.names}
        modules |= {a.asname or a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                    for a in n.names if a.name.startswith("unsee")}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("unsee"):
                crossings += [f"{path.name}:{node.lineno} {a.name}" for a in node.names
                              if a.name.startswith("_") and a.name != "__version__"]
            elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
                  and node.attr.startswith("_") and not node.attr.startswith("__")):
                crossings.append(f"{path.name}:{node.lineno} {node.value.id}.{node.attr}")
    assert crossings == []


def test_imports_of_the_package_sit_at_module_level() -> None:
    """An import inside a function hides an edge of the layers; only heavy optional dependencies wait."""
    inside = []
    for path in _sources(SRC):
        for fn in ast.walk(_tree(path)):
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                inside += [f"{path.relative_to(SRC)}:{n.lineno}" for n in ast.walk(fn)
                           if isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] == "unsee"]
    assert inside == []


def test_every_source_file_reads_in_one_sitting() -> None:
    long = {str(p.relative_to(SRC)): n for p in _sources(SRC) if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def _protocol_members() -> set[str]:
    members = set()
    for cls in Adapter.__mro__:
        members |= set(getattr(cls, "__annotations__", {})) | {k for k in vars(cls) if not k.startswith("_")}
    return members


def test_code_outside_the_models_uses_a_model_through_the_adapter_protocol() -> None:
    members, unknown, concrete = _protocol_members(), [], []
    for path in _sources(SRC):
        if "models" in path.relative_to(SRC).parts:
            continue
        for fn in ast.walk(_tree(path)):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            args = fn.args.args + fn.args.kwonlyargs + fn.args.posonlyargs
            concrete += [f"{path.name}:{fn.lineno} {a.arg}" for a in args
                         if a.annotation is not None and "HFAdapter" in ast.unparse(a.annotation)]
            typed = {a.arg for a in args if a.annotation is not None and "Adapter" in ast.unparse(a.annotation)}
            unknown += [f"{path.name}:{n.lineno} {n.value.id}.{n.attr}" for n in ast.walk(fn)
                        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in typed
                        and n.attr not in members]
    assert concrete == []
    assert unknown == [], "list these in unsee.models.base.Adapter, or reach them another way"
