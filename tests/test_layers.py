"""The packages stack one way: core (`server`) <- edge (`middleware`) <- `handlers` <- the composition root (`app`).

`client` (the terminal client) sits beside the stack and may use the core only. Read from the source with
`ast`, so an import inside a function counts as much as one at the top of a module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# package -> the packages of ours it may import
ALLOWED = {
    "server": set(),
    "middleware": {"server"},
    "handlers": {"server", "middleware"},
    "app": {"server", "middleware", "handlers"},
    "client": {"server"},
}


def imported_packages(path: Path) -> set[str]:
    """Our top-level packages that one module imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found.update(name.split(".", 1)[0] for name in names)
    return found & set(ALLOWED)


def package_imports() -> dict[str, dict[str, set[str]]]:
    """package -> {module path: the other packages of ours it imports}."""
    return {
        package: {str(module.relative_to(ROOT)): imported_packages(module) - {package} for module in (ROOT / package).rglob("*.py")}
        for package in ALLOWED
    }


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_the_layers_below_it(package: str) -> None:
    modules = package_imports()[package]
    assert modules, f"{package}/ has no modules"
    wrong = {module: sorted(imports - ALLOWED[package]) for module, imports in modules.items() if imports - ALLOWED[package]}
    assert not wrong, f"{package}/ may import only {sorted(ALLOWED[package]) or 'nothing of ours'}; found {wrong}"


def test_no_package_level_cycle() -> None:
    edges = {package: set().union(*modules.values()) for package, modules in package_imports().items()}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(step == goal or (step not in seen and reaches(step, goal, seen | {step})) for step in edges[start])

    cycles = sorted(package for package in edges if reaches(package, package, {package}))
    assert not cycles, f"packages in an import cycle: {cycles} ({edges})"


def test_the_composition_root_is_imported_only_by_run_py_and_tests() -> None:
    importers = sorted(
        str(module.relative_to(ROOT))
        for package in ALLOWED.keys() - {"app"}
        for module in (ROOT / package).rglob("*.py")
        if "app" in imported_packages(module)
    )
    assert importers == []
    assert "app" in imported_packages(ROOT / "run.py")
