"""Which library loads the model: Unsloth or transformers + PEFT. One rule, asked by training, merging,
evaluation and `medcot ask`; Unsloth is imported only in `unsloth_lora.py`, so the CPU path never touches it.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Literal

logger = logging.getLogger(__name__)

Backend = Literal["transformers", "unsloth"]
Purpose = Literal["training", "inference", "merging"]


class BackendError(RuntimeError):
    """A backend that was asked for by name and cannot run here."""


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def unsloth_installed() -> bool:
    return importlib.util.find_spec("unsloth") is not None


def resolve_backend(requested: str, purpose: Purpose, processes: int = 1) -> Backend:
    """The backend for `purpose`.

    - "transformers" is always honoured; "unsloth" is honoured where it can run (CUDA, the package) and fails here otherwise.
    - "auto" picks Unsloth for training on CUDA when it is installed, on one GPU or data-parallel under torchrun
      (Unsloth 2026.10.9 pins each rank to its own GPU and handles DDP itself; `processes` no longer changes the
      answer): its kernels trained 2x faster than transformers + PEFT on the t4 profile (benchmarks/README.md).
      Everything else gets transformers: generation with transformers and grouped_sdpa ran 5.5x faster than
      Unsloth's inference mode, and merging is exact either way.
    """
    if requested not in ("auto", "transformers", "unsloth"):
        raise BackendError(f"backend must be auto, transformers or unsloth, not {requested!r}")
    if processes < 1:
        raise BackendError(f"processes must be at least 1, not {processes}")
    if requested == "transformers":
        return "transformers"
    if requested == "unsloth":
        if not unsloth_installed():
            raise BackendError("backend 'unsloth' needs the unsloth package: pip install -e '.[gpu]'")
        if not cuda_available():
            raise BackendError("backend 'unsloth' needs a CUDA GPU; use backend: transformers on this machine")
        return "unsloth"
    if purpose == "training" and cuda_available() and unsloth_installed():
        return "unsloth"
    return "transformers"


def prepare(backend: Backend) -> None:
    """Import Unsloth before transformers, TRL and PEFT when it is the backend, so that its patches apply to them.

    Under torchrun each rank first selects the GPU of its local rank: Unsloth probes the current device while it
    is imported, and every rank would otherwise start a context on GPU 0.
    """
    if backend == "unsloth":
        from medcot_pipeline.data_parallel import local_rank, world_size

        if world_size() > 1 and cuda_available():
            import torch

            torch.cuda.set_device(local_rank())
        try:
            import unsloth  # noqa: F401
        except ImportError as err:
            raise BackendError(f"backend 'unsloth' could not be imported: {err}") from err


def load_for_training(backend: Backend, base_model: str, settings, max_seq_length: int):
    """(PEFT-wrapped model, tokenizer padded on the right) ready for the trainer."""
    from pathlib import Path

    from medcot_pipeline.base_models import BaseModelError, load_tokenizer

    if base_model.startswith((".", "/", "~")) and not Path(base_model).expanduser().exists():
        raise BaseModelError(f"base model directory {base_model} does not exist")
    tokenizer = load_tokenizer(base_model)
    # Training collators pad on the right; generation (load_tokenizer's default) pads on the left.
    tokenizer.padding_side = "right"
    try:
        if backend == "unsloth":
            from medcot_pipeline.backends.unsloth_lora import lora_model_for_training
        else:
            from medcot_pipeline.backends.hf_peft import lora_model_for_training
        model = lora_model_for_training(base_model, settings, max_seq_length)
    except (OSError, ValueError) as err:
        raise BaseModelError(f"cannot load base model {base_model}: {err}") from err
    return model, tokenizer
