"""Imports follow the data flow: a module imports only from its own folder and from folders earlier in the
documented order (docs/architecture.md, "Import order"), and no import cycle crosses folders.

Every import is counted, also those inside functions (an import hidden in a function still ties the modules).
"""
from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: The documented order, lower layers first: a unit (a folder, a module at the package root, or a module named
#: on its own as ``folder/module``, which then leaves its folder's unit) may import itself and the units before
#: it. Keep in step with docs/architecture.md.
ORDER = {
    "xgen_data": ["errors", "tokenizer", "execute", "store", "shards/shard_format", "attributes/languages",
                  "sources", "sft", "attributes", "query", "mixing", "shards", "stats", "interop"],
    "xgen_train": ["model", "scale", "loop", "export", "evaluate"],
}
#: xgen_train builds on xgen_data (shard format, tokenizer), never the other way round.
PACKAGES = ["xgen_data", "xgen_train"]


def module_name(root: Path, path: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def internal_imports(root: Path, path: Path, modules: set[str]) -> list[tuple[str, int]]:
    """``(imported module, line)`` for every import of a project module in ``path``, function-level included.

    ``from package import name`` counts as importing ``package.name`` when that is a module, else ``package``.
    """
    name = module_name(root, path)
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                pkg = ".".join(base + ([node.module] if node.module else []))
            else:
                pkg = node.module or ""
            targets = [f"{pkg}.{a.name}" if f"{pkg}.{a.name}" in modules else pkg for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules and "." in t:
                t = t.rsplit(".", 1)[0]
            if t in modules:
                out.append((t, node.lineno))
    return out


def import_graph(root: Path, packages=PACKAGES) -> dict[str, list[tuple[str, int]]]:
    files = {}
    for pkg in packages:
        for dirpath, _, names in os.walk(root / pkg):
            for n in names:
                if n.endswith(".py"):
                    p = Path(dirpath) / n
                    files[module_name(root, p)] = p
    modules = set(files)
    return {m: internal_imports(root, p, modules) for m, p in sorted(files.items())}


def unit_of(module: str, order=ORDER) -> tuple[str, str] | None:
    """``(package, unit)``: the unit of ``module`` under its package (``folder/module`` when the order names it,
    else its folder or root module); None for the package itself."""
    parts = module.split(".")
    if len(parts) < 2:
        return None
    if len(parts) > 2 and "/".join(parts[1:3]) in order.get(parts[0], ()):
        return parts[0], "/".join(parts[1:3])
    return parts[0], parts[1]


def order_problems(graph, order=ORDER, packages=PACKAGES) -> list[str]:
    """Imports against the documented order (a later unit imported by an earlier one, or an unlisted unit)."""
    out = []
    for mod, imps in graph.items():
        src = unit_of(mod, order)
        for target, line in imps:
            dst = unit_of(target, order)
            if src is None or dst is None or src == dst:
                continue
            if src[0] != dst[0]:
                if packages.index(dst[0]) > packages.index(src[0]):
                    out.append(f"{mod}:{line} imports {target}: {src[0]} comes before {dst[0]}")
                continue
            units = order[src[0]]
            for u in (src, dst):
                if u[1] not in units:
                    out.append(f"{mod}:{line}: {u[0]}/{u[1]} is not in the documented import order")
            if src[1] in units and dst[1] in units and units.index(dst[1]) > units.index(src[1]):
                out.append(f"{mod}:{line} imports {target}: {dst[1]} comes after {src[1]} in the import order")
    return out


def cross_folder_cycles(graph) -> list[list[str]]:
    """Strongly connected components (Tarjan) of the module graph that hold modules of more than one folder."""
    index, low, stack, on, comps = {}, {}, [], set(), []
    edges = {m: sorted({t for t, _ in imps if t != m}) for m, imps in graph.items()}

    def visit(v):
        work = [(v, iter(edges.get(v, ())))]
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        while work:
            node, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(edges.get(w, ()))))
                    break
                if w in on:
                    low[node] = min(low[node], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == node:
                            break
                    if len({unit_of(m) for m in comp}) > 1:
                        comps.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return comps


def test_imports_follow_the_documented_order():
    graph = import_graph(ROOT)
    assert sum(len(v) for v in graph.values()) > 100  # the walk sees the project's imports
    assert order_problems(graph) == []


def test_no_import_cycle_crosses_folders():
    assert cross_folder_cycles(import_graph(ROOT)) == []


def test_the_order_is_the_documented_one():
    text = (ROOT / "docs" / "architecture.md").read_text()
    for pkg, units in ORDER.items():
        line = f"{pkg}: " + " → ".join(units)
        assert line in text, f"docs/architecture.md lacks the line {line!r}"


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, src in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(src)


@pytest.mark.parametrize("hidden", [False, True])
def test_a_planted_cycle_is_caught(tmp_path, hidden):
    """A cycle between two folders (one side hidden inside a function, or not) and the import against the order
    that closes it are both reported."""
    back = ("def f():\n    from xgen_data.mixing import plan\n" if hidden
            else "from xgen_data.mixing import plan\n")
    _write(tmp_path, {"xgen_data/__init__.py": "", "xgen_data/store/__init__.py": "",
                      "xgen_data/mixing/__init__.py": "", "xgen_data/store/corpus.py": back,
                      "xgen_data/mixing/plan.py": "from xgen_data.store import corpus\n"})
    graph = import_graph(tmp_path, ["xgen_data"])
    assert graph["xgen_data.mixing.plan"] == [("xgen_data.store.corpus", 1)]
    assert cross_folder_cycles(graph) == [["xgen_data.mixing.plan", "xgen_data.store.corpus"]]
    assert [p.split(" imports")[0] for p in order_problems(graph)] == [
        f"xgen_data.store.corpus:{2 if hidden else 1}"]


def test_a_cycle_inside_one_folder_is_allowed_but_not_across_packages(tmp_path):
    _write(tmp_path, {"xgen_data/__init__.py": "", "xgen_data/store/__init__.py": "",
                      "xgen_data/store/a.py": "from xgen_data.store import b\n",
                      "xgen_data/store/b.py": "def f():\n    from xgen_data.store import a\n",
                      "xgen_train/__init__.py": "", "xgen_train/loop/__init__.py": "",
                      "xgen_train/loop/x.py": "",
                      "xgen_data/store/c.py": "import xgen_train.loop.x\n"})
    graph = import_graph(tmp_path)
    assert cross_folder_cycles(graph) == []
    assert order_problems(graph) == ["xgen_data.store.c:1 imports xgen_train.loop.x: xgen_data comes before xgen_train"]


def test_a_module_named_on_its_own_leaves_its_folder(tmp_path):
    """``shards/shard_format`` sits before ``sft`` while ``shards/packing`` sits after it."""
    _write(tmp_path, {"xgen_data/__init__.py": "", "xgen_data/shards/__init__.py": "", "xgen_data/sft/__init__.py": "",
                      "xgen_data/shards/shard_format.py": "", "xgen_data/sft/fmt.py":
                      "from xgen_data.shards import shard_format\n", "xgen_data/shards/packing.py": "",
                      "xgen_data/sft/bad.py": "from xgen_data.shards import packing\n"})
    graph = import_graph(tmp_path, ["xgen_data"])
    assert unit_of("xgen_data.shards.shard_format") == ("xgen_data", "shards/shard_format")
    assert [p.split(" imports")[0] for p in order_problems(graph)] == ["xgen_data.sft.bad:1"]
