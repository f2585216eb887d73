"""docs/api.md's error table names exactly the `error_type` values the code can produce.

The values are collected from the source with `ast`, not listed by hand: every string literal passed as the
`error_type` parameter of any function or class that has one (`ApiError`, `invalid`, `UpstreamError`,
`UpstreamCall.cancel`, a subclass's `super().__init__`...), positionally or by keyword, and every literal
default of such a parameter (`invalid(..., error_type="invalid_request")`).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import ROOT

NOT_SERVED = {"tests", "bench", "deploy", "docs"}  # directories whose code never answers a client
PARAMETER = "error_type"


def gateway_sources() -> list[Path]:
    return sorted(
        path
        for path in ROOT.glob("*/**/*.py")
        if path.relative_to(ROOT).parts[0] not in NOT_SERVED and not path.relative_to(ROOT).parts[0].startswith(".")
    )


def _literals(node: ast.expr) -> Iterator[str]:
    """The strings an argument can be: a literal, or either branch of `a if c else b`."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node.value
    elif isinstance(node, ast.IfExp):
        yield from _literals(node.body)
        yield from _literals(node.orelse)


def _callee(call: ast.Call, enclosing_bases: list[str]) -> str | None:
    """The called name; `super().__init__` counts as a call of the enclosing class's first base."""
    func = call.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        is_super = isinstance(func.value, ast.Call) and isinstance(func.value.func, ast.Name) and func.value.func.id == "super"
        if is_super and func.attr == "__init__":
            return enclosing_bases[0] if enclosing_bases else None
        return func.attr
    return None


def _plain_callables(tree: ast.Module) -> set[str]:
    """Names a module defines without an `error_type` parameter: there they mean the local one, not a namesake."""
    names = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _index(node) is None}
    return names - {"__init__"}


def _positions(trees: list[ast.Module]) -> tuple[dict[str, int], set[str]]:
    """Callable name -> position of its `error_type` parameter (after `self`); and the literal defaults."""
    positions: dict[str, int] = {}
    defaults: set[str] = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                init = next((f for f in node.body if isinstance(f, ast.FunctionDef) and f.name == "__init__"), None)
                if init is not None and _index(init) is not None:
                    positions[node.name] = _index(init)  # type: ignore[assignment]
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name != "__init__" and _index(node) is not None:
                positions[node.name] = _index(node)  # type: ignore[assignment]
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                params = node.args.args
                for param, default in zip(params[len(params) - len(node.args.defaults) :], node.args.defaults, strict=True):
                    if param.arg == PARAMETER:
                        defaults.update(_literals(default))
    return positions, defaults


def _index(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int | None:
    names = [arg.arg for arg in function.args.args if arg.arg not in ("self", "cls")]
    return names.index(PARAMETER) if PARAMETER in names else None


def produced_error_types() -> dict[str, set[str]]:
    """error_type -> the files that produce it."""
    trees = {path: ast.parse(path.read_text(encoding="utf-8"), str(path)) for path in gateway_sources()}
    positions, defaults = _positions(list(trees.values()))
    found: dict[str, set[str]] = {value: {"(a parameter default)"} for value in defaults}
    for path, tree in trees.items():
        plain = _plain_callables(tree)
        for klass_or_module in [tree, *[n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]]:
            bases = [b.id for b in klass_or_module.bases if isinstance(b, ast.Name)] if isinstance(klass_or_module, ast.ClassDef) else []
            for node in ast.walk(klass_or_module):
                if not isinstance(node, ast.Call):
                    continue
                arguments = [kw.value for kw in node.keywords if kw.arg == PARAMETER]
                callee = _callee(node, bases) or ""
                position = None if callee in plain else positions.get(callee)
                if position is not None and len(node.args) > position:
                    arguments.append(node.args[position])
                for argument in arguments:
                    for value in _literals(argument):
                        found.setdefault(value, set()).add(str(path.relative_to(ROOT)))
    return found


def documented_error_types() -> set[str]:
    """The `error_type` column of the table under "## Error types" in docs/api.md."""
    page = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    section = page.split("\n## Error types\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|") for line in section.splitlines() if line.startswith("| ") and not line.startswith("| status")]
    return {name for row in rows for name in re.findall(r"`([a-z_]+)`", row[2])}


def test_the_collector_finds_each_kind_of_producer() -> None:
    found = produced_error_types()
    # ApiError(status, "x"), invalid(..., "x"), invalid's default, UpstreamError("x"), cancel("x"), super().__init__("x")
    for value in ("rate_limited", "unknown_field", "invalid_request", "upstream_error", "upstream_timeout", "client_disconnected"):
        assert value in found, value
    assert "missing_prompt" in found and "rate_limiter_unavailable" in found  # `a if c else b`; a multi-line call
    assert "stdout was closed" not in found  # client/chat.py's own stop(failure), not resume.py's stop(error_type, ...)


def test_docs_error_table_lists_every_error_type_the_code_can_return() -> None:
    produced = produced_error_types()
    documented = documented_error_types()
    missing = {value: sorted(produced[value]) for value in sorted(set(produced) - documented)}
    extra = sorted(documented - set(produced))
    assert not missing and not extra, f"docs/api.md's error table lacks {missing} (value: files) and lists {extra}, which no code returns"
