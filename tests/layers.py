"""The layer rules of ../shared/DESIGN.md, checked on the source (AST) of every module of the package:

- imports run one way: runtime <- data, bundling, monitor (siblings) <- export, calibration, serving, engines (siblings: none
  imports another) <- benchmarks <- the top package (CLI, commands); a lazy import inside a function counts too;
- no cycle between modules (lazy imports included: a cycle broken only by a lazy import is still a cycle);
- nothing heavy reachable from `fusionrt.runtime` at import time: its module-level imports, followed through every
  fusionrt module they reach, leave the package only for the standard library, numpy, cv2, tokenizers, packaging;
- an inference engine's package (onnxruntime, tensorrt, cuda-bindings, openvino) is imported, or `require`d, in the
  runtime only by the module that backs it.

`violations(sources)` takes module name -> source text, so a test can check a mutated tree as well as the real one."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

__all__ = ["ROOT", "package_sources", "violations"]

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"fusionrt.runtime": 0, "fusionrt.data": 1, "fusionrt.bundling": 1, "fusionrt.monitor": 1, "fusionrt.export": 2,
          "fusionrt.calibration": 2, "fusionrt.serving": 2, "fusionrt.engines": 2, "fusionrt.benchmarks": 3, "fusionrt": 4}
IMPORT_TIME_ALLOWED = {"numpy", "cv2", "tokenizers", "packaging"} | set(sys.stdlib_module_names)
ENGINE_HOMES = {"onnxruntime": {"fusionrt.runtime.backends.onnxruntime"},
                "tensorrt": {"fusionrt.runtime.backends.trt_compat"},
                "tensorrt_rtx": {"fusionrt.runtime.backends.trt_compat"},
                "cuda": {"fusionrt.runtime.cuda"},
                "openvino": {"fusionrt.runtime.backends.openvino"}}


def package_sources(root: Path = ROOT) -> dict:
    """Module name -> source, for every .py file of the folders setup.py maps onto the package."""
    tree = ast.parse((root / "setup.py").read_text())
    mapping = next(ast.literal_eval(node.value) for node in ast.walk(tree) if isinstance(node, ast.Assign)
                   and any(getattr(t, "id", None) == "PACKAGES" for t in node.targets))
    sources = {}
    for package, folder in mapping.items():
        for path in sorted((root / folder).glob("*.py")):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            sources[name] = path.read_text()
    return sources


def _group(module: str) -> str:
    return max((g for g in LAYERS if module == g or module.startswith(g + ".")), key=len)


def _imports(module: str, source: str, packages: set) -> list:
    """(imported name, line, at import time, via require) for every import and literal `require("x")` in `source`."""
    found = []
    package = module if module in packages else module.rpartition(".")[0]

    def visit(node, top_level: bool):
        for child in ast.iter_child_nodes(node):
            nested = top_level and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                nested = False
            if isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno, top_level, False) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - child.level + 1] + ([base] if base else []))
                found.extend((f"{base}.{alias.name}", child.lineno, top_level, False) for alias in child.names)
            elif isinstance(child, ast.Call) and getattr(child.func, "id", None) == "require" and child.args and \
                    isinstance(child.args[0], ast.Constant) and isinstance(child.args[0].value, str):
                found.append((child.args[0].value, child.lineno, top_level, True))
            visit(child, nested)

    visit(ast.parse(source), True)
    return found


def _target(name: str, modules: set) -> str | None:
    """The fusionrt module an imported name loads: `a.b.c` itself, or the module `from a.b import c` reads c from."""
    if not name.startswith("fusionrt"):
        return None
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def violations(sources: dict) -> list:
    """Every broken rule, as one line each (empty when the tree keeps them all)."""
    modules, packages = set(sources), {m for m in sources if any(o.startswith(m + ".") for o in sources)}
    edges, top_edges, external_top, out = {}, {}, {}, []
    for module, source in sources.items():
        edges[module], top_edges[module], external_top[module] = set(), set(), set()
        for name, line, top_level, via_require in _imports(module, source, packages):
            target = _target(name, modules)
            if target is None:
                root = name.split(".")[0]
                if top_level and not via_require:
                    external_top[module].add((root, line))
                home = ENGINE_HOMES.get(root)
                if home is not None and _group(module) == "fusionrt.runtime" and module not in home:
                    out.append(f"{module}:{line}: imports the engine package '{root}' outside its backend "
                               f"({', '.join(sorted(home))})")
                continue
            if target == module:
                continue
            edges[module].add(target)
            if top_level:
                top_edges[module].add(target)
            mine, theirs = _group(module), _group(target)
            if mine != theirs and LAYERS[theirs] >= LAYERS[mine]:
                way = "a sibling layer" if LAYERS[theirs] == LAYERS[mine] else "a layer above it"
                out.append(f"{module}:{line}: imports {target}, from {way} ({mine} -> {theirs})")
    out += [f"import cycle: {' -> '.join(cycle)}" for cycle in _cycles(edges)]
    out += _heavy_at_import_time(sources, top_edges, external_top)
    return out


def _cycles(edges: dict) -> list:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component) + [sorted(component)[0]])

    for v in sorted(edges):
        if v not in index:
            strong(v)
    return found


def _heavy_at_import_time(sources: dict, top_edges: dict, external_top: dict) -> list:
    out = []
    for start in sorted(m for m in sources if _group(m) == "fusionrt.runtime"):
        seen, todo, path = {start}, [start], {start: [start]}
        while todo:
            module = todo.pop()
            parents = [module.rpartition(".")[0]] if "." in module else []  # importing a module runs its package
            for nxt in [*top_edges.get(module, ()), *(p for p in parents if p in sources)]:
                if nxt not in seen:
                    seen.add(nxt)
                    path[nxt] = path[module] + [nxt]
                    todo.append(nxt)
            for root, line in external_top.get(module, ()):
                if root not in IMPORT_TIME_ALLOWED:
                    out.append(f"{start}: importing it imports '{root}' ({' -> '.join(path[module])}, line {line})")
    return sorted(set(out))
