"""The layer picture of DESIGN.md, held by the imports: every arrow points down, none goes round.

A file may import its own group and any group on a lower rank; groups on one rank are peers and
never import each other (the tokenizer and the diffusion model, data and the frozen networks).
Every import counts: at module level, inside a function, under TYPE_CHECKING.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# (rank, group, files): lowest first. A file belongs to the first entry whose pattern matches.
LAYERS: list[tuple[int, str, str]] = [
    (0, "base", "ldm/*.py"),  # config, records, paths, files, errors, progress, ... (root)
    (1, "training", "ldm/training/*.py"),
    (2, "data", "ldm/data/*.py"),
    (2, "pretrained", "ldm/pretrained/*.py"),
    (3, "metrics", "ldm/metrics/*.py"),
    (4, "report", "ldm/report/*.py"),
    (5, "tokenizer", "ldm/tokenizer/*.py"),
    (5, "diffusion", "ldm/diffusion/*.py"),
    (6, "generate", "ldm/generate.py"),
    (7, "tracking", "ldm/tracking/*.py"),
    (8, "stages", "ldm/stages/*.py"),
    (9, "cli", "ldm/cli/*.py"),
    (9, "cli", "ldm/__main__.py"),
    (9, "flows", "flows/*.py"),
    (10, "bench", "bench/*.py"),
]
# Exceptions to the root-is-base rule: files at the root that sit higher up.
SPECIFIC = ("ldm/generate.py", "ldm/__main__.py")


def layer_of(rel: str) -> tuple[int, str]:
    for rank, group, pattern in LAYERS:
        if rel in SPECIFIC and pattern != rel:
            continue
        if Path(rel).match(pattern) and rel.count("/") == pattern.count("/"):
            return rank, group
    raise AssertionError(f"{rel} is in no layer: add it to LAYERS")


def source_files() -> list[str]:
    files = [*(REPO / "ldm").rglob("*.py"), *(REPO / "flows").rglob("*.py")]
    files += (REPO / "bench").glob("*.py")
    return sorted(str(f.relative_to(REPO)) for f in files)


def module_file(name: str, importer: str) -> str | None:
    """The repository file a dotted module name resolves to, or None for a library."""
    candidates = [Path(*name.split("."))]
    if importer.startswith("bench/"):  # bench scripts import their siblings by plain name
        candidates.append(Path("bench", *name.split(".")))
    for base in candidates:
        for path in (base / "__init__.py", base.with_suffix(".py")):
            if (REPO / path).is_file():
                return str(path)
    return None


def imports_of(rel: str) -> set[str]:
    """The repository files `rel` imports, anywhere in it; `from pkg import submodule` counts
    as an import of the submodule, not of the package's face."""
    found: set[str] = set()
    for node in ast.walk(ast.parse((REPO / rel).read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            subs = [f"{node.module}.{a.name}" for a in node.names]
            submodules = [s for s in subs if module_file(s, rel)]
            names = submodules if len(submodules) == len(subs) else [node.module, *submodules]
        else:
            continue
        found |= {f for name in names if (f := module_file(name, rel)) and f != rel}
    return found


GRAPH = {rel: imports_of(rel) for rel in source_files()}


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    wrong = []
    for rel, targets in graph.items():
        rank, group = layer_of(rel)
        for target in targets:
            t_rank, t_group = layer_of(target)
            if t_group != group and t_rank >= rank:
                wrong.append(f"{rel} ({group}) imports {target} ({t_group})")
    return sorted(wrong)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every file that is on an import cycle, with one cycle through it (Tarjan's SCCs)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_every_import_points_down_the_layers() -> None:
    assert upward_imports(GRAPH) == []


def test_no_file_imports_itself_round_a_circle() -> None:
    assert cycles(GRAPH) == []


def test_the_checks_catch_an_upward_import_and_a_cycle() -> None:
    graph = dict(GRAPH)
    graph["ldm/metrics/frechet.py"] = GRAPH["ldm/metrics/frechet.py"] | {"ldm/tokenizer/model.py"}
    assert upward_imports(graph) == [
        "ldm/metrics/frechet.py (metrics) imports ldm/tokenizer/model.py (tokenizer)"
    ]
    graph["ldm/tokenizer/model.py"] = GRAPH["ldm/tokenizer/model.py"] | {"ldm/tokenizer/train.py"}
    assert ["ldm/tokenizer/model.py", "ldm/tokenizer/train.py"] in cycles(graph)
    peers = dict(GRAPH, **{"ldm/diffusion/sample.py": {"ldm/tokenizer/model.py"}})
    assert upward_imports(peers) == [
        "ldm/diffusion/sample.py (diffusion) imports ldm/tokenizer/model.py (tokenizer)"
    ]


def test_imports_inside_functions_count() -> None:
    # runner.py imports the tracking package only inside `run`, so that a stage starts fast.
    assert "ldm/tracking/__init__.py" in GRAPH["ldm/stages/runner.py"]
    # A bench script's sibling import by plain name (after a sys.path insert) is an edge too.
    assert "bench/dit_throughput.py" in GRAPH["bench/gpu_check.py"]


@pytest.mark.parametrize("init", sorted((REPO / "ldm").rglob("__init__.py")), ids=str)
def test_package_faces_define_nothing(init: Path) -> None:
    """A package's __init__ is its face: a docstring and imports, the logic in named files."""
    tree = ast.parse(init.read_text())
    defined = [
        n.name
        for n in tree.body
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    ]
    assert defined == [], init


def test_the_root_reads_as_the_base() -> None:
    """`ls ldm/` shows the layers: at most 12 base modules beside __init__ and __main__."""
    root = [p.name for p in (REPO / "ldm").glob("*.py")]
    assert len(set(root) - {"__init__.py", "__main__.py"}) <= 12, sorted(root)
