"""Code versions move when what an asset computes may change, and only then.

Each test edits a copy of the package in a temp directory (never the real sources) and computes the six
versions from that copy exactly as the code location computes its own (defs/code_versions.py reads source
files, it imports nothing). test_staleness.py runs the same kind of edit through a real Dagster instance.
"""

from __future__ import annotations

import ast
import io
import shutil
import subprocess
import sys
import tokenize
from pathlib import Path

import dagster as dg
import pytest

from medcot_pipeline.defs import code_versions
from medcot_pipeline.defs.code_versions import METADATA, NOT_COMPUTATION, PACKAGE, PACKAGE_ROOT, PRESENTATION, PackageSource, VersionInputs
from medcot_pipeline.profiles import DEFAULT_PROFILE
from medcot_pipeline_tests.pipeline_harness import ASSETS, load_defs

# What an asset may use from a module its code version leaves out, and why that is not computation. Anything
# else an asset takes from such a module would be code its version cannot see.
PROVENANCE_FROM_MACHINERY = {
    "current_code_version": "the asset records its own version in its contract",
    "PROFILE": "the profile's file name, recorded in the training job",
    "PROFILE_TAG_KEY": "the run tag that names the profile",
}


@pytest.fixture(scope="module")
def inputs() -> dict[str, VersionInputs]:
    """Each asset's version inputs, taken from the definitions the demo profile loads."""
    defs = load_defs(DEFAULT_PROFILE)
    stages = sys.modules["medcot_pipeline.defs.stages"]
    graph = defs.resolve_asset_graph()
    found = {}
    for asset in ASSETS:
        node = graph.get(dg.AssetKey(asset))
        function = node.assets_def.op.compute_fn.decorated_fn.__wrapped__
        found[asset] = stages.version_inputs(function, stages.PROFILE)
        assert node.code_version == code_versions.code_version(found[asset]), "the definitions' version is the one computed here"
    return found


