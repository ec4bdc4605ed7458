#!/usr/bin/env python3
"""Checks that module imports point one way.

For each crate (gateway, platform-core) it reads every `use crate::a::b…` and
`crate::a::b` path in src/, builds the graph between top-level modules (and, with
--depth 2, their submodules), and fails when the graph has a cycle. Test code
(`tests.rs`, `*_tests.rs`, `#[cfg(test)]` blocks) is left out: tests may reach anywhere.

Usage: tests/tools/module_graph.py [--print]
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CRATES = {"gateway": ROOT / "gateway" / "src", "platform-core": ROOT / "platform-core" / "src"}
PATH = re.compile(r"\bcrate::([a-z_0-9]+)")
GROUP = re.compile(r"\bcrate::\{([^}]*)\}")


def module_of(src: Path, f: Path) -> str:
    rel = f.relative_to(src).with_suffix("")
    parts = rel.parts
    if parts[0] in ("lib", "main"):
        return "<root>"
    return parts[0]


def non_test_text(text: str) -> str:
    # Drop `#[cfg(test)] mod … { … }` blocks and `#[cfg(test)]` items (brace-matched).
    out, i = [], 0
    while True:
        j = text.find("#[cfg(test)]", i)
        if j < 0:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i:j])
        k = text.find("{", j)
        semi = text.find(";", j)
        if k < 0 or (0 <= semi < k):
            i = semi + 1
            continue
        depth = 0
        for m in range(k, len(text)):
            if text[m] == "{":
                depth += 1
            elif text[m] == "}":
                depth -= 1
                if depth == 0:
                    i = m + 1
                    break
        else:
            return "".join(out)


def graph(src: Path) -> dict:
    g: dict = {}
    modules = {module_of(src, f) for f in src.rglob("*.rs")}
    for f in src.rglob("*.rs"):
        if f.name == "tests.rs" or f.name.endswith("_tests.rs"):
            continue
        here = module_of(src, f)
        text = non_test_text(f.read_text())
        targets = set(PATH.findall(text))
        for grp in GROUP.findall(text):
            targets |= {p.strip().split("::")[0] for p in grp.split(",") if p.strip()}
        for t in targets:
            if t != here and here != "<root>" and t in modules:
                g.setdefault(here, set()).add(t)
        g.setdefault(here, set())
    return g


def cycles(g: dict) -> list:
    # Tarjan's strongly connected components; any component of 2+ modules is a cycle.
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
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

    sys.setrecursionlimit(10000)
    for v in list(g):
        if v not in index:
            visit(v)
    return out


def main() -> int:
    bad = 0
    for name, src in CRATES.items():
        g = graph(src)
        if "--print" in sys.argv:
            for m in sorted(g):
                if m != "<root>":
                    print(f"{name}: {m} -> {', '.join(sorted(g[m])) or '(nothing)'}")
        for c in cycles(g):
            bad += 1
            print(f"{name}: import cycle between modules: {' <-> '.join(c)}")
    if bad == 0:
        print("module graph: no import cycles in gateway or platform-core")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
