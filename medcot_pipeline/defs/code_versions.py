"""Code versions from what an asset computes: its function and the helpers of its module it uses, every package
module it imports (directly or through others, function-local imports included), and the resources whose code
shapes its output. Each is hashed as its syntax tree without docstrings, written back out (`ast.unparse`), so
a comment, a docstring or a change of layout (`ruff format`) changes no version. Modules whose code never
decides what an asset writes (Dagster plumbing, presentation) are left out by the rules in NOT_COMPUTATION.

Read from the source files on disk, nothing imported: a test computes the versions of an edited copy of the
package the way the code location computes its own.
"""

from __future__ import annotations

import ast
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PACKAGE = "medcot_pipeline"
PACKAGE_ROOT = Path(__file__).resolve().parents[1]

# Modules left out of every computed closure, each with the reason its code cannot change what an asset writes.
# Whatever is reached only through them is left out too. Each rule is held by a test in test_code_versions.py
# that fails when the module starts to compute something an asset uses.
NOT_COMPUTATION: dict[str, str] = {
    "medcot_pipeline.defs.code_versions": "this machinery: how a version is computed is not what an asset computes",
    "medcot_pipeline.defs.stages": "the asset decorator and config classes: group, tags, pool, Ray request, config "
    "defaults; the settings it hands an asset are hashed as values",
    "medcot_pipeline.defs.run_config_checks": "refuses bad run config before the first step; computes nothing a step writes",
    "medcot_pipeline.defs.resources": "wiring; a resource whose code shapes an asset's output is hashed as that "
    "asset's parameter (stages.COMPUTING_RESOURCES)",
    "medcot_pipeline.defs.metadata": "presentation: what the asset pages show, never what an artifact holds",
    "medcot_pipeline.profiles": "reads profile files; the values an asset uses are hashed as its settings",
    "medcot_pipeline.settings": "declarations (fields and validators): each asset hashes the values of its own "
    "settings, defaults included, so a new evaluation field changes rouge_report only",
}
# Of those, the modules whose results may only reach metadata (the test holds every call to them to that).
PRESENTATION = frozenset({"medcot_pipeline.defs.metadata"})
# Inside an asset's function and its helpers, what is built for `metadata` (a `metadata=` argument, a variable
# of that name) is presentation too, and is left out; the test holds the name to that use.
METADATA = "metadata"


@dataclass(frozen=True)
class VersionInputs:
    """What one asset's code version covers: its function, the resource classes whose code shapes its output
    (module, class name), and the settings it runs with (JSON-able)."""

    function: tuple[str, str]
    resources: tuple[tuple[str, str], ...] = ()
    settings: dict[str, Any] = field(default_factory=dict)