@pytest.fixture
def package(tmp_path) -> Path:
    """A copy of the package's sources, to edit."""
    copy = tmp_path / PACKAGE
    shutil.copytree(PACKAGE_ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def versions(inputs: dict[str, VersionInputs], root: Path = PACKAGE_ROOT) -> dict[str, str]:
    return {asset: code_versions.code_version(each, root) for asset, each in inputs.items()}


def changed(inputs, root: Path) -> set[str]:
    before, after = versions(inputs), versions(inputs, root)
    return {asset for asset in ASSETS if before[asset] != after[asset]}


# Edits are made on the syntax tree, not on text, so they still apply when the code they edit is rewritten.


def rewrite(path: Path, change) -> None:
    """Parse `path`, let `change(tree)` edit the tree in place, write it back."""
    tree = ast.parse(path.read_text())
    change(tree)
    path.write_text(ast.unparse(tree) + "\n")


def definition(tree: ast.Module, name: str) -> ast.FunctionDef | ast.ClassDef:
    found = [node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name]
    assert len(found) == 1, f"no top-level {name}"
    return found[0]


def functions(node: ast.AST) -> list[ast.FunctionDef]:
    return [each for each in ast.walk(node) if isinstance(each, ast.FunctionDef)]


def prepend(function: ast.FunctionDef, code: str) -> None:
    """Put `code` first in the function's body (after its docstring)."""
    start = 1 if function.body and code_versions._is_docstring(function.body[0]) else 0
    function.body[start:start] = ast.parse(code).body


def change_every_string(node: ast.AST) -> None:
    """A different string in every string constant except docstrings: new behaviour wherever there is text."""
    docstrings = {id(each.body[0].value) for each in ast.walk(node) if getattr(each, "body", None) and isinstance(each.body, list)
                  and code_versions._is_docstring(each.body[0])}
    for each in ast.walk(node):
        if isinstance(each, ast.Constant) and isinstance(each.value, str) and id(each) not in docstrings:
            each.value += " (changed by the test)"


def append(path: Path, code: str) -> None:
    path.write_text(path.read_text() + "\n" + code)


def module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join((PACKAGE, *(parts[:-1] if parts[-1] == "__init__" else parts)))


# ---------------------------------------------------------------- what does not change a version


def with_comments_and_docstrings_changed(text: str) -> str:
    """`text` with a comment at the end of every line that can take one, a comment line on top, and every
    docstring's text changed."""
    inserts: list[tuple[int, int, str]] = []  # (line, column in characters, text)
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type in (tokenize.NEWLINE, tokenize.NL):
            inserts.append((*token.start, "  # a comment the test added"))
    lines = text.splitlines(keepends=True)
    for node in ast.walk(ast.parse(text)):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body and code_versions._is_docstring(body[0]):
            line, end = body[0].end_lineno, body[0].end_col_offset
            assert line is not None and end is not None
            source_line = lines[line - 1]
            column = len(source_line.encode()[:end].decode())  # the tree's columns count UTF-8 bytes
            quote = 3 if source_line[:column].endswith(('"""', "'''")) else 1
            inserts.append((line, column - quote, " Edited by the test."))
    for line, column, added in sorted(inserts, reverse=True):
        lines[line - 1] = lines[line - 1][:column] + added + lines[line - 1][column:]
    return "# a first line the test added\n" + "".join(lines)


def test_the_definitions_versions_are_the_ones_computed_from_the_source(inputs):
    """The fixture checks it asset by asset; here, that the six differ (each hashes its own code and settings)."""
    assert len(set(versions(inputs).values())) == len(ASSETS)


def test_a_comment_or_a_docstring_anywhere_changes_no_version(inputs, package):
    files = sorted(package.rglob("*.py"))
    for path in files:
        edited = with_comments_and_docstrings_changed(path.read_text())
        ast.parse(edited)  # still Python
        path.write_text(edited)
    assert len(files) > 50 and all("# a comment the test added" in path.read_text() for path in files)
    assert "Edited by the test." in (package / "data" / "cleaning.py").read_text()
    assert changed(inputs, package) == set()


def test_a_reformat_changes_no_version(inputs, package):
    """`ruff format` (which the lead runs once over the codebase) rewrites layout, quotes and wrapping: no version moves."""
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent))
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    before = {path: path.read_text() for path in package.rglob("*.py")}
    subprocess.run([ruff, "format", "--isolated", "--line-length", "88", str(package)], check=True, capture_output=True)
    assert sum(path.read_text() != text for path, text in before.items()) > 20, "ruff changed (almost) nothing: no test"
    assert changed(inputs, package) == set()


@pytest.mark.parametrize("module", sorted(PRESENTATION))
def test_a_change_to_metadata_rendering_changes_no_version(inputs, package, module):
    """Every text a presentation module renders changed, and every function of it given a new first statement."""
    path = PackageSource(package).module_file(module)
    assert path is not None

    def change(tree):
        change_every_string(tree)
        for function in functions(tree):
            prepend(function, "rendering_changed_by_the_test = True")

    rewrite(path, change)
    assert changed(inputs, package) == set()


def test_what_an_asset_puts_in_its_metadata_changes_no_version(inputs, package):
    """Every string an asset function writes into its metadata changed, and a new entry added to each: no version moves."""
    for path in sorted((package / "defs" / "assets").glob("*.py")):

        def change(tree):
            parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and in_metadata_position(node, parents):
                    node.value += " (changed by the test)"
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and any(k.arg == METADATA for k in node.keywords):
                    keyword = next(k for k in node.keywords if k.arg == METADATA)
                    keyword.value = ast.parse(f"{{**({ast.unparse(keyword.value)}), 'added_by_the_test': 1}}", mode="eval").body

        rewrite(path, change)
    assert "(changed by the test)" in (package / "defs" / "assets" / "model.py").read_text()
    assert changed(inputs, package) == set()


@pytest.mark.parametrize("module", sorted(NOT_COMPUTATION))
def test_new_code_in_a_module_left_out_changes_no_version(inputs, package, module):
    """Each rule: whatever is added to a module that NOT_COMPUTATION leaves out, no asset's version moves."""
    path = PackageSource(package).module_file(module)
    assert path is not None
    append(path, "def added_by_the_test(value):\n    return [value] * 2\n\n\nADDED_BY_THE_TEST = added_by_the_test(1)\n")
    assert changed(inputs, package) == set()


