"""The house's layers run one way, with no import circle and no upward import hidden in a function.

    entry scripts, scripts/, bench/   ->   engine/   ->   models/ datasets/ losses/   ->   config/

``config/`` is the ground floor (codes, errors, limits, atomic writes, torch files, the
distributed helpers): it imports nothing of ours above it. ``models/`` may use ``datasets/``
(a pretext makes its views) and ``losses/``; ``datasets/`` and ``losses/`` stand on ``config/``
alone. Every project import is read from the source, including those inside functions, and
the module graph they make must have no cycle. An import inside a function is allowed only
where it defers start-up cost (listed in ``DEFERRED`` with the reason); any other one fails.
"""
from __future__ import annotations

import ast
from pathlib import Path

from scripts.import_graph import circles
from tests.conftest import REPO

PACKAGES = ("config", "datasets", "losses", "models", "engine")
# package -> the project packages it may import (besides itself)
MAY_IMPORT: dict[str, set[str]] = {
    "config": set(),
    "datasets": {"config"},
    "losses": {"config"},
    "models": {"config", "datasets", "losses"},
    "engine": {"config", "datasets", "losses", "models"},
}
# (importing module, imported module): why the import waits until it is needed
DEFERRED: dict[tuple[str, str], str] = {
    ("datasets.folder", "datasets.demo"): "the demo generator (GDAL writes) runs only for --ds demo",
    ("engine.plan", "datasets.gpu_aug"): "torchvision.ops (roi_align) loads only when views are made on the device",
    ("engine.loaders", "datasets.gpu_aug"): "as above",
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _project_files() -> list[Path]:
    files = [p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))]
    files += sorted(REPO.glob("*.py")) + sorted((REPO / "scripts").rglob("*.py")) + sorted((REPO / "bench").rglob("*.py"))
    return files


def _imports(path: Path) -> list[tuple[str, bool, int]]:
    """(imported project module, inside a function?, line) for every import of ours in ``path``."""
    tree = ast.parse(path.read_text())
    found: list[tuple[str, bool, int]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((a.name, in_function, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                base = child.module
                # "from engine import checkpoint" imports the module engine.checkpoint
                for a in child.names:
                    sub = f"{base}.{a.name}"
                    found.append((sub if (REPO / Path(*sub.split("."))).with_suffix(".py").exists()
                                  or (REPO / Path(*sub.split(".")) / "__init__.py").exists() else base,
                                  in_function, child.lineno))
            elif isinstance(child, ast.If) and _is_type_checking(child):
                continue                      # typing-only imports never run
            visit(child, nested)

    visit(tree, False)
    return [(m, f, line) for m, f, line in found if m.split(".")[0] in PACKAGES]


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _graph() -> dict[str, list[tuple[str, bool, int]]]:
    return {_module_name(p): _imports(p) for p in _project_files()}


def test_layers_run_one_way():
    bad = []
    for mod, imports in _graph().items():
        pkg = mod.split(".")[0]
        if pkg not in MAY_IMPORT:
            continue                          # entry scripts, scripts/, bench/ may use anything
        for target, _, line in imports:
            tpkg = target.split(".")[0]
            if tpkg != pkg and tpkg not in MAY_IMPORT[pkg]:
                bad.append(f"{mod}:{line} imports {target} (a {tpkg} module, above {pkg})")
    assert bad == []


def test_no_import_hides_in_a_function_except_the_listed_deferrals():
    bad = [f"{mod}:{line} imports {target} inside a function"
           for mod, imports in _graph().items() if mod.split(".")[0] in PACKAGES
           for target, in_function, line in imports if in_function and (mod, target) not in DEFERRED]
    assert bad == []
    unused = [pair for pair in DEFERRED
              if not any(t == pair[1] and f for t, f, _ in _graph().get(pair[0], []))]
    assert unused == [], "DEFERRED lists imports that no longer exist"


def test_no_import_circle():
    graph = {m: sorted({t for t, _, _ in imps if t in _graph_modules()}) for m, imps in _graph().items()
             if m.split(".")[0] in PACKAGES}
    assert circles(list(graph), {(m, t) for m, targets in graph.items() for t in targets}) == []


def _graph_modules() -> set[str]:
    return {_module_name(p) for p in _project_files()}


def test_the_test_sees_the_known_arrows():
    """The parser finds real imports (a test that could not fail would prove nothing)."""
    g = _graph()
    assert ("config.errors", False) in {(t, f) for t, f, _ in g["config.atomic"]}
    assert any(t == "engine.checkpoint" for t, _, _ in g["engine.pretrain"])


def test_every_engine_file_says_its_job_and_stays_short():
    long, undocumented = [], []
    for path in sorted((REPO / "engine").glob("*.py")):
        n = len(path.read_text().splitlines())
        if n > 420:
            long.append(f"{path.name}: {n} lines")
        doc = ast.get_docstring(ast.parse(path.read_text()))
        if path.name != "__init__.py" and not (doc and doc.strip()):
            undocumented.append(path.name)
    assert long == [] and undocumented == []