def code_version(inputs: VersionInputs, root: Path = PACKAGE_ROOT) -> str:
    """12 hex digits over the code the asset computes with and the settings it reads: either changing marks it stale."""
    source = PackageSource(root)
    definitions, modules = source.dependencies([(*inputs.function, True), *((*r, False) for r in inputs.resources)])
    digest = hashlib.sha256()
    for (module, name), text in sorted(definitions.items()):
        digest.update(f"{module}:{name}\n{text}\n".encode())
    for module in modules:
        digest.update(f"{module}\n{source.normalised_module(module)}\n".encode())
    digest.update(json.dumps(inputs.settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:12]


def normalised(node: ast.AST) -> str:
    """The code of `node` without docstrings, comments or layout: what runs, written one way."""
    # Stripped on a fresh tree (parsing is cheaper than a deep copy), so `node` is left as it was.
    node = ast.parse(ast.unparse(node))
    for each in ast.walk(node):
        body = getattr(each, "body", None)
        if isinstance(each, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body and _is_docstring(body[0]):
            each.body = body[1:] or [ast.Pass()]
    return ast.unparse(node)


def without_metadata(node: ast.stmt) -> ast.stmt:
    """A copy of a definition without what it builds for metadata: `metadata=` arguments, statements that assign
    to `metadata` or one of its keys, and `metadata.update(...)`-style calls."""
    node = ast.parse(ast.unparse(node)).body[0]  # a fresh copy, so the cached tree is left as it was
    _DropMetadata().visit(node)
    for each in ast.walk(node):
        if isinstance(each, _BLOCKS) and not each.body:  # a block that only built metadata
            each.body = [ast.Pass()]
    return node


_BLOCKS = (
    ast.If,
    ast.For,
    ast.AsyncFor,
    ast.While,
    ast.With,
    ast.AsyncWith,
    ast.Try,
    ast.ExceptHandler,
    ast.match_case,
    ast.FunctionDef,
    ast.AsyncFunctionDef,
    ast.ClassDef,
)


def _names_metadata(target: ast.AST) -> bool:
    if isinstance(target, ast.Subscript):
        target = target.value
    return isinstance(target, ast.Name) and target.id == METADATA


class _DropMetadata(ast.NodeTransformer):
    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        node.keywords = [keyword for keyword in node.keywords if keyword.arg != METADATA]
        return node

    def visit_Assign(self, node: ast.Assign) -> ast.AST | None:
        return None if any(_names_metadata(target) for target in node.targets) else self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AST | None:
        return None if _names_metadata(node.target) else self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> ast.AST | None:
        return None if _names_metadata(node.target) else self.generic_visit(node)

    def visit_Expr(self, node: ast.Expr) -> ast.AST | None:
        call = node.value
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and _names_metadata(call.func.value):
            return None
        return self.generic_visit(node)


def _is_docstring(statement: ast.stmt) -> bool:
    return isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant) and isinstance(statement.value.value, str)


@dataclass
class _Module:
    tree: ast.Module
    normalised: str
    # Filled on first use.
    imports: list[tuple[str, str]] | None = None
    bindings: dict[str, set[str]] | None = None


# Modules read by (file, sha256 of its text): the six assets share most of them, and an edited file is read again.
_MODULES: dict[tuple[Path, str], _Module] = {}


@dataclass(frozen=True)
class PackageSource:
    """The package's source files under `root` (the directory that holds `medcot_pipeline/`'s modules)."""

    root: Path

    def module_file(self, module: str) -> Path | None:
        parts = module.split(".")
        if parts[0] != PACKAGE:
            return None
        base = self.root.joinpath(*parts[1:])
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
        return None

    def _module(self, module: str) -> _Module:
        path = self.module_file(module)
        if path is None:
            raise ValueError(f"{module} is not a module of {PACKAGE} under {self.root}")
        text = path.read_text()
        key = (path, hashlib.sha256(text.encode()).hexdigest())
        if key not in _MODULES:
            tree = ast.parse(text, filename=str(path))
            _MODULES[key] = _Module(tree, normalised(tree))
        return _MODULES[key]

    def tree(self, module: str) -> ast.Module:
        return self._module(module).tree

    def normalised_module(self, module: str) -> str:
        return self._module(module).normalised

    def imports(self, tree: ast.AST, current: str) -> Iterator[tuple[str, str]]:
        """(name it binds, package module it denotes) for every import in `tree` (`from x import y` may name a submodule)."""
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == PACKAGE:
                        yield alias.asname or alias.name.split(".")[0], alias.name
            elif isinstance(node, ast.ImportFrom):
                module = _absolute(node, current)
                if module.split(".")[0] != PACKAGE:
                    continue
                for alias in node.names:
                    submodule = f"{module}.{alias.name}"
                    yield alias.asname or alias.name, submodule if self.module_file(submodule) else module

    def module_imports(self, module: str) -> set[str]:
        """The package modules `module` imports anywhere in its file, and the packages it sits in."""
        record = self._module(module)
        if record.imports is None:
            record.imports = list(self.imports(record.tree, module))
        found = {target for _, target in record.imports}
        parts = module.split(".")
        found |= {".".join(parts[:i]) for i in range(2, len(parts))}
        return {m for m in found if self.module_file(m)}

    def module_bindings(self, module: str) -> dict[str, set[str]]:
        """The names `module`'s own top-level imports bind (not those inside its functions), and what each denotes."""
        record = self._module(module)
        if record.bindings is None:
            outside_definitions = ast.Module(
                body=[s for s in record.tree.body if not isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))],
                type_ignores=[],
            )
            record.bindings = {}
            for bound, target in self.imports(outside_definitions, module):
                record.bindings.setdefault(bound, set()).add(target)
        return record.bindings

    def closure(self, modules: set[str]) -> list[str]:
        """The modules given and every package module they import, transitively, less NOT_COMPUTATION, sorted."""
        seen: set[str] = set()
        pending = [m for m in modules if self.module_file(m) and m not in NOT_COMPUTATION]
        while pending:
            module = pending.pop()
            if module in seen:
                continue
            seen.add(module)
            pending.extend(m for m in self.module_imports(module) - seen if m not in NOT_COMPUTATION)
        return sorted(seen)

    def dependencies(self, entries: list[tuple[str, str, bool]]) -> tuple[dict[tuple[str, str], str], list[str]]:
        """For top-level definitions (module, name, whether to drop its decorators): the normalised code of each and
        of every definition of the same module it uses, by (module, name), and the closure of the modules they use.

        An asset's decorator says how Dagster runs it (group, kinds, deps, retries), not what it computes.
        Names that appear only in annotations are types, not code that runs, and are not followed.
        """
        definitions: dict[tuple[str, str], str] = {}
        modules: set[str] = set()
        pending = list(entries)
        while pending:
            module, name, drop_decorators = pending.pop()
            if (module, name) in definitions:
                continue
            tree = self.tree(module)
            top_level = _top_level_definitions(tree)
            if name not in top_level:
                raise ValueError(f"{module} defines no top-level {name}")
            node = without_metadata(top_level[name])
            if drop_decorators and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                node.decorator_list = []
            definitions[module, name] = normalised(node)
            bindings = self.module_bindings(module)
            modules |= {target for _, target in self.imports(node, module)}
            for used in _names_used(node):
                modules |= bindings.get(used, set())
                if used in top_level and used != name:
                    pending.append((module, used, False))
        return definitions, self.closure(modules)


