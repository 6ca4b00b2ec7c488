"""transformers + PEFT (+ bitsandbytes for 4-bit on CUDA): runs everywhere, the CPU included."""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


def lora_model_for_training(base_model: str, settings, max_seq_length: int):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, set_seed

    from medcot_pipeline.data_parallel import local_rank

    kwargs: dict = {}
    quantized = False
    if torch.cuda.is_available():
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        # Under torchrun each process owns the GPU of its local rank.
        torch.cuda.set_device(local_rank())
        kwargs.update(dtype=dtype, device_map={"": local_rank()})
        if settings.load_in_4bit:
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=dtype,
            )
            quantized = True
    else:
        # bitsandbytes 4-bit kernels need CUDA; a CPU trains the full-precision weights instead.
        if settings.load_in_4bit:
            logger.info("no CUDA device: load_in_4bit ignored, the base model is loaded in float32")
        kwargs["dtype"] = torch.float32

    model = AutoModelForCausalLM.from_pretrained(base_model, **kwargs)
    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=settings.gradient_checkpointing)
    lora = LoraConfig(
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=list(settings.lora_target_modules),
        task_type="CAUSAL_LM",
    )
    # LoRA's A matrices are initialised randomly: seed first so that a run is reproducible.
    set_seed(settings.seed)
    return get_peft_model(model, lora)


def model_for_inference(model_ref: str, adapter_dir: str | None, torch_dtype, device, attention: str):
    from transformers import AutoModelForCausalLM

    register_attention(attention)
    model = AutoModelForCausalLM.from_pretrained(model_ref, dtype=torch_dtype, device_map=str(device), attn_implementation=attention)
    if adapter_dir is not None:
        from peft import PeftModel

        # Merged once here so that every generated token skips the extra LoRA matmuls.
        model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    return model


def register_attention(attention: str) -> None:
    """Make medcot's own attention implementations known to transformers under their names (stock ones need nothing)."""
    from medcot_pipeline.evaluation import grouped_attention

    if attention == grouped_attention.NAME:
        grouped_attention.register()
    elif attention == "grouped_triton":
        from medcot_pipeline.evaluation import decode_attention  # imports Triton: only when asked for

        decode_attention.register()
