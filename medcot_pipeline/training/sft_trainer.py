"""TRL's SFTConfig and SFTTrainer for a LoRA model from `Backend.load_for_training`. The training recipe
(training/recipe.py) and the benchmarks both train through `build_trainer`, so a benchmark measures what the
pipeline runs.

Import this module only after `backend.prepare()`: it imports TRL, which Unsloth must patch first.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from typing import Iterable

import pandas as pd
import torch
from trl import SFTConfig, SFTTrainer

from medcot_pipeline.backends import TRANSFORMERS, Backend
from medcot_pipeline.settings import TrainingSettings
from medcot_pipeline.training import distributed, grading
from medcot_pipeline.training.sft_data import to_training_dataset

logger = logging.getLogger(__name__)


def optimizer_name(requested: str) -> str:
    """The requested optimizer, or adamw_torch where bitsandbytes' 8-bit optimizers cannot run."""
    needs_bnb = "8bit" in requested or "bnb" in requested or requested.startswith("paged_")
    if needs_bnb and not (torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes")):
        logger.info("optimizer %s needs bitsandbytes on CUDA; using adamw_torch instead", requested)
        return "adamw_torch"
    return requested


def build_sft_config(
    settings: TrainingSettings,
    output_dir: str,
    max_seq_length: int | None,
    *,
    has_eval: bool,
    report_to: list[str],
    run_name: str | None = None,
) -> SFTConfig:
    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported()
    evaluate = has_eval and settings.eval_steps is not None
    keep_best = grading.grades_training(settings, has_eval)
    return SFTConfig(
        output_dir=output_dir,
        run_name=run_name,
        report_to=report_to,
        seed=settings.seed,
        # data
        max_length=max_seq_length,
        packing=settings.packing,
        padding_free=settings.padding_free,
        completion_only_loss=True,
        # optimisation
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.per_device_train_batch_size,
        per_device_eval_batch_size=settings.per_device_train_batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        learning_rate=settings.learning_rate,
        lr_scheduler_type=settings.lr_scheduler_type,
        warmup_steps=settings.warmup_steps,
        weight_decay=settings.weight_decay,
        optim=optimizer_name(settings.optim),
        bf16=bf16,
        fp16=cuda and not bf16,
        gradient_checkpointing=settings.gradient_checkpointing,
        # Several ranks without CUDA (the CPU tests): a gloo group, not ranks training alone on all the rows.
        use_cpu=distributed.cpu_process_group(),
        # LoRA trains every adapter on every step: DDP need not search the graph for unused parameters
        # (transformers would pass True for a PEFT model, an extra pass over the graph every step).
        ddp_find_unused_parameters=False,
        # Llama's only buffers are RoPE tables, computed identically on every rank: nothing to broadcast each step.
        ddp_broadcast_buffers=False,
        # logging, evaluation, checkpoints
        logging_steps=settings.logging_steps,
        include_num_input_tokens_seen="non_padding",
        eval_strategy="steps" if evaluate else "no",
        eval_steps=settings.eval_steps if evaluate else None,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=settings.save_total_limit,
        # The checkpoint that answered best is kept (and spared by save_total_limit), not the last (training/grading.py).
        load_best_model_at_end=keep_best,
        metric_for_best_model=grading.GRADE_METRIC if keep_best else None,
        greater_is_better=True if keep_best else None,
        # Examples are tokenized before training; worker processes would only compete for the few cores.
        dataloader_num_workers=0,
        dataloader_pin_memory=cuda,
        disable_tqdm=True,
    )


def build_trainer(
    model,
    tokenizer,
    settings: TrainingSettings,
    max_seq_length: int | None,
    train_frame: pd.DataFrame,
    eval_frame: pd.DataFrame | None,
    output_dir: str,
    *,
    report_to: list[str] | None = None,
    run_name: str | None = None,
    callbacks: Iterable = (),
    sft_overrides: dict | None = None,
    backend: Backend = TRANSFORMERS,
    answer_questions: grading.AnswerQuestions | None = None,
    log: logging.Logger | None = None,
) -> SFTTrainer:
    """TRL's trainer for a model from `backend.load_for_training`, on prompt-completion datasets built from the splits.

    `sft_overrides` replaces SFTConfig fields that no pipeline setting covers (a benchmark's eval batch, say).
    When the settings grade during training, `eval_frame` also needs the `response` column, and a
    `GradingCallback` (answering with `answer_questions`, default generate_answers; reporting to `log`)
    chooses the checkpoint kept.
    """
    train_dataset = to_training_dataset(tokenizer, train_frame)
    eval_dataset = to_training_dataset(tokenizer, eval_frame) if eval_frame is not None and len(eval_frame) else None
    sft_config = build_sft_config(
        settings, output_dir, max_seq_length, has_eval=eval_dataset is not None, report_to=report_to or [], run_name=run_name
    )
    if sft_overrides:
        sft_config = dataclasses.replace(sft_config, **sft_overrides)
    trainer = SFTTrainer(
        model=model,
        args=sft_config,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=list(callbacks),
    )
    if grading.grades_training(settings, eval_dataset is not None) and sft_config.load_best_model_at_end:
        if answer_questions is None and grading.MergedCopy.supports(model):
            answer_questions = grading.MergedCopy(log, backend=backend)
        trainer.add_callback(
            grading.GradingCallback(
                trainer,
                grading.grading_questions(eval_frame, settings.grade_questions, settings.seed),
                grading.generation_settings(settings),
                max_prompt_tokens=max_seq_length,
                backend=backend,
                answer=answer_questions,
                log=log,
            )
        )
    return trainer
