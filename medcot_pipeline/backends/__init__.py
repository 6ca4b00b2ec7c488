"""Which library loads the model, Unsloth or transformers + PEFT, as one object per library.

`resolve_backend` is the one rule, asked by training, evaluation and `medcot ask`; it returns a `Backend`, and
what differs between the libraries (loading for training and for inference, what must be imported first, the
packages a training summary records, how the model card names the stack, who switches train mode around
generation) is a method or attribute of it, so no module outside `backends/` compares backend names.
Unsloth is imported only by `unsloth_lora.py`, which the Unsloth backend imports when it is used, so the CPU
path never touches it. An artifact records a backend by `name` (TrainingSummary.backend); `backend_named`
reads it back.
"""

from __future__ import annotations

import importlib.util
import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar, Literal

from medcot_pipeline.environment import TRAINING_PACKAGES, UNSLOTH_PACKAGES

logger = logging.getLogger(__name__)

Purpose = Literal["training", "inference", "merging"]


class BackendError(RuntimeError):
    """A backend that was asked for by name and cannot run here."""


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def unsloth_installed() -> bool:
    return importlib.util.find_spec("unsloth") is not None


class Backend(ABC):
    """A library that loads a base model with LoRA for training, and a trained model for generation."""

    name: ClassVar[str]  # what artifacts record (TrainingSummary.backend)
    packages: ClassVar[tuple[str, ...]]  # whose versions the training summary records
    card_stack: ClassVar[str]  # the model card's "trained with ..." words
    card_tags: ClassVar[tuple[str, ...]] = ()  # the Hub tags of a model it trained, beyond the card's own
    # Whether the library's generate switches the model to inference mode and back by itself; grading during
    # training then leaves the mode alone (training/grading.py).
    generate_manages_train_mode: ClassVar[bool]
    # Whether loading it patches transformers' model code for the whole process (every Llama's forward, a plain
    # transformers copy's too); grading's merged copy then decodes with a dynamic KV cache, not a compiled static one.
    patches_every_model: ClassVar[bool]

    def prepare(self) -> None:  # noqa: B027 - an optional hook: a backend that patches nothing keeps this no-op
        """What must happen before transformers, TRL and PEFT are imported: nothing, unless a backend patches them."""

    def load_for_training(self, base_model: str, settings, max_seq_length: int):
        """(PEFT-wrapped model, tokenizer padded on the right) ready for the trainer."""
        from medcot_pipeline.base_models import BaseModelError, load_tokenizer

        if base_model.startswith((".", "/", "~")) and not Path(base_model).expanduser().exists():
            raise BaseModelError(f"base model directory {base_model} does not exist")
        tokenizer = load_tokenizer(base_model)
        # Training collators pad on the right; generation (load_tokenizer's default) pads on the left.
        tokenizer.padding_side = "right"
        try:
            model = self._lora_model(base_model, settings, max_seq_length)
        except (OSError, ValueError) as err:
            raise BaseModelError(f"cannot load base model {base_model}: {err}") from err
        return model, tokenizer

    @abstractmethod
    def _lora_model(self, base_model: str, settings, max_seq_length: int):
        """The base model with fresh LoRA adapters on `settings.lora_target_modules`."""

    @abstractmethod
    def load_for_inference(self, model_ref: str, adapter_dir: str | None, *, torch_dtype, device, attention: str):
        """The model, with `adapter_dir` merged in when given, ready to generate."""

    def __repr__(self) -> str:
        return f"<backend {self.name}>"


class TransformersPeft(Backend):
    """transformers + PEFT (+ bitsandbytes for 4-bit on CUDA): runs everywhere, the CPU included (`hf_peft.py`)."""

    name = "transformers"
    packages = TRAINING_PACKAGES
    card_stack = "TRL and PEFT"
    generate_manages_train_mode = False
    patches_every_model = False

    def _lora_model(self, base_model: str, settings, max_seq_length: int):
        from medcot_pipeline.backends import hf_peft

        return hf_peft.lora_model_for_training(base_model, settings, max_seq_length)

    def load_for_inference(self, model_ref: str, adapter_dir: str | None, *, torch_dtype, device, attention: str):
        from medcot_pipeline.backends import hf_peft

        return hf_peft.model_for_inference(model_ref, adapter_dir, torch_dtype, device, attention)


