"""The package's imports run one way and no module reaches into another's private names.

Walks the import statements of every module of `dde` (imports inside functions included: a
lazy import that breaks a cycle is still a cycle) and the attribute accesses `obj._name`
(obj not self/cls) of names defined only in other modules."""
import ast
from collections import defaultdict
from pathlib import Path

import dde

PACKAGE = Path(dde.__file__).parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _graph():
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {_module_name(p): p for p in files}
    edges, defined, used = defaultdict(set), defaultdict(set), []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        base = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = base.split(".")
                    stem = ".".join(parts[: len(parts) - node.level + 1])
                    mod = f"{stem}.{node.module}" if node.module else stem
                else:
                    mod = node.module or ""
                targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
            for t in targets:
                while t and t not in modules:
                    t = t.rsplit(".", 1)[0] if "." in t else ""
                if t and t != name:
                    edges[name].add(t)
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name.startswith("_") \
                    and not node.name.startswith("__"):
                defined[node.name].add(name)
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                    and not node.attr.startswith("__"):
                if isinstance(node.ctx, ast.Store):
                    defined[node.attr].add(name)
                elif not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                    used.append((name, node.attr, node.lineno))
            if isinstance(node, ast.Assign):
                for t in node.targets:
                    if isinstance(t, ast.Name) and t.id.startswith("_"):
                        defined[t.id].add(name)
    return modules, edges, defined, used


def test_no_import_cycles():
    """Depth-first search for a cycle among the package's modules (the package __init__
    included: a module importing `from dde import x` depends on all of dde)."""
    modules, edges, _, _ = _graph()
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = "open"
        for n in sorted(edges[m]):
            if state.get(n) == "open":
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n, stack + [n])
        state[m] = "done"

    for m in sorted(modules):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_private_access_across_modules():
    _, _, defined, used = _graph()
    cross = [f"{m}:{line} uses {attr} (defined in {sorted(defined[attr])})"
             for m, attr, line in used if defined.get(attr) and m not in defined[attr]]
    assert not cross, "\n".join(cross)


def test_estimators_and_samplers_never_import_the_models():
    """Normalization, sampling, the score bridge and the MCMC kernels use the model protocol
    (`dde.protocols`), so the arrows run models → partition / sampling, never back."""
    _, edges, _, _ = _graph()

    def reaches(src, dst, seen=()):
        return dst in edges[src] or any(
            reaches(n, dst, seen + (src,)) for n in edges[src] if n not in seen)

    for module in ("dde.partition", "dde.partition.estimate", "dde.sampling", "dde.mcmc",
                   "dde.score", "dde.likelihood", "dde.ode"):
        assert not reaches(module, "dde.models"), module
