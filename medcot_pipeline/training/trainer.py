"""TRL's SFTConfig and SFTTrainer, built from the pipeline's TrainingConfig."""

from __future__ import annotations

import importlib.util
import logging

import torch
from trl import SFTConfig, SFTTrainer

from medcot_pipeline.configs import TrainingConfig

logger = logging.getLogger(__name__)


def optimizer_name(requested: str) -> str:
    """The requested optimizer, or adamw_torch where bitsandbytes' 8-bit optimizers cannot run."""
    needs_bnb = "8bit" in requested or "bnb" in requested or requested.startswith("paged_")
    if needs_bnb and not (torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes")):
        logger.info("optimizer %s needs bitsandbytes on CUDA; using adamw_torch instead", requested)
        return "adamw_torch"
    return requested


def build_sft_config(
    config: TrainingConfig,
    output_dir: str,
    max_seq_length: int | None,
    has_eval: bool,
    report_to: list[str],
    run_name: str | None = None,
) -> SFTConfig:
    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported()
    evaluate = has_eval and config.eval_steps is not None
    return SFTConfig(
        output_dir=output_dir,
        run_name=run_name,
        report_to=report_to,
        seed=config.seed,
        # data
        max_length=max_seq_length,
        packing=config.packing,
        padding_free=config.padding_free,
        completion_only_loss=True,
        # optimisation
        max_steps=config.max_steps,
        per_device_train_batch_size=config.per_device_train_batch_size,
        per_device_eval_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        optim=optimizer_name(config.optim),
        bf16=bf16,
        fp16=cuda and not bf16,
        gradient_checkpointing=config.gradient_checkpointing,
        # logging, evaluation, checkpoints
        logging_steps=config.logging_steps,
        include_num_input_tokens_seen="non_padding",
        eval_strategy="steps" if evaluate else "no",
        eval_steps=config.eval_steps if evaluate else None,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        # Examples are tokenized before training; worker processes would only compete for the few cores.
        dataloader_num_workers=0,
        dataloader_pin_memory=cuda,
        disable_tqdm=True,
    )


def build_trainer(model, tokenizer, train_dataset, eval_dataset, sft_config: SFTConfig, callbacks) -> SFTTrainer:
    return SFTTrainer(
        model=model,
        args=sft_config,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=list(callbacks),
    )