class Unsloth(Backend):
    """Unsloth's FastLanguageModel on CUDA (`unsloth_lora.py`): its kernels and patches over transformers, TRL and PEFT."""

    name = "unsloth"
    packages = TRAINING_PACKAGES + UNSLOTH_PACKAGES
    card_stack = "Unsloth and TRL"
    card_tags = ("unsloth",)
    # Its generate enters inference mode and leaves it; a bare model.train() afterwards would not undo its patches.
    generate_manages_train_mode = True
    patches_every_model = True

    def prepare(self) -> None:
        """Import Unsloth before transformers, TRL and PEFT, so that its patches apply to them.

        Under torchrun each rank first selects the GPU of its local rank: Unsloth probes the current device while it
        is imported, and every rank would otherwise start a context on GPU 0.
        """
        from medcot_pipeline.data_parallel import local_rank, world_size

        if world_size() > 1 and cuda_available():
            import torch

            torch.cuda.set_device(local_rank())
        try:
            from medcot_pipeline.backends import unsloth_lora  # noqa: F401 - imports unsloth
        except ImportError as err:
            raise BackendError(f"backend 'unsloth' could not be imported: {err}") from err

    def _lora_model(self, base_model: str, settings, max_seq_length: int):
        from medcot_pipeline.backends import unsloth_lora

        return unsloth_lora.lora_model_for_training(base_model, settings, max_seq_length)

    def load_for_inference(self, model_ref: str, adapter_dir: str | None, *, torch_dtype, device, attention: str):
        # Unsloth places the model on its GPU and brings its own attention: `device` and `attention` do not apply.
        from medcot_pipeline.backends import unsloth_lora

        return unsloth_lora.model_for_inference(model_ref, adapter_dir, torch_dtype)


TRANSFORMERS = TransformersPeft()
UNSLOTH = Unsloth()
_BY_NAME: dict[str, Backend] = {backend.name: backend for backend in (TRANSFORMERS, UNSLOTH)}


def backend_named(name: str) -> Backend:
    """The backend an artifact recorded by name (TrainingSummary.backend); whether it can run here is not asked."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise BackendError(f"unknown backend {name!r}; the backends are {', '.join(_BY_NAME)}") from None


def resolve_backend(requested: str, purpose: Purpose, processes: int = 1) -> Backend:
    """The backend for `purpose`.

    - "transformers" is always honoured; "unsloth" is honoured where it can run (CUDA, the package) and fails here otherwise.
    - "auto" picks Unsloth for training on CUDA when it is installed, on one GPU or data-parallel under torchrun
      (Unsloth 2026.10.9 pins each rank to its own GPU and handles DDP itself; `processes` no longer changes the
      answer): its kernels trained 2x faster than transformers + PEFT on the t4 profile (benchmarks/README.md).
      Everything else gets transformers: generation with transformers and grouped_sdpa ran 5.5x faster than
      Unsloth's inference mode, and merging is exact either way.
    """
    if requested != "auto" and requested not in _BY_NAME:
        raise BackendError(f"backend must be auto, transformers or unsloth, not {requested!r}")
    if processes < 1:
        raise BackendError(f"processes must be at least 1, not {processes}")
    if requested == TRANSFORMERS.name:
        return TRANSFORMERS
    if requested == UNSLOTH.name:
        if not unsloth_installed():
            raise BackendError("backend 'unsloth' needs the unsloth package: pip install -e '.[gpu]'")
        if not cuda_available():
            raise BackendError("backend 'unsloth' needs a CUDA GPU; use backend: transformers on this machine")
        return UNSLOTH
    if purpose == "training" and cuda_available() and unsloth_installed():
        return UNSLOTH
    return TRANSFORMERS
