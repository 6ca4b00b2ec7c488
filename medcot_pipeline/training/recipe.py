"""The LoRA fine-tuning recipe, in torchtune's shape: one class whose phases a reader finds by name.

- `setup()` prepares the backend, reads the splits, opens the W&B run (rank 0), loads the model with LoRA and
  builds TRL's trainer with its callbacks (progress, checkpoint upload, grading);
- `train()` resumes from the newest complete checkpoint, trains, evaluates the last step and settles which
  checkpoint is kept;
- `save()` writes the adapter with its `TrainingSummary` (rank 0) and returns the summary;
- `cleanup()` closes the W&B run, marked failed unless `save()` got to the end.

`training/run.py:train` runs the phases for the process Dagster launches; under torchrun every rank runs them
in step. transformers, TRL and PEFT (through `progress`, `grading`, `checkpoint_upload` and `sft_trainer`) are
imported inside the phases, after `setup()` has prepared the backend: Unsloth must patch them as they load.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sized
from pathlib import Path

from medcot_pipeline import backends, data_parallel
from medcot_pipeline.artifact_io import atomic_directory
from medcot_pipeline.checkpoints import newest_complete_checkpoint
from medcot_pipeline.contracts import LOSS_CURVE_FILE, TrainingJob, TrainingSummary
from medcot_pipeline.data.schema import EVALUATION_COLUMNS, TRAINING_COLUMNS, read_split
from medcot_pipeline.environment import hardware_name, library_versions
from medcot_pipeline.settings import TrainingSettings
from medcot_pipeline.training.wandb_run import start_wandb, wandb_location


class LoraFinetuneRecipe:
    """One training job on this process: `setup()`, `train()`, `save()`, and `cleanup()` whatever happened."""

    def __init__(self, job: TrainingJob, log: logging.Logger):
        self.started = time.perf_counter()
        self.job, self.log = job, log
        self.processes = data_parallel.world_size()
        self.backend = backends.resolve_backend(job.settings.backend, "training", self.processes)
        # This process's share of the configured global batch; the job's settings stay as configured.
        self.settings = per_process_settings(job.settings, self.processes)
        self.wandb_run = None
        self.resume_from: Path | None = None
        self.kept_step: int | None = None
        self.kept_best = False
        self.saved = False

    # ------------------------------------------------------------------------------------------ setup

    def setup(self) -> None:
        # Before anything imports transformers, TRL or PEFT: Unsloth patches them as they are imported.
        self.backend.prepare()
        self._setup_data()
        self._setup_wandb()
        self._setup_model()
        self._setup_trainer()

    def _setup_data(self) -> None:
        self.train_frame = read_split(self.job.splits_dir, "train", TRAINING_COLUMNS)
        # The reference responses too: grading during training scores answers against them.
        self.eval_frame = read_split(self.job.splits_dir, "validation", EVALUATION_COLUMNS)
        self.log.info(
            f"training {self.job.base_model.name} with {self.backend.name} in {self.processes} process(es): "
            f"{len(self.train_frame)} training and {len(self.eval_frame)} validation records, "
            f"{self.settings.max_steps} steps, {batch_layout(self.settings, self.processes).describe()}"
        )

    def _setup_wandb(self) -> None:
        # One W&B run for the whole job: only rank 0 reports.
        if data_parallel.is_main_process():
            self.wandb_run = start_wandb(self.job.wandb, self.job.settings, self.log)

    def _setup_model(self) -> None:
        from medcot_pipeline.training import progress

        progress.quiet_progress_bars()
        self.model, self.tokenizer = self.backend.load_for_training(self.job.base_model.reference, self.settings, self.job.max_seq_length)

    def _setup_trainer(self) -> None:
        """TRL's trainer with the callbacks: progress lines (and the timings the summary reports), each checkpoint
        committed to object storage when the artifacts root is there, grading when the settings grade
        (build_trainer adds it), and W&B through the Trainer's own WandbCallback (report_to)."""
        from medcot_pipeline.training import checkpoint_upload, progress
        from medcot_pipeline.training.sft_trainer import build_trainer

        self.progress = progress.TrainingProgress(self.log)
        self.trainer = build_trainer(
            self.model,
            self.tokenizer,
            self.settings,
            self.job.max_seq_length,
            self.train_frame,
            self.eval_frame,
            str(Path(self.job.checkpoint_dir)),
            report_to=["wandb"] if self.wandb_run else [],
            run_name=self.job.wandb.run_name or None,
            callbacks=[self.progress, *checkpoint_upload.callbacks(self.job, self.log)],
            backend=self.backend,
            log=self.log,
        )
        progress.leave_reporting_to(self.trainer)

    # ------------------------------------------------------------------------------------------ train

    def train(self) -> None:
        import torch

        self.resume_from = newest_complete_checkpoint(Path(self.job.checkpoint_dir), self.log, self.job.settings.max_steps)
        self.log.info(f"resuming from {self.resume_from.name}" if self.resume_from else "no checkpoint, starting fresh")
        try:
            self.trainer.train(resume_from_checkpoint=str(self.resume_from) if self.resume_from else None)
        except torch.OutOfMemoryError as err:
            raise RuntimeError(out_of_memory_advice(self.settings, self.job.max_seq_length, self.job.profile)) from err
        self._evaluate_last_step()
        self._settle_kept_step()

    def _evaluate_last_step(self) -> None:
        """The Trainer evaluates the last step itself when eval_steps lands on it; without that, evaluate once here.
        Not after loading the best-graded checkpoint back: that would log the kept model's scores as the last step's."""
        from medcot_pipeline.training.progress import eval_rows

        trainer = self.trainer
        evals = eval_rows(trainer.state.log_history)
        last_evaluated = bool(evals) and evals[-1]["step"] == trainer.state.global_step
        if trainer.eval_dataset is not None and not trainer.args.load_best_model_at_end and not last_evaluated:
            trainer.evaluate()

    def _settle_kept_step(self) -> None:
        """The step whose adapter is saved: the best-graded checkpoint's when grading kept one, else the last."""
        from medcot_pipeline.training.grading import agreed_kept_step

        state = self.trainer.state
        kept_best = self.trainer.args.load_best_model_at_end and state.best_model_checkpoint is not None
        best_step = state.best_global_step if kept_best else None
        self.kept_best = best_step is not None
        self.kept_step = agreed_kept_step(self.trainer.accelerator, best_step if best_step is not None else state.global_step)
        if self.kept_step != state.global_step:
            self.log.info(f"kept the checkpoint of step {self.kept_step} (best graded), not the last step {state.global_step}")

    # ------------------------------------------------------------------------------------------ save

    def save(self) -> TrainingSummary:
        """The training summary; rank 0 also writes the adapter with it."""
        summary = self._summary()
        if data_parallel.is_main_process():
            save_adapter(self.trainer.model, self.trainer.processing_class, Path(self.job.output_dir), summary, self.log)
        self.saved = True
        return summary

    def _summary(self) -> TrainingSummary:
        """What was trained, from what, how, and how it went: the provenance the model card states."""
        from medcot_pipeline.training import grading, progress

        job, trainer, state = self.job, self.trainer, self.trainer.state
        layout = batch_layout(self.settings, self.processes)
        losses = progress.loss_rows(state.log_history, self.progress.timings)
        evals = progress.eval_rows(state.log_history)
        graded_questions = min(job.settings.grade_questions, len(self.eval_frame)) if trainer.args.load_best_model_at_end else 0
        # Map-style datasets (built from the frames in _setup_trainer), so their rows can be counted.
        train_dataset, eval_dataset = trainer.train_dataset, trainer.eval_dataset
        if not isinstance(train_dataset, Sized) or not (eval_dataset is None or isinstance(eval_dataset, Sized)):
            raise TypeError(f"the trainer's datasets cannot be counted: {type(train_dataset).__name__}, {type(eval_dataset).__name__}")
        return TrainingSummary(
            backend=self.backend.name,
            base_weights=base_weights(trainer.model),
            processes=self.processes,
            global_batch_rows=layout.global_batch,
            per_process_batch=layout.per_device_batch,
            per_process_accumulation=layout.accumulation,
            hardware=hardware_name(self.processes),
            base_model=job.base_model,
            dataset=job.dataset,
            splits_sha256=job.splits_sha256,
            settings=job.settings,
            max_seq_length=job.max_seq_length,
            profile=job.profile,
            code_version=job.code_version,
            lineage=job.lineage,
            global_step=state.global_step,
            resumed_from=str(self.resume_from) if self.resume_from else None,
            train_rows=len(train_dataset),
            validation_rows=len(eval_dataset) if eval_dataset is not None else 0,
            train_loss_final=losses[-1]["loss"] if losses else None,
            eval_loss_final=evals[-1]["eval_loss"] if evals else None,
            learning_rate_final=losses[-1]["learning_rate"] if losses else None,
            loss_per_step=losses,
            eval_losses=evals,
            graded_steps=grading.graded_rows(state.log_history),
            graded_questions=graded_questions,
            kept_step=self.kept_step,
            kept_by=grading.KEPT_BY_GRADE.format(n=graded_questions) if self.kept_best else grading.KEPT_BY_LAST_STEP,
            tokens_seen=state.num_input_tokens_seen,
            tokens_this_run=self.progress.session_tokens,
            tokens_per_second=self.progress.tokens_per_second,
            training_seconds=round(self.progress.training_seconds, 2),
            wall_time_seconds=round(time.perf_counter() - self.started, 2),
            peak_gpu_memory_gib=progress.peak_gpu_memory_gib(),
            versions=library_versions(self.backend.packages),
            wandb=wandb_location(self.wandb_run),
        )

    # ------------------------------------------------------------------------------------------ cleanup

    def cleanup(self) -> None:
        """Close the W&B run: finished when `save()` got to the end, failed otherwise."""
        if self.wandb_run is not None:
            self.wandb_run.finish(exit_code=0 if self.saved else 1)