# ---------------------------------------------------------------- what does


def test_a_change_to_cleaning_logic_changes_formatted_splits_only(inputs, package):
    rewrite(package / "data" / "cleaning.py", change_every_string)
    assert changed(inputs, package) == {"formatted_splits"}


def test_a_change_to_what_a_resource_computes_changes_the_assets_that_take_it(inputs, package):
    """base_model's code decides which model and tokenizer an asset loads; artifacts' decides only where files go."""

    def change(resource: str):
        def apply(tree):
            for method in functions(definition(tree, resource)):
                prepend(method, "changed_by_the_test = True")

        return apply

    rewrite(package / "defs" / "resources.py", change("ArtifactStore"))
    assert changed(inputs, package) == set()
    rewrite(package / "defs" / "resources.py", change("BaseModelResource"))
    assert changed(inputs, package) == {"formatted_splits", "lora_adapter", "merged_model", "rouge_report", "benchmark_report"}


def test_a_change_to_shared_code_changes_every_asset_that_runs_it(inputs, package):
    append(package / "chat_format.py", "ADDED_BY_THE_TEST = 1\n")
    assert changed(inputs, package) == {"formatted_splits", "lora_adapter", "rouge_report", "benchmark_report"}
    append(package / "release" / "model_card.py", "ADDED_BY_THE_TEST = 1\n")
    assert changed(inputs, package) == {"formatted_splits", "lora_adapter", "rouge_report", "benchmark_report", "hub_release"}


def test_an_asset_s_decorator_is_not_its_computation(inputs, package):
    """kinds, deps and retries say how Dagster runs an asset; its body and the helpers it calls are what it computes."""
    model, release = package / "defs" / "assets" / "model.py", package / "defs" / "assets" / "release.py"

    def new_kind(tree):
        decorator = definition(tree, "merged_model").decorator_list[0]
        assert isinstance(decorator, ast.Call)
        decorator.keywords.append(ast.keyword(arg="description", value=ast.Constant("changed by the test")))

    rewrite(model, new_kind)
    assert changed(inputs, package) == set()
    rewrite(model, lambda tree: prepend(definition(tree, "merged_model"), "changed_by_the_test = True"))
    assert changed(inputs, package) == {"merged_model"}
    rewrite(release, lambda tree: prepend(definition(tree, "check_lineage"), "changed_by_the_test = True"))
    assert changed(inputs, package) == {"merged_model", "hub_release"}  # check_lineage: a helper hub_release calls


def test_a_parameter_named_like_another_asset_is_not_that_asset_s_code(inputs):
    """merged_model's input `lora_adapter` is a path, not the function of that name in the same module."""
    source = PackageSource(PACKAGE_ROOT)
    definitions, _ = source.dependencies([(*inputs["merged_model"].function, True)])
    assert sorted(name for _, name in definitions) == ["merged_model"]


# ---------------------------------------------------------------- the rules hold


def package_modules(root: Path = PACKAGE_ROOT) -> dict[str, ast.Module]:
    return {module_name(root, path): ast.parse(path.read_text()) for path in sorted(root.rglob("*.py"))}


