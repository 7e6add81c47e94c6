"""The project's modules import each other without a loop (imports inside functions included), and the
ground-floor packages (episodes, models, matchers, prompts) never import each other."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("episodes", "fewshot", "matchers", "models", "prompts")
GROUND_FLOOR = ("episodes", "models", "matchers", "prompts")
SHARED = ("registry", "prototypes")   # top-level modules every package may import


def _modules() -> dict:
    mods = {name: ROOT / f"{name}.py" for name in SHARED}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).glob("*.py")):
            mods[pkg if f.stem == "__init__" else f"{pkg}.{f.stem}"] = f
    return mods


def _imports(name: str, path: Path, mods: dict) -> set:
    """Project modules that ``name`` imports anywhere in its file (a package's own __init__ left out:
    Python imports it before any of its modules anyway)."""
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            prefix = ".".join(base + ([node.module] if node.module else []))
            targets = [prefix] + [f"{prefix}.{a.name}" for a in node.names]
        else:
            continue
        out.update(t for t in targets if t in mods and t != name and not name.startswith(t + "."))
    return out


def _graph() -> dict:
    mods = _modules()
    return {name: _imports(name, path, mods) for name, path in mods.items()}


def test_no_module_imports_itself_through_others():
    graph, state, loops = _graph(), {}, []

    def visit(node, path):
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                loops.append(" -> ".join(path[path.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not loops, "import loops: " + "; ".join(loops)


def test_ground_floor_packages_never_import_each_other():
    crossing = [f"{m} imports {d}" for m, deps in _graph().items() for d in deps
                if m.split(".")[0] in GROUND_FLOOR and d.split(".")[0] in GROUND_FLOOR
                and d.split(".")[0] != m.split(".")[0]]
    assert not crossing, crossing
