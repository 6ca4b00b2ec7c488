"""Each model of a comparison in turn, one in memory at a time, the second answering through the first's
compiled graph when their shapes allow: shared by rouge_report and benchmark_report."""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Mapping
from typing import TypeVar

import torch

from medcot_pipeline.evaluation.generation import load_for_inference
from medcot_pipeline.settings import GenerationSettings

T = TypeVar("T")


def answer_with_each(
    models: Mapping[str, str], config: GenerationSettings, answer: Callable[[str, object, object], T], log=logging
) -> dict[str, T]:
    """{label: answer(label, model, tokenizer)} for each of `models` (label -> model directory or id), in order.

    When the model that answered last has the same architecture and tensor shapes as the next one, the next
    one's weights are copied into it and it answers again: with the static cache its compiled decode step and
    CUDA graphs are reused as they are (the same module, the same parameter addresses), so the second model pays
    no compilation. Otherwise the previous model is freed first, and only one model is ever in memory.
    """
    results: dict[str, T] = {}
    kept = None
    try:
        for label, reference in models.items():
            log.info(f"{label}: loading {reference}")
            if kept is not None and not same_shapes(kept.config, reference, log):
                kept = None
                release_memory()
            model, tokenizer = load_for_inference(reference, backend=config.inference_backend, attention=config.attention)
            if kept is not None and not takes_weights_of(kept, model, log):
                kept = None
                release_memory()
            if kept is not None:
                with torch.no_grad():
                    kept.load_state_dict(model.state_dict(), strict=True)
                kept.generation_config = model.generation_config
                log.info("the previous model's compiled graph answers, with these weights copied into it")
                model, kept = kept, None
                release_memory()
            results[label] = answer(label, model, tokenizer)
            kept, model = model, None
    finally:
        kept = None
        release_memory()
    return results


def same_shapes(config, reference: str, log=logging) -> bool:
    """Whether `reference` (a model directory or id) has the same architecture and layer shapes as `config`,
    in plain (unquantized) weights on both sides: a cheap check before the second model is loaded."""
    from transformers import AutoConfig

    try:
        other = AutoConfig.from_pretrained(reference)
    except (OSError, ValueError):
        return False
    keys = (
        "architectures",
        "model_type",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
    )
    mine, theirs = config.to_dict(), other.to_dict()
    differ: dict[str, object] = {k: (mine.get(k), theirs.get(k)) for k in keys if mine.get(k) != theirs.get(k)}
    if any(getattr(c, "quantization_config", None) for c in (config, other)):
        differ["quantization_config"] = "present"
    if differ:
        log.info(f"loading {reference} as a model of its own (differs in {differ})")
    return not differ


def takes_weights_of(target, source, log=logging) -> bool:
    """Whether `source`'s weights can be copied into `target` one for one: the same tensor names and shapes, and
    no tied embedding in `target` that `source` keeps as two different matrices."""
    mine = {name: tuple(t.shape) for name, t in target.state_dict().items()}
    theirs = {name: tuple(t.shape) for name, t in source.state_dict().items()}
    target_tied = getattr(target.config, "tie_word_embeddings", False)
    source_tied = getattr(source.config, "tie_word_embeddings", False)
    if mine != theirs or (target_tied and not source_tied):
        differ = sorted(set(mine.items()) ^ set(theirs.items()))[:4]
        log.info(f"loading the next model as a model of its own (tensors differ: {differ}, tied {target_tied}/{source_tied})")
        return False
    return True


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