def _absolute(node: ast.ImportFrom, current: str) -> str:
    """The absolute module an ImportFrom reads from (relative imports resolved against `current`)."""
    if not node.level:
        return node.module or ""
    base = current.split(".")[: -node.level]
    return ".".join(base + ([node.module] if node.module else []))


def _top_level_definitions(tree: ast.Module) -> dict[str, ast.stmt]:
    """Functions, classes and assignments at a module's top level, by the name they bind."""
    found: dict[str, ast.stmt] = {}
    for statement in tree.body:
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found[statement.name] = statement
        elif isinstance(statement, ast.Assign):
            for target in statement.targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        found[name.id] = statement
        elif isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
            found[statement.target.id] = statement
    return found


def _names_used(node: ast.AST) -> set[str]:
    """Names read from the module's scope in `node` (an attribute's base included): not those a function binds
    itself (its parameters, its assignments), nor those only in annotations, which are types, not code that runs."""
    names: set[str] = set()

    def visit(current: ast.AST, local: frozenset[str]) -> None:
        if isinstance(current, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            local = local | _bound_in(current)
        if isinstance(current, ast.Name) and isinstance(current.ctx, ast.Load) and current.id not in local:
            names.add(current.id)
        for name, value in ast.iter_fields(current):
            if name in ("annotation", "returns"):
                continue
            for child in value if isinstance(value, list) else [value]:
                if isinstance(child, ast.AST):
                    visit(child, local)

    visit(node, frozenset())
    return names


def _bound_in(function: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> frozenset[str]:
    """The names a function binds locally: its parameters, and whatever its body assigns or imports."""
    arguments = function.args
    bound = {a.arg for a in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]}
    bound |= {a.arg for a in (arguments.vararg, arguments.kwarg) if a is not None}
    for node in ast.walk(function) if not isinstance(function, ast.Lambda) else []:
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            bound.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound |= {alias.asname or alias.name.split(".")[0] for alias in node.names}
    return frozenset(bound)
