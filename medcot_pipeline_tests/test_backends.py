"""resolve_backend: which library trains, generates and merges, on one process or several."""

import pytest

from medcot_pipeline import backends
from medcot_pipeline.backends import BackendError, resolve_backend


@pytest.fixture
def gpu_host(monkeypatch):
    """A CUDA host with Unsloth installed (neither is true here; the rule is what is tested)."""
    monkeypatch.setattr(backends, "cuda_available", lambda: True)
    monkeypatch.setattr(backends, "unsloth_installed", lambda: True)


@pytest.mark.parametrize("processes", [1, 2, 4])
def test_auto_trains_with_unsloth_on_a_gpu_host_with_any_number_of_processes(gpu_host, processes):
    assert resolve_backend("auto", "training", processes) == "unsloth"
    assert resolve_backend("unsloth", "training", processes) == "unsloth"


def test_auto_generates_and_merges_with_transformers_even_on_a_gpu_host(gpu_host):
    assert resolve_backend("auto", "inference") == "transformers"
    assert resolve_backend("auto", "merging") == "transformers"
    assert resolve_backend("transformers", "training", 4) == "transformers"


def test_without_cuda_auto_is_transformers_and_unsloth_by_name_fails(monkeypatch):
    monkeypatch.setattr(backends, "cuda_available", lambda: False)
    monkeypatch.setattr(backends, "unsloth_installed", lambda: True)
    assert resolve_backend("auto", "training", 2) == "transformers"
    with pytest.raises(BackendError, match="needs a CUDA GPU"):
        resolve_backend("unsloth", "training")


def test_without_the_package_unsloth_by_name_fails(monkeypatch):
    monkeypatch.setattr(backends, "cuda_available", lambda: True)
    monkeypatch.setattr(backends, "unsloth_installed", lambda: False)
    assert resolve_backend("auto", "training") == "transformers"
    with pytest.raises(BackendError, match="needs the unsloth package"):
        resolve_backend("unsloth", "training", 2)


def test_bad_names_and_process_counts_are_refused():
    with pytest.raises(BackendError, match="auto, transformers or unsloth"):
        resolve_backend("vllm", "training")
    with pytest.raises(BackendError, match="at least 1"):
        resolve_backend("auto", "training", 0)
