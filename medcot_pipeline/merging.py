"""Merge the LoRA adapter into 16-bit base weights and save a standalone safetensors checkpoint.

The adapter was trained against 4-bit weights (QLoRA), but it is merged into the 16-bit original:
rounding the merged weights back to 4 bits would throw away most of what the adapter learned.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import torch

from medcot_pipeline.artifact_io import atomic_directory, files_sha256
from medcot_pipeline.base_models import load_tokenizer
from medcot_pipeline.model_paths import ModelLoadError, check_model_files

logger = logging.getLogger(__name__)

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# Unsloth publishes pre-quantized copies as <16-bit repo>-bnb-4bit or <16-bit repo>-unsloth-bnb-4bit.
_BNB_SUFFIX = re.compile(r"-(unsloth-)?bnb-4bit$")
# Shards and the tokenizer come on top of the weights themselves.
DISK_MARGIN = 1.1


class MergeError(RuntimeError):
    """The adapter cannot be merged: unreadable base, quantized-only base, or too little disk."""


def merge_adapter(
    base_model: str,
    adapter_dir: str | Path,
    out_dir: Path,
    *,
    dtype: str = "bfloat16",
    max_shard_size: str = "5GB",
) -> dict:
    """Write base + adapter as one checkpoint into `out_dir`, which appears only once it is complete.

    The 16-bit base is loaded with transformers and merged with PEFT, on any device: exact, and
    the same whichever backend trained the adapter.
    """
    if dtype not in DTYPES:
        raise MergeError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    # Without its weights PEFT would look the directory up as a Hub repo id and fail about that instead.
    try:
        check_model_files(adapter_dir)
    except ModelLoadError as err:
        raise MergeError(str(err)) from None
    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as staging:
        parameters = _merge_with_peft(base_model, adapter_dir, staging, dtype, max_shard_size)
    weights = sorted(out_dir.glob("*.safetensors"))
    return {
        "path": str(out_dir),
        "parameters": parameters,
        "size_bytes": sum(f.stat().st_size for f in weights),
        "dtype": dtype,
        "sha256": files_sha256(weights),
    }


def _merge_with_peft(base_model: str, adapter_dir, staging: Path, dtype: str, max_shard_size: str) -> int:
    merged = load_adapted_model(base_model, adapter_dir, DTYPES[dtype]).merge_and_unload(safe_merge=True)
    parameters = merged.num_parameters()
    # Check before writing anything: a full disk would otherwise surface as a half-written shard.
    check_free_space(staging.parent, parameters * DTYPES[dtype].itemsize)
    merged.save_pretrained(staging, safe_serialization=True, max_shard_size=max_shard_size)
    load_tokenizer(str(adapter_dir)).save_pretrained(staging)
    return parameters


def load_adapted_model(base_model: str, adapter_dir, dtype: torch.dtype):
    """The 16-bit base with the adapter attached (a PeftModel), embeddings sized as the adapter expects."""
    from peft import PeftModel

    base = load_base_16bit(base_model, dtype)
    rows = adapter_vocab_rows(adapter_dir)
    if rows is not None and rows != base.get_input_embeddings().weight.shape[0]:
        # Unsloth grows the vocabulary when the tokenizer has more tokens than the model; the adapter
        # then carries the whole embedding matrices, which only load into a model of the same size.
        logger.info("resizing the base vocabulary to the adapter's %d rows", rows)
        base.resize_token_embeddings(rows)
    return PeftModel.from_pretrained(base, str(adapter_dir))


def adapter_vocab_rows(adapter_dir) -> int | None:
    """Rows of the embedding matrix saved in the adapter, if it saved one."""
    from safetensors import safe_open

    weights = Path(adapter_dir) / "adapter_model.safetensors"
    if not weights.exists():
        return None
    with safe_open(str(weights), framework="pt") as handle:
        for key in handle.keys():
            if key.endswith("embed_tokens.weight"):
                return handle.get_slice(key).get_shape()[0]
    return None


def sixteen_bit_source(base_model: str) -> str:
    """The checkpoint to merge into: the base itself, or the 16-bit original of a bnb-4bit copy."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(base_model)
    except (OSError, ValueError) as err:
        raise MergeError(f"cannot read the config of base model {base_model}: {err}") from err
    quantization = getattr(config, "quantization_config", None)
    if not quantization:
        return base_model
    method = quantization.get("quant_method") if isinstance(quantization, dict) else quantization.quant_method
    if str(method) == "bitsandbytes" and _BNB_SUFFIX.search(base_model):
        return _BNB_SUFFIX.sub("", base_model)
    raise MergeError(f"base model {base_model} holds {method}-quantized weights; pass its 16-bit original as the base model")


def load_base_16bit(base_model: str, dtype: torch.dtype):
    """The base model's weights in `dtype`, never quantized."""
    from transformers import AutoModelForCausalLM

    source = sixteen_bit_source(base_model)
    if source != base_model:
        logger.info("merging into %s, the 16-bit original of %s", source, base_model)
    try:
        return AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    except OSError as err:
        if source == base_model:
            raise MergeError(f"cannot load base model {base_model}: {err}") from err
        if not torch.cuda.is_available():
            raise MergeError(
                f"cannot load {source}, the 16-bit original of {base_model} ({err}); "
                "dequantizing the 4-bit copy instead needs CUDA and bitsandbytes"
            ) from err
    # No 16-bit original within reach: dequantize the 4-bit weights (an approximation of the original).
    logger.warning("%s is out of reach; merging into the dequantized weights of %s", source, base_model)
    quantized = AutoModelForCausalLM.from_pretrained(base_model, device_map={"": torch.cuda.current_device()})
    return quantized.dequantize(dtype=dtype)


def check_free_space(directory: Path, needed_bytes: int) -> None:
    directory = Path(directory)
    probe = directory
    while not probe.exists():  # the output's parent may not exist yet
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed_bytes * DISK_MARGIN:
        raise MergeError(
            f"not enough disk to write the merged model under {directory}: needs about "
            f"{needed_bytes * DISK_MARGIN / 2**30:.2f} GiB, {free / 2**30:.2f} GiB free"
        )
