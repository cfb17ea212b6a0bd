"""The package's layers import one way, and no module imports itself round a cycle (counting the imports
inside functions too, which is where cycles hide)."""

from __future__ import annotations

import ast
from pathlib import Path

import pyrovae

ROOT = Path(pyrovae.__file__).parent

#: What each part of the package may import from pyrovae. "base" is the modules at the package's top level
#: that stand on nothing else (errors, checks, settings, files, torchtools, plots).
ALLOWED = {
    "base": {"base"},
    "components": {"base", "components"},
    "data": {"base", "data"},
    "models": {"base", "components", "data", "models"},
    "inference": {"base", "components", "data", "models", "inference"},
    "training": {"base", "components", "data", "models", "inference", "training"},
    "evaluation": {"base", "components", "data", "models", "inference", "evaluation"},
    "diagnostics": {"base", "components", "data", "models", "inference", "evaluation", "diagnostics"},
    "app": {"base", "components", "data", "models", "inference", "training", "evaluation", "diagnostics", "app"},
    "package": {"base", "components", "data", "models", "inference", "training", "evaluation", "diagnostics", "app"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def part_of(module: str) -> str:
    parts = module.split(".")
    if module in ("pyrovae", "pyrovae.__main__"):
        return "package"
    if len(parts) == 2 and not (ROOT / parts[1]).is_dir():
        return "base"
    return parts[1]


def imports(path: Path) -> set[str]:
    """The pyrovae modules that ``path`` imports, anywhere in it (module level or inside functions)."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("pyrovae")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("pyrovae"):
                continue
            modules = {f"{target}.{a.name}" for a in node.names} & MODULES  # "from .. import plots": a module
            found |= modules or {target}
    return {m for m in found if _exists(m)}


def _exists(module: str) -> bool:
    rel = Path(*module.split(".")[1:]) if "." in module else Path()
    return (ROOT / rel).with_suffix(".py").is_file() or (ROOT / rel / "__init__.py").is_file()


MODULES = {module_name(p) for p in ROOT.rglob("*.py")}
GRAPH = {module_name(p): imports(p) for p in ROOT.rglob("*.py")}


def test_every_part_imports_only_the_parts_below_it():
    wrong = []
    for module, targets in GRAPH.items():
        for target in targets:
            if target != "pyrovae" and part_of(target) not in ALLOWED[part_of(module)]:
                wrong.append(f"{module} ({part_of(module)}) imports {target} ({part_of(target)})")
    assert wrong == []


def test_no_module_imports_the_package_root():
    assert [m for m, targets in GRAPH.items() if "pyrovae" in targets] == []


def test_there_are_no_import_cycles():
    """A depth-first search over the whole import graph (a package's ``__init__`` counts as importing what it
    re-exports, so a submodule importing its own package's ``__init__`` is not counted as a cycle)."""
    state, cycles = {}, []

    def visit(module, stack):
        state[module] = "open"
        for target in GRAPH.get(module, ()):
            if module.startswith(target + "."):  # a module's own package: Python imports it first anyway
                continue
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_layering_test_sees_a_wrong_import():
    """The check has teeth: a made-up module in the components that imports the trainer is caught."""
    fake = ROOT / "components" / "_fake_for_test.py"
    fake.write_text("from ..training import trainer\n")
    try:
        targets = imports(fake)
    finally:
        fake.unlink()
    assert targets == {"pyrovae.training.trainer"}
    assert part_of("pyrovae.training.trainer") not in ALLOWED[part_of("pyrovae.components._fake_for_test")]
