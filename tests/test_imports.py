"""Dependencies point one way: shared/ <- services/ <- voicequeue/ (the CLI), and no module imports itself back.

Every `import` and `from ... import` is read from the source with `ast`, including imports inside functions
and under `if TYPE_CHECKING:` (a lazy import is still a dependency). Imports spelled as strings
(`importlib.import_module(...)`) are not seen; shared/ must not name service modules that way either.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator, Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Lower layers never import higher ones.
LAYERS = {"shared": 0, "services": 1, "voicequeue": 2}

Graph = Mapping[str, Mapping[str, int]]  # module -> {imported project module: line of the first such import}


def modules(root: Path) -> dict[str, Path]:
    """Dotted name -> file, for every module of the layered packages under `root`."""
    found = {}
    for top in LAYERS:
        for path in sorted((root / top).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _candidates(node: ast.Import | ast.ImportFrom, name: str, is_package: bool) -> Iterator[list[str]]:
    """For each imported name, the dotted names it may refer to, most specific first."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield _prefixes(alias.name)
        return
    base = node.module or ""
    if node.level:  # relative: resolved against the importing module's package
        package = name.split(".") if is_package else name.split(".")[:-1]
        anchor = package[: len(package) - node.level + 1]
        base = ".".join([*anchor, base] if base else anchor)
    for alias in node.names:  # `from pkg import x`: the module pkg.x if there is one, else pkg itself
        yield _prefixes(f"{base}.{alias.name}")


def _prefixes(dotted: str) -> list[str]:
    parts = dotted.split(".")
    return [".".join(parts[:end]) for end in range(len(parts), 0, -1)]


def graph(root: Path) -> dict[str, dict[str, int]]:
    """Who imports whom among the project's modules (the line of the first such import kept for the report)."""
    known = modules(root)
    edges: dict[str, dict[str, int]] = {}
    for name, path in known.items():
        out = edges.setdefault(name, {})
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for candidates in _candidates(node, name, path.name == "__init__.py"):
                target = next((c for c in candidates if c in known), None)
                if target is not None and target != name:
                    out.setdefault(target, node.lineno)
    return edges


def back_imports(edges: Graph) -> list[str]:
    """Imports from a lower layer into a higher one, as `module:line imports target`."""
    found = []
    for name, targets in sorted(edges.items()):
        for target, line in sorted(targets.items()):
            if LAYERS[name.split(".")[0]] < LAYERS[target.split(".")[0]]:
                found.append(f"{name}:{line} imports {target}")
    return found


def cycles(edges: Graph) -> list[list[str]]:
    """One cycle (a -> b -> ... -> a) through each group of modules that import each other."""
    found = []
    for group in _strongly_connected(edges):
        if len(group) > 1:
            found.append(_cycle_in(edges, group))
    return found


def _strongly_connected(edges: Graph) -> list[set[str]]:
    # Tarjan's algorithm, iterative so a deep import chain cannot hit the recursion limit.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, {}))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, {})))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == node:
                        break
                groups.append(group)
    return groups


def _cycle_in(edges: Graph, group: set[str]) -> list[str]:
    """The shortest path from the group's first module back to itself (breadth first, inside the group)."""
    start = min(group)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(edges.get(node, {})):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if child in group and child not in came_from:
                    came_from[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {sorted(group)}")


def _show(edges: Graph, cycle: list[str]) -> str:
    return " -> ".join(f"{a}:{edges[a][b]}" for a, b in itertools.pairwise(cycle)) + f" -> {cycle[-1]}"


# ---- the project ----

def test_shared_imports_no_service_and_services_import_no_cli() -> None:
    found = back_imports(graph(REPO))
    assert not found, "imports against the layering (shared <- services <- voicequeue):\n" + "\n".join(found)


def test_no_import_cycles() -> None:
    edges = graph(REPO)
    found = cycles(edges)
    assert not found, "import cycles (module:line of the import):\n" + "\n".join(_show(edges, c) for c in found)


# ---- the checker itself, on planted module trees ----

def _tree(root: Path, files: dict[str, str]) -> Path:
    for top in LAYERS:
        (root / top).mkdir(parents=True, exist_ok=True)
        (root / top / "__init__.py").touch()
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_checker_finds_a_back_import_inside_a_function(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "services/__init__.py": "",
        "services/gateway/__init__.py": "",
        "services/gateway/app.py": "from shared import util\n",
        "shared/util.py": "import os\n\n\ndef late():\n    from services.gateway import app\n    return app\n",
        "voicequeue/cli.py": "import services.gateway.app\nfrom shared.util import late\n",
    })
    assert back_imports(graph(root)) == ["shared.util:5 imports services.gateway.app"]


def test_checker_finds_services_importing_the_cli_and_relative_imports(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "services/asr/__init__.py": "",
        "services/asr/worker.py": "from . import config\nfrom ..asr.config import X\n",
        "services/asr/config.py": "X = 1\n",
        "services/tts/__init__.py": "",
        "services/tts/worker.py": "import voicequeue.cli as cli\n",
        "voicequeue/cli.py": "",
    })
    edges = graph(root)
    assert edges["services.asr.worker"] == {"services.asr.config": 1}
    assert back_imports(edges) == ["services.tts.worker:1 imports voicequeue.cli"]


def test_checker_finds_a_cycle_through_a_type_checking_import(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "services/asr/__init__.py": "",
        "services/asr/config.py": "from services.asr import diarization\n",
        "services/asr/diarization/__init__.py": (
            "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from services.asr.config import S\n"),
        "services/asr/diarization/none.py": "from services.asr.diarization import base\n",
        "services/asr/diarization/base.py": "",
        "shared/a.py": "from shared import b\n",
        "shared/b.py": "from shared.c import f\n",
        "shared/c.py": "def f():\n    import shared.a\n",
    })
    edges = graph(root)
    assert sorted(cycles(edges)) == [["services.asr.config", "services.asr.diarization", "services.asr.config"],
                                     ["shared.a", "shared.b", "shared.c", "shared.a"]]
    assert _show(edges, ["shared.a", "shared.b", "shared.c", "shared.a"]) == (
        "shared.a:1 -> shared.b:1 -> shared.c:2 -> shared.a")


def test_checker_passes_a_clean_tree(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "shared/a.py": "import json\nfrom shared import b\n",
        "shared/b.py": "",
        "services/x.py": "from shared import a, b\n",
        "voicequeue/cli.py": "def main():\n    from services import x\n",
    })
    edges = graph(root)
    assert back_imports(edges) == [] and cycles(edges) == []
    assert edges["voicequeue.cli"] == {"services.x": 2}
