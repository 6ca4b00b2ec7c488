"""Code versions computed from what an asset actually runs: its own source, the helpers of its module it
calls, and every medcot_pipeline module it imports, directly or through others (read from the source,
function-local imports included). A module nobody lists by hand cannot be forgotten.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import json
import textwrap
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

PACKAGE = "medcot_pipeline"


PACKAGE_ROOT = Path(__file__).resolve().parents[1]


@lru_cache(maxsize=None)
def _module_file(module: str) -> Path | None:
    """The source file of a package module, found on disk (nothing is imported)."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_ROOT.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _resolve(node: ast.ImportFrom, current: str) -> str:
    """The absolute module an ImportFrom reads from (relative imports resolved against `current`)."""
    if not node.level:
        return node.module or ""
    base = current.split(".")[: -node.level] if node.level else []
    return ".".join(base + ([node.module] if node.module else []))


def _imports(tree: ast.AST, current: str) -> list[tuple[str, str]]:
    """(name, package module it denotes) for every import in a tree (`from x import y` may name a submodule)."""
    names: list[tuple[str, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(PACKAGE):
                    names.append((alias.asname or alias.name.split(".")[0], alias.name))
        elif isinstance(node, ast.ImportFrom):
            module = _resolve(node, current)
            if not module.startswith(PACKAGE):
                continue
            for alias in node.names:
                submodule = f"{module}.{alias.name}"
                names.append((alias.asname or alias.name, submodule if _module_file(submodule) else module))
    return names


@lru_cache(maxsize=None)
def _module_imports(module: str) -> frozenset[str]:
    path = _module_file(module)
    if path is None:
        return frozenset()
    found = {target for _, target in _imports(ast.parse(path.read_text()), module)}
    # A package's modules import through its __init__ as well.
    parts = module.split(".")
    found |= {".".join(parts[:i]) for i in range(2, len(parts))}
    return frozenset(m for m in found if _module_file(m))


def module_closure(modules: set[str]) -> list[str]:
    """The modules given and every package module they import, transitively, sorted."""
    seen: set[str] = set()
    pending = [m for m in modules if _module_file(m)]
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        seen.add(module)
        pending.extend(_module_imports(module) - seen)
    return sorted(seen)


def function_dependencies(fn: Callable) -> tuple[list[str], list[Callable]]:
    """(package modules `fn` uses, helper functions of its own module it calls, itself included)."""
    module = inspect.getmodule(fn)
    module_tree = ast.parse(inspect.getsource(module))
    module_imports: dict[str, set[str]] = {}
    for name, target in _imports(module_tree, module.__name__):
        module_imports.setdefault(name, set()).add(target)
    helpers: list[Callable] = []
    modules: set[str] = set()
    pending = [fn]
    while pending:
        current = pending.pop()
        if current in helpers:
            continue
        helpers.append(current)
        tree = ast.parse(textwrap.dedent(inspect.getsource(current)))
        modules |= {target for _, target in _imports(tree, module.__name__)}
        used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
        used |= {node.value.id for node in ast.walk(tree) if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)}
        for name in used & set(module_imports):
            modules |= module_imports[name]
        for name in used:
            value = getattr(module, name, None)
            if inspect.isfunction(value) and value.__module__ == module.__name__ and value not in helpers:
                pending.append(value)
    return module_closure(modules), helpers


def code_version(fn: Callable, settings: dict[str, Any]) -> str:
    """12 hex digits over the code `fn` runs and the settings it reads: either changing marks the asset stale."""
    modules, helpers = function_dependencies(fn)
    digest = hashlib.sha256()
    for helper in sorted(helpers, key=lambda f: f.__qualname__):
        digest.update(inspect.getsource(helper).encode())
    for module in modules:
        digest.update(module.encode())
        digest.update(_module_file(module).read_bytes())
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:12]
