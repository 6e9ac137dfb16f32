"""The package's import graph: no circle, and no module imports a layer above its own.

Every ``import``/``from ... import`` in every module counts, including the ones inside functions
(a lazy import is still a dependency). Run ``python tests/test_layers.py`` to print the graph.
"""
import ast
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "fromage_mini"

# lowest first; a module may import its own layer and the layers below
LAYERS = [
    {"errors", "files", "paths", "config", "presets", "version", "metrics"},
    {"data", "toyworld"},
    {"model"},
    {"infer"},
    {"retrieval"},
    {"eval", "tools"},
    {"train"},
    {"chat", "qa", "tour", "cli", "__init__"},
]


def module_name(path: Path, root: Path = PKG) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path = PKG) -> set[str]:
    """Absolute fromage_mini modules that ``path`` imports (a name imported from a package that is
    itself a module counts as that module)."""
    mod = module_name(path, root)
    pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("fromage_mini"):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if _exists(sub, root) else target)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("fromage_mini")}
    out.discard(mod)
    return out


def _exists(mod: str, root: Path = PKG) -> bool:
    p = root.parent / Path(*mod.split("."))
    return p.with_suffix(".py").exists() or (p / "__init__.py").exists()


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in PKG.rglob("*.py") if "data_samples" not in p.parts}


def layer(mod: str) -> int:
    parts = mod.split(".")
    key = parts[1] if len(parts) > 1 else "__init__"
    for i, names in enumerate(LAYERS):
        if key in names:
            return i
    raise AssertionError(f"{mod}: not in any layer (add it to LAYERS)")


def test_no_module_imports_a_layer_above_its_own():
    bad = [f"{m} (layer {layer(m)}) imports {t} (layer {layer(t)})"
           for m, targets in sorted(graph().items()) for t in sorted(targets) if layer(t) > layer(m)]
    assert not bad, "\n".join(bad)


def test_no_import_circle():
    g = graph()
    # the package's own __init__ files import their children; children importing a name from their
    # parent package's __init__ is what would close a circle, so __init__ edges are kept
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in sorted(g.get(m, ())):
            if state.get(t) == "open":
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"

    for m in sorted(g):
        if m not in state:
            visit(m)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_lazy_imports(tmp_path):
    assert any(t.startswith("fromage_mini.") for t in imports(PKG / "model" / "losses.py"))  # real files
    root = tmp_path / "fromage_mini"
    (root / "model").mkdir(parents=True)
    (root / "infer").mkdir()
    (root / "infer" / "generate.py").write_text("")
    (root / "model" / "x.py").write_text("def f():\n    from ..infer import generate\n")
    assert imports(root / "model" / "x.py", root) == {"fromage_mini.infer.generate"}


if __name__ == "__main__":
    for m, t in sorted(graph().items()):
        print(f"{m} [{layer(m)}] -> {', '.join(sorted(t)) or '-'}")
    sys.exit(0)
