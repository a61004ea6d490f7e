"""The Python package's layout holds (docs/architecture.md): no import cycles between modules or
between packages, argparse only under `cli/`, and no module over 400 lines."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "python" / "fot_mem"


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = list(f.relative_to(ROOT.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (f, is_pkg)
    return out


def _edges() -> dict[str, set[str]]:
    """Module -> the fot_mem modules it imports (relative or absolute, at any depth of the file;
    `_core`, the compiled extension, imports nothing of ours)."""
    mods = _modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, (f, is_pkg) in mods.items():
        for node in ast.walk(ast.parse(f.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = m.split(".") if is_pkg else m.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "fot_mem":
                target = node.module
            else:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub.endswith("._core"):
                    continue
                name = sub if sub in mods else target
                if name in mods and name != m:
                    edges[m].add(name)
    return edges


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop()
                    on.discard(x)
                    comp.append(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_import_cycles() -> None:
    edges = _edges()
    assert len(edges) > 40 and sum(map(len, edges.values())) > 100  # the walk saw the package
    assert _cycles(edges) == []


def test_no_package_import_cycles() -> None:
    packages: dict[str, set[str]] = {}
    for m, targets in _edges().items():
        for t in targets:
            if _package(m) != _package(t):
                packages.setdefault(_package(m), set()).add(_package(t))
    assert "fot_mem.torch" in packages["fot_mem.eval"]
    assert _cycles(packages) == []


def test_argparse_only_in_cli() -> None:
    users = {
        str(f.relative_to(ROOT))
        for f, _ in _modules().values()
        if any(
            isinstance(n, (ast.Import, ast.ImportFrom))
            and "argparse"
            in ([a.name for a in n.names] if isinstance(n, ast.Import) else [n.module])
            for n in ast.walk(ast.parse(f.read_text()))
        )
    }
    assert "cli/__init__.py" in users
    assert sorted(u for u in users if not u.startswith("cli/")) == []


def test_no_module_over_400_lines() -> None:
    sizes = {
        str(f.relative_to(ROOT)): len(f.read_text().splitlines()) for f, _ in _modules().values()
    }
    assert sorted(name for name, n in sizes.items() if n > 400) == []


RUST = ROOT.parent.parent / "rust"
_RUST_PATH = re.compile(r"\b((?:crate|super|self)(?:::super)*)::([a-z_][a-z0-9_]*)")


def _rust_top_edges() -> dict[str, set[str]]:
    """Top-level Rust module (rust/<name>/ or rust/<name>.rs) -> the top-level modules its files
    name through `crate::`, `super::` or `self::` paths (comments and `#[cfg(test)]` code
    included: a test may not import a room that imports its own either)."""
    tops = {p.stem if p.is_file() else p.name for p in RUST.iterdir() if p.name != "lib.rs"}
    edges: dict[str, set[str]] = {t: set() for t in tops}
    for f in RUST.rglob("*.rs"):
        rel = f.relative_to(RUST).with_suffix("").parts
        if rel == ("lib",):
            continue
        # the module path of this file, and of the module `super` names from it
        module = list(rel[:-1]) if rel[-1] == "mod" else list(rel)
        for head, name in _RUST_PATH.findall(f.read_text()):
            if head == "crate":
                path = [name]
            else:
                ups = head.count("super")
                base = module[: len(module) - ups] if ups <= len(module) else []
                path = [*base, name]
            if path[0] in tops and path[0] != module[0]:
                edges[module[0]].add(path[0])
    return edges


def test_no_rust_module_cycles() -> None:
    edges = _rust_top_edges()
    assert {"simd", "error"} <= edges["search"] and "store" in edges["bindings"]
    assert _cycles(edges) == []
