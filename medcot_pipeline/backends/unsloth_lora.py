"""Unsloth's FastLanguageModel: the only module that imports Unsloth (CUDA only); in the package only `backends.Unsloth` imports it.

`unsloth_varlen`, which it imports when rows are packed, reaches into Unsloth's attention dispatch after it.
"""

from __future__ import annotations

import logging

from unsloth import FastLanguageModel

from medcot_pipeline.data_parallel import local_rank, world_size

logger = logging.getLogger(__name__)


def lora_model_for_training(base_model: str, settings, max_seq_length: int):
    configure_packed_attention(settings)
    # Under torchrun each rank holds a whole copy of the model on its own GPU (data parallel); Unsloth does the
    # same by itself when the map is left automatic, this makes it explicit.
    placement = {"device_map": {"": local_rank()}} if world_size() > 1 else {}
    # dtype=None lets Unsloth pick bfloat16 where the GPU supports it, else float16.
    model, _ = FastLanguageModel.from_pretrained(
        model_name=base_model, max_seq_length=max_seq_length, load_in_4bit=settings.load_in_4bit, dtype=None, **placement
    )
    return FastLanguageModel.get_peft_model(
        model,
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=list(settings.lora_target_modules),
        use_gradient_checkpointing="unsloth" if settings.gradient_checkpointing else False,
        random_state=settings.seed,
    )


def configure_packed_attention(settings) -> str:
    """Packed (padding-free) rows through flash varlen or per-record SDPA, as `settings.packed_attention` says."""
    from medcot_pipeline.backends import unsloth_varlen

    if not (settings.packing or settings.padding_free):
        return "unpacked rows"
    state = unsloth_varlen.enable() if settings.packed_attention == "varlen" else unsloth_varlen.disable()
    logger.info("packed rows: %s", state)
    return state


def model_for_inference(model_ref: str, adapter_dir: str | None, torch_dtype):
    """Unsloth's inference mode, for a user who asks for it by name (transformers is faster: backends.resolve_backend)."""
    from peft import PeftModel
    from transformers import AutoConfig

    context = getattr(AutoConfig.from_pretrained(model_ref), "max_position_embeddings", None) or 4096
    model, _ = FastLanguageModel.from_pretrained(model_name=model_ref, max_seq_length=context, dtype=torch_dtype, load_in_4bit=False)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    FastLanguageModel.for_inference(model)
    return model
