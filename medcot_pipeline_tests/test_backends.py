"""resolve_backend: which library trains, generates and merges, on one process or several; and the backend
objects that carry every difference between the libraries, so nothing outside backends/ compares their names."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from medcot_pipeline import backends
from medcot_pipeline.backends import BackendError, backend_named, resolve_backend
from medcot_pipeline.environment import TRAINING_PACKAGES, UNSLOTH_PACKAGES

PACKAGE = Path(backends.__file__).resolve().parents[1]


@pytest.fixture
def gpu_host(monkeypatch):
    """A CUDA host with Unsloth installed (neither is true here; the rule is what is tested)."""
    monkeypatch.setattr(backends, "cuda_available", lambda: True)
    monkeypatch.setattr(backends, "unsloth_installed", lambda: True)


@pytest.mark.parametrize("processes", [1, 2, 4])
def test_auto_trains_with_unsloth_on_a_gpu_host_with_any_number_of_processes(gpu_host, processes):
    assert resolve_backend("auto", "training", processes) is backends.UNSLOTH
    assert resolve_backend("unsloth", "training", processes) is backends.UNSLOTH


def test_auto_generates_and_merges_with_transformers_even_on_a_gpu_host(gpu_host):
    assert resolve_backend("auto", "inference") is backends.TRANSFORMERS
    assert resolve_backend("auto", "merging") is backends.TRANSFORMERS
    assert resolve_backend("transformers", "training", 4) is backends.TRANSFORMERS


def test_without_cuda_auto_is_transformers_and_unsloth_by_name_fails(monkeypatch):
    monkeypatch.setattr(backends, "cuda_available", lambda: False)
    monkeypatch.setattr(backends, "unsloth_installed", lambda: True)
    assert resolve_backend("auto", "training", 2) is backends.TRANSFORMERS
    with pytest.raises(BackendError, match="needs a CUDA GPU"):
        resolve_backend("unsloth", "training")


def test_without_the_package_unsloth_by_name_fails(monkeypatch):
    monkeypatch.setattr(backends, "cuda_available", lambda: True)
    monkeypatch.setattr(backends, "unsloth_installed", lambda: False)
    assert resolve_backend("auto", "training") is backends.TRANSFORMERS
    with pytest.raises(BackendError, match="needs the unsloth package"):
        resolve_backend("unsloth", "training", 2)


def test_bad_names_and_process_counts_are_refused():
    with pytest.raises(BackendError, match="auto, transformers or unsloth"):
        resolve_backend("vllm", "training")
    with pytest.raises(BackendError, match="at least 1"):
        resolve_backend("auto", "training", 0)


def test_a_recorded_name_reads_back_as_its_backend_and_an_unknown_one_is_named():
    for backend in (backends.TRANSFORMERS, backends.UNSLOTH):
        assert backend_named(backend.name) is backend
    with pytest.raises(BackendError, match="unknown backend 'vllm'; the backends are transformers, unsloth"):
        backend_named("vllm")


def test_each_backend_states_what_differs():
    transformers, unsloth = backends.TRANSFORMERS, backends.UNSLOTH
    assert transformers.packages == TRAINING_PACKAGES and unsloth.packages == TRAINING_PACKAGES + UNSLOTH_PACKAGES
    assert (transformers.card_stack, unsloth.card_stack) == ("TRL and PEFT", "Unsloth and TRL")
    # Grading puts a transformers model in eval mode around generation; Unsloth's generate does that itself.
    assert not transformers.generate_manages_train_mode and unsloth.generate_manages_train_mode
    # Grading's merged copy compiles a static KV cache, unless the backend's patches reach the copy too.
    assert not transformers.patches_every_model and unsloth.patches_every_model


def test_the_unsloth_backend_imports_unsloth_only_when_prepared():
    """Resolving, naming and reading the Unsloth backend's facts stays off Unsloth (not installed here: preparing
    it fails with the import error, named)."""
    code = (
        "import sys; from medcot_pipeline import backends; b = backends.backend_named('unsloth'); "
        "b.packages, b.card_stack, b.generate_manages_train_mode; "
        "print(sorted(m for m in sys.modules if m.startswith('unsloth') or m.endswith('unsloth_lora'))); "
        "b.prepare()"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "[]"
    assert "BackendError: backend 'unsloth' could not be imported: No module named 'unsloth'" in out.stderr


def _module_sources():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(PACKAGE).as_posix(), ast.parse(path.read_text())


def test_no_module_outside_backends_compares_backend_names():
    names = {backends.TRANSFORMERS.name, backends.UNSLOTH.name}

    def constants(node):
        return {n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)}

    offenders = [
        f"{module}:{node.lineno}"
        for module, tree in _module_sources()
        if not module.startswith("backends/")
        for node in ast.walk(tree)
        if isinstance(node, ast.Compare) and constants(node) & names
    ]
    assert offenders == []


def test_unsloth_is_imported_by_the_unsloth_modules_of_backends_only():
    importers = set()
    for module, tree in _module_sources():
        for node in ast.walk(tree):
            imported = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(name == "unsloth" or name.startswith("unsloth.") for name in imported):
                importers.add(module)
    assert importers == {"backends/unsloth_lora.py", "backends/unsloth_varlen.py"}