def in_metadata_position(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Inside a `metadata=` argument, a value assigned to `metadata` (or one of its keys), or `metadata.update(...)`."""
    while node in parents:
        parent = parents[node]
        if isinstance(parent, ast.keyword) and parent.arg == METADATA:
            return True
        if isinstance(parent, (ast.Assign, ast.AnnAssign, ast.AugAssign)) and node is parent.value:
            targets = parent.targets if isinstance(parent, ast.Assign) else [parent.target]
            if any(_names_metadata(target) for target in targets):
                return True
        if isinstance(parent, ast.Call) and isinstance(parent.func, ast.Attribute) and _names_metadata(parent.func.value):
            return True
        node = parent
    return False


def _names_metadata(target: ast.AST) -> bool:
    if isinstance(target, ast.Subscript):
        target = target.value
    return isinstance(target, ast.Name) and target.id == METADATA


def presentation_calls(root: Path = PACKAGE_ROOT) -> list[tuple[str, ast.Call, dict, ast.Module]]:
    """(module, call, parents, tree) for every call to a presentation module's function outside those modules."""
    source = PackageSource(root)
    found = []
    for module, tree in package_modules(root).items():
        if module in PRESENTATION:
            continue
        bound = {name for name, target in source.imports(tree, module) if target in PRESENTATION}
        parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if (isinstance(func, ast.Name) and func.id in bound) or (
                isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in bound
            ):
                found.append((module, node, parents, tree))
    return found


def test_presentation_only_ever_reaches_metadata():
    """The presentation rule: every call to a presentation module (defs/metadata.py) sits in an asset's metadata, or in a
    function whose every call does. If one feeds an artifact (a model card, a report), that module computes what the
    asset writes and must leave PRESENTATION (and NOT_COMPUTATION)."""
    calls = presentation_calls()
    assert len(calls) > 10, "the rule checks nothing: presentation calls were not found"
    call_sites: dict[str, list[bool]] = {}
    for tree in package_modules().values():
        parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                call_sites.setdefault(node.func.id, []).append(in_metadata_position(node, parents))
    outside = []
    for module, call, parents, _ in presentation_calls():
        if in_metadata_position(call, parents):
            continue
        enclosing = call
        while enclosing in parents and not isinstance(enclosing, (ast.FunctionDef, ast.AsyncFunctionDef)):
            enclosing = parents[enclosing]
        # One level of indirection: a function that builds metadata, called only where metadata is built.
        if isinstance(enclosing, (ast.FunctionDef, ast.AsyncFunctionDef)) and call_sites.get(enclosing.name) and all(call_sites[enclosing.name]):
            continue
        outside.append(f"{module}:{call.lineno}: {ast.unparse(call.func)}(...)")
    assert outside == [], "presentation output reaches something other than metadata"


def test_presentation_outside_metadata_is_caught(package):
    """The rule above fails on a presentation call whose result goes anywhere but metadata."""
    presentation = sorted(PRESENTATION)[0]
    tree = PackageSource(package).tree(presentation)
    rendering = next(node.name for node in tree.body if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"))

    def change(tree):
        tree.body.insert(0, ast.parse(f"from {presentation} import {rendering} as rendered_by_the_test").body[0])
        prepend(definition(tree, "merged_model"), "written_by_the_test = rendered_by_the_test(1)")

    def offending() -> set[tuple[str, str]]:
        return {(m, ast.unparse(c.func)) for m, c, parents, _ in presentation_calls(package) if not in_metadata_position(c, parents)}

    # Helpers that build a page (called only in metadata position, which the rule above allows) are there before.
    before = offending()
    rewrite(package / "defs" / "assets" / "model.py", change)
    assert offending() - before == {("medcot_pipeline.defs.assets.model", "rendered_by_the_test")}


def metadata_uses_outside_metadata(root: Path = PACKAGE_ROOT) -> list[str]:
    """Where a function of an asset module reads `metadata` other than to build metadata (e.g. writes it to a file)."""
    found = []
    for path in sorted((root / "defs" / "assets").glob("*.py")):
        tree = ast.parse(path.read_text())
        parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and node.id == METADATA and isinstance(node.ctx, ast.Load):
                if not in_metadata_position(node, parents) and not _in_metadata_statement(node, parents):
                    found.append(f"{path.name}:{node.lineno}")
    return found


def _in_metadata_statement(node: ast.AST, parents: dict) -> bool:
    """`metadata[...] = ...` or `metadata.update(...)`: the name read as the target of a metadata statement."""
    parent = parents.get(node)
    if isinstance(parent, ast.Subscript) and isinstance(parents.get(parent), (ast.Assign, ast.AugAssign)):
        return True
    if isinstance(parent, ast.Attribute) and isinstance(parents.get(parent), ast.Call) and isinstance(parents.get(parents[parent]), ast.Expr):
        return True
    return False


def test_what_an_asset_builds_for_metadata_only_reaches_its_metadata():
    """The rule that lets an asset's version leave its metadata out: in the asset modules, `metadata` is read only to
    build metadata, never written into an artifact or used to compute one."""
    assert metadata_uses_outside_metadata() == []


def test_metadata_used_for_an_artifact_is_caught(package):
    def change(tree):
        body = definition(tree, "hub_release").body
        body.insert(len(body) - 1, ast.parse("staged.joinpath('metadata.json').write_text(str(metadata))").body[0])

    rewrite(package / "defs" / "assets" / "release.py", change)
    assert len(metadata_uses_outside_metadata(package)) == 1


def asset_uses_of_left_out_modules(inputs, root: Path = PACKAGE_ROOT) -> dict[str, set[str]]:
    """Per asset: the names its function (decorator aside) and its helpers read from modules NOT_COMPUTATION leaves
    out, presentation aside."""
    source = PackageSource(root)
    uses: dict[str, set[str]] = {}
    for asset, each in inputs.items():
        module, name = each.function
        tree = source.tree(module)
        bindings = {bound: target for bound, target in source.imports(tree, module)}
        definitions, _ = source.dependencies([(module, name, True)])
        found = set()
        for text in definitions.values():
            for used in code_versions._names_used(ast.parse(text)):
                target = bindings.get(used)
                if target in NOT_COMPUTATION and target not in PRESENTATION:
                    found.add(f"{target}.{used}")
        uses[asset] = found
    return uses


def test_assets_take_only_provenance_from_the_modules_left_out(inputs):
    """The machinery rule (stages, resources, run-config checks, profiles, settings, code versions): an asset reads
    nothing from them but provenance. A helper an asset calls from there would be computation its version misses:
    it belongs in a core module, which is hashed."""
    uses = asset_uses_of_left_out_modules(inputs)
    allowed = set(PROVENANCE_FROM_MACHINERY)
    assert {asset: {use for use in found if use.rsplit(".", 1)[1] not in allowed} for asset, found in uses.items()} == {
        asset: set() for asset in ASSETS
    }
    assert "medcot_pipeline.defs.stages.current_code_version" in uses["formatted_splits"]  # the check sees uses


def test_a_computing_helper_in_the_machinery_is_caught(inputs, package):
    def change(tree):
        tree.body.insert(0, ast.parse("from medcot_pipeline.defs.stages import STAGES, PROFILE, ray_request").body[0])
        prepend(definition(tree, "lora_adapter"), "request = ray_request(STAGES['lora_adapter'], PROFILE)")

    rewrite(package / "defs" / "assets" / "model.py", change)
    uses = asset_uses_of_left_out_modules(inputs, package)
    assert {"medcot_pipeline.defs.stages.ray_request", "medcot_pipeline.defs.stages.STAGES"} <= uses["lora_adapter"]


def test_settings_hold_declarations_only():
    """The settings rule: each asset hashes its settings' values, not settings.py, so settings.py may hold fields and
    validators (which can only refuse or normalise values, and the values are hashed) but no method an asset could
    compute with."""
    tree = ast.parse((PACKAGE_ROOT / "settings.py").read_text())
    validators = {"field_validator", "model_validator"}
    methods = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    decorators = {ast.unparse(d.func if isinstance(d, ast.Call) else d) for d in item.decorator_list}
                    if not decorators & validators:
                        methods.append(f"{node.name}.{item.name}")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
            methods.append(node.name)
    assert methods == []
    # Its private functions build the stage table at import; nothing else imports them.
    for module, other in package_modules().items():
        for node in ast.walk(other):
            if isinstance(node, ast.ImportFrom) and node.module == f"{PACKAGE}.settings":
                assert not [alias.name for alias in node.names if alias.name.startswith("_")], module


def test_every_resource_is_either_hashed_or_declared_plumbing():
    """The resources rule: a resource whose code or settings shape what an asset computes is part of its version
    (COMPUTING_RESOURCES); every other one is listed with the reason it does not."""
    load_defs(DEFAULT_PROFILE)
    stages = sys.modules["medcot_pipeline.defs.stages"]
    resources = sys.modules["medcot_pipeline.defs.resources"]
    profile = stages.PROFILE
    bound = set(resources.build_resources(profile.resources))
    assert set(stages.COMPUTING_RESOURCES).isdisjoint(stages.PLUMBING_RESOURCES)
    assert bound == set(stages.COMPUTING_RESOURCES) | set(stages.PLUMBING_RESOURCES)