def per_process_settings(settings: TrainingSettings, processes: int) -> TrainingSettings:
    """What each of `processes` data-parallel processes runs: the configured rows a step, shared evenly
    (data_parallel.split_global_batch), so steps and learning rate keep their meaning on any number of GPUs."""
    if processes <= 1:
        return settings
    split = data_parallel.split_global_batch(settings.per_device_train_batch_size, settings.gradient_accumulation_steps, processes)
    return settings.model_copy(
        update={"per_device_train_batch_size": split.per_device_batch, "gradient_accumulation_steps": split.accumulation}
    )


def batch_layout(per_process: TrainingSettings, processes: int) -> data_parallel.BatchSplit:
    """The batch layout that `per_process` settings give over `processes` processes."""
    return data_parallel.BatchSplit(
        processes=max(1, processes),
        per_device_batch=per_process.per_device_train_batch_size,
        accumulation=per_process.gradient_accumulation_steps,
    )


def base_weights(model) -> str:
    """How the trained model held its base weights: 4-bit (bitsandbytes NF4) or the dtype of its parameters."""
    if getattr(model, "is_loaded_in_4bit", False):
        return "4-bit NF4 (QLoRA)"
    frozen = next((p for p in model.parameters() if not p.requires_grad), None)
    return str(frozen.dtype).removeprefix("torch.") if frozen is not None else "unknown"


