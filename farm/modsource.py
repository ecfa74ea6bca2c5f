"""Finding and reading job modules without running them: `render` (often as root) and
`status` must not execute the application's code."""
from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Iterable


def locate(module: str, root: Path | None = None) -> Path | None:
    """The file `import module` would load, searching the project root first, then sys.path;
    parent packages are found on disk, not imported."""
    parts = module.split(".")
    for base in ([str(root)] if root else []) + [p or "." for p in sys.path]:
        here = Path(base).joinpath(*parts)
        for candidate in (here.with_suffix(".py"), here / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def job_timeouts(path: Path) -> list[float]:
    """The literal `timeout` values the module gives its job classes (`timeout = 600` in a
    class body) and `@farm.job(timeout=600)` functions, read from the source."""
    try:
        tree = ast.parse(path.read_bytes(), str(path))
    except (OSError, SyntaxError, ValueError):
        return []
    found: list[float] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            found += [v for stmt in node.body for v in _assigned_timeout(stmt)]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found += [v for d in node.decorator_list if isinstance(d, ast.Call) for v in _keyword_timeout(d)]
    return found


def longest(modules: Iterable[str], root: Path | None = None) -> float | None:
    values = [t for m in modules if (p := locate(m, root)) for t in job_timeouts(p)]
    return max(values) if values else None


def _number(node: ast.AST | None) -> list[float]:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) \
            and not isinstance(node.value, bool) and node.value > 0:
        return [float(node.value)]
    return []


def _assigned_timeout(stmt: ast.stmt) -> list[float]:
    if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "timeout" for t in stmt.targets):
        return _number(stmt.value)
    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.target.id == "timeout":
        return _number(stmt.value)
    return []


def _keyword_timeout(call: ast.Call) -> list[float]:
    return [v for k in call.keywords if k.arg == "timeout" for v in _number(k.value)]
