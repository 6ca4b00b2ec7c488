"""Load the base model with a LoRA adapter attached: Unsloth on CUDA, transformers + PEFT elsewhere.

Unsloth patches transformers, TRL and PEFT when it is imported, so it must be imported before any of
them. This module imports none of them at load time: `run.py` calls `choose_backend` and
`import_unsloth` first, and only then imports the trainer.
"""

from __future__ import annotations

import logging
from pathlib import Path

from medcot_pipeline.base_models import BaseModelError, load_tokenizer
from medcot_pipeline.configs import TrainingConfig

logger = logging.getLogger(__name__)


def choose_backend(config: TrainingConfig) -> str:
    if config.backend != "auto":
        return config.backend
    import torch

    return "unsloth" if torch.cuda.is_available() else "transformers"


def import_unsloth() -> None:
    """Import Unsloth ahead of transformers/TRL/PEFT so that its patches apply to them."""
    try:
        import unsloth  # noqa: F401
    except ImportError as err:
        raise RuntimeError(f"backend 'unsloth' needs the unsloth package (and a CUDA GPU): {err}") from err


def load_model_for_training(base_model: str, config: TrainingConfig, max_seq_length: int):
    """(PEFT-wrapped model, tokenizer padded on the right, backend name)."""
    backend = choose_backend(config)
    if base_model.startswith((".", "/", "~")) and not Path(base_model).expanduser().exists():
        raise BaseModelError(f"base model directory {base_model} does not exist")
    tokenizer = load_tokenizer(base_model)
    # Training collators pad on the right; generation (base_models' default) pads on the left.
    tokenizer.padding_side = "right"
    try:
        if backend == "unsloth":
            model = _unsloth_lora_model(base_model, config, max_seq_length)
        else:
            model = _transformers_lora_model(base_model, config)
    except (OSError, ValueError) as err:
        raise BaseModelError(f"cannot load base model {base_model}: {err}") from err
    return model, tokenizer, backend


def _unsloth_lora_model(base_model: str, config: TrainingConfig, max_seq_length: int):
    from unsloth import FastLanguageModel

    # dtype=None lets Unsloth pick bfloat16 where the GPU supports it, else float16.
    model, _ = FastLanguageModel.from_pretrained(
        model_name=base_model, max_seq_length=max_seq_length, load_in_4bit=config.load_in_4bit, dtype=None
    )
    return FastLanguageModel.get_peft_model(
        model,
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_target_modules),
        use_gradient_checkpointing="unsloth" if config.gradient_checkpointing else False,
        random_state=config.seed,
    )


def _transformers_lora_model(base_model: str, config: TrainingConfig):
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, set_seed

    kwargs: dict = {}
    quantized = False
    if torch.cuda.is_available():
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        # Under torchrun each process owns the GPU of its local rank.
        from medcot_pipeline.training.distributed import local_rank

        torch.cuda.set_device(local_rank())
        kwargs.update(dtype=dtype, device_map={"": local_rank()})
        if config.load_in_4bit:
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=dtype,
            )
            quantized = True
    else:
        # bitsandbytes 4-bit kernels need CUDA; a CPU trains the full-precision weights instead.
        if config.load_in_4bit:
            logger.info("no CUDA device: load_in_4bit ignored, the base model is loaded in float32")
        kwargs["dtype"] = torch.float32

    model = AutoModelForCausalLM.from_pretrained(base_model, **kwargs)
    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_target_modules),
        task_type="CAUSAL_LM",
    )
    # LoRA's A matrices are initialised randomly: seed first so that a run is reproducible.
    set_seed(config.seed)
    return get_peft_model(model, lora)