def out_of_memory_advice(config: TrainingSettings, max_seq_length: int, profile: str | None) -> str:
    described = (
        f"batch {config.per_device_train_batch_size} x accumulation {config.gradient_accumulation_steps}, "
        f"max_seq_length {max_seq_length}, load_in_4bit {config.load_in_4bit}, "
        f"gradient_checkpointing {config.gradient_checkpointing}"
    )
    return (
        f"CUDA ran out of memory training with profile {profile or '(unnamed)'} ({described}). "
        "Use the t4 profile (4-bit, batch 1, gradient checkpointing: under 4 GiB for Llama-3.2-3B) "
        "or lower per_device_train_batch_size and raise gradient_accumulation_steps to keep the global batch."
    )


def save_adapter(model, tokenizer, output_dir: Path, summary: TrainingSummary, log) -> None:
    """Adapter, tokenizer, summary and loss curve, appearing in `output_dir` all at once."""
    from medcot_pipeline.presentation.charts import loss_curve_png
    from medcot_pipeline.presentation.training import loss_series

    if output_dir.exists():
        log.warning(f"replacing the earlier adapter at {output_dir}")
    with atomic_directory(output_dir) as staging:
        model.save_pretrained(staging)
        # Readers of the adapter generate, and generation pads on the left.
        tokenizer.padding_side = "left"
        tokenizer.save_pretrained(staging)
        loss_curve_png(loss_series(summary), staging / LOSS_CURVE_FILE)
        summary.write(staging)
    kept = "" if summary.kept_step in (None, summary.global_step) else f", the checkpoint of step {summary.kept_step}"
    log.info(f"adapter saved ({summary.global_step} steps{kept})")
