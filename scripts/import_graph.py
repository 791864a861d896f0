"""The project's import graph at a git revision: modules, arrows, upward arrows and circles.

    python scripts/import_graph.py [REV]        # default HEAD; e.g. ffb88ea (before the house split)

Every ``import`` of ``config/ datasets/ losses/ models/ engine/`` counts, function bodies included (the
same reading as tests/test_layers.py, which keeps the rules; this prints the numbers for any revision).
"""
from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict

PACKAGES = ("config", "datasets", "losses", "models", "engine")
BELOW_ENGINE = ("datasets", "losses", "models", "config")


def graph(rev: str) -> tuple[list[str], set[tuple[str, str]]]:
    files = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev], capture_output=True, text=True,
                           check=True).stdout.split()
    mods = {f[:-3].replace("/", ".").removesuffix(".__init__"): f for f in files
            if f.endswith(".py") and f.split("/")[0] in PACKAGES}
    edges = set()
    for mod, path in mods.items():
        tree = ast.parse(subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True,
                                        check=True).stdout)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            edges.update((mod, n) for n in names if n in mods and n != mod)
    return sorted(mods), edges


def circles(nodes, edges) -> list[list[str]]:
    """Import circles: strongly connected components of more than one module, or a module importing itself
    (Tarjan). ``nodes``: module names; ``edges``: (importer, imported) pairs. tests/test_layers.py uses it too."""
    out_edges = defaultdict(set)
    for a, b in edges:
        out_edges[a].add(b)
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10_000)

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in out_edges[v]:
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
            if len(comp) > 1 or v in out_edges[v]:
                found.append(sorted(comp))

    for v in nodes:
        if v not in index:
            visit(v)
    return found


def main() -> int:
    rev = sys.argv[1] if len(sys.argv) > 1 else "HEAD"
    nodes, edges = graph(rev)
    up = sorted((a, b) for a, b in edges if a.split(".")[0] in BELOW_ENGINE and b.split(".")[0] == "engine")
    for a, b in up:
        print(f"upward: {a} -> {b}")
    print(f"{rev}: {len(nodes)} modules, {len(edges)} import arrows, {len(up)} upward into engine/, "
          f"circles: {circles(nodes, edges) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
