"""The training process that Dagster launches through Pipes: `python -m medcot_pipeline.training.run`.

Reads its job (the Pipes extras, a `TrainingJob`), trains a LoRA adapter (resuming from the last
checkpoint), saves it with its `TrainingSummary`, and reports the materialization. It imports
`dagster_pipes`, never `dagster`: every torchrun rank starts this module, and the orchestrator stays out.
transformers, TRL and PEFT are imported inside `train`, after the backend is chosen, because Unsloth
must be imported before them.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from medcot_pipeline import backends
from medcot_pipeline.artifact_io import atomic_directory
from medcot_pipeline.contracts import TrainingJob, TrainingSummary, WandbRun, WandbTarget
from medcot_pipeline.data.schema import EVALUATION_COLUMNS, TRAINING_COLUMNS, read_split
from medcot_pipeline.environment import TRAINING_PACKAGES, UNSLOTH_PACKAGES, hardware_name, library_versions
from medcot_pipeline.settings import TrainingSettings
from medcot_pipeline.training import distributed

LOSS_CURVE_FILE = "loss_curve.png"


def train(job: TrainingJob, log: logging.Logger) -> TrainingSummary:
    """Fine-tune, save the adapter into `job.output_dir` (rank 0), and return the training summary."""
    started = time.perf_counter()
    processes = distributed.world_size()
    backend = backends.resolve_backend(job.settings.backend, "training", processes)
    backends.prepare(backend)
    # After Unsloth, which patches these libraries as it is imported.
    from medcot_pipeline.training import checkpoint_upload, grading, progress, recipe

    settings = per_process_settings(job.settings, processes, log)
    output_dir, checkpoint_dir = Path(job.output_dir), Path(job.checkpoint_dir)
    train_frame = read_split(job.splits_dir, "train", TRAINING_COLUMNS)
    # The reference responses too: grading during training scores answers against them.
    eval_frame = read_split(job.splits_dir, "validation", EVALUATION_COLUMNS)
    log.info(
        f"training {job.base_model.name} with {backend} in {processes} process(es): {len(train_frame)} training and "
        f"{len(eval_frame)} validation records, {settings.max_steps} steps, {global_batch(settings, processes).describe()}"
    )

    # One W&B run for the whole job: only rank 0 reports.
    wandb_run = start_wandb(job.wandb, job.settings, log) if distributed.is_main_process() else None
    exit_code = 1  # marks the W&B run failed unless training gets to the end
    try:
        tracker = progress.TrainingProgress(log)
        progress.quiet_progress_bars()
        model, tokenizer = backends.load_for_training(backend, job.base_model.reference, settings, job.max_seq_length)
        trainer = recipe.build_trainer(
            model, tokenizer, settings, job.max_seq_length, train_frame, eval_frame, str(checkpoint_dir),
            report_to=["wandb"] if wandb_run else [], run_name=job.wandb.run_name or None,
            callbacks=[tracker, *checkpoint_upload.callbacks(job, log)], backend=backend, log=log,
        )
        progress.leave_reporting_to(trainer)
        resume_from = last_complete_checkpoint(checkpoint_dir, log)
        log.info(f"resuming from {Path(resume_from).name}" if resume_from else "no checkpoint, starting fresh")
        try:
            trainer.train(resume_from_checkpoint=resume_from)
        except torch_out_of_memory() as err:
            raise RuntimeError(out_of_memory_advice(settings, job.max_seq_length, job.profile)) from err
        step = trainer.state.global_step
        evals = progress.eval_rows(trainer.state.log_history)
        keeps_best = trainer.args.load_best_model_at_end
        # The Trainer evaluates the last step itself when eval_steps is set; without it, evaluate once here.
        # Not after loading the best-graded checkpoint: that would log the kept model's scores as the last step's.
        if trainer.eval_dataset is not None and not keeps_best and not (evals and evals[-1]["step"] == step):
            trainer.evaluate()
            evals = progress.eval_rows(trainer.state.log_history)
        kept_best = keeps_best and trainer.state.best_model_checkpoint is not None
        kept_step = grading.agreed_kept_step(trainer.accelerator, trainer.state.best_global_step if kept_best else step)
        graded_questions = min(job.settings.grade_questions, len(eval_frame)) if keeps_best else 0
        if kept_step != step:
            log.info(f"kept the checkpoint of step {kept_step} (best graded), not the last step {step}")

        history = trainer.state.log_history
        losses = progress.loss_rows(history, tracker.timings)
        summary = TrainingSummary(
            backend=backend,
            base_weights=base_weights(trainer.model),
            processes=processes,
            global_batch_rows=global_batch(settings, processes).global_batch,
            per_process_batch=settings.per_device_train_batch_size,
            per_process_accumulation=settings.gradient_accumulation_steps,
            hardware=hardware_name(processes),
            base_model=job.base_model,
            dataset=job.dataset,
            splits_sha256=job.splits_sha256,
            settings=job.settings,
            max_seq_length=job.max_seq_length,
            profile=job.profile,
            code_version=job.code_version,
            lineage=job.lineage,
            global_step=step,
            resumed_from=resume_from,
            train_rows=len(trainer.train_dataset),
            validation_rows=len(trainer.eval_dataset) if trainer.eval_dataset is not None else 0,
            train_loss_final=losses[-1]["loss"] if losses else None,
            eval_loss_final=evals[-1]["eval_loss"] if evals else None,
            learning_rate_final=losses[-1]["learning_rate"] if losses else None,
            loss_per_step=losses,
            eval_losses=evals,
            graded_steps=grading.graded_rows(trainer.state.log_history),
            graded_questions=graded_questions,
            kept_step=kept_step,
            kept_by=grading.KEPT_BY_GRADE.format(n=graded_questions) if kept_best else grading.KEPT_BY_LAST_STEP,
            tokens_seen=trainer.state.num_input_tokens_seen,
            tokens_this_run=tracker.session_tokens,
            tokens_per_second=tracker.tokens_per_second,
            training_seconds=round(tracker.training_seconds, 2),
            wall_time_seconds=round(time.perf_counter() - started, 2),
            peak_gpu_memory_gib=progress.peak_gpu_memory_gib(),
            versions=library_versions(TRAINING_PACKAGES + (UNSLOTH_PACKAGES if backend == "unsloth" else ())),
            wandb=wandb_location(wandb_run),
        )
        if distributed.is_main_process():
            save_adapter(trainer.model, trainer.processing_class, output_dir, summary, log)
        exit_code = 0
    finally:
        if wandb_run is not None:
            wandb_run.finish(exit_code=exit_code)
    return summary


def base_weights(model) -> str:
    """How the trained model held its base weights: 4-bit (bitsandbytes NF4) or the dtype of its parameters."""
    if getattr(model, "is_loaded_in_4bit", False):
        return "4-bit NF4 (QLoRA)"
    frozen = next((p for p in model.parameters() if not p.requires_grad), None)
    return str(frozen.dtype).removeprefix("torch.") if frozen is not None else "unknown"


def per_process_settings(settings: TrainingSettings, processes: int, log) -> TrainingSettings:
    """What each of `processes` data-parallel processes runs: the configured rows a step, shared evenly
    (distributed.split_global_batch), so steps and learning rate keep their meaning on any number of GPUs."""
    if processes <= 1:
        return settings
    split = distributed.split_global_batch(settings.per_device_train_batch_size, settings.gradient_accumulation_steps, processes)
    return settings.model_copy(
        update={"per_device_train_batch_size": split.per_device_batch, "gradient_accumulation_steps": split.accumulation}
    )


def global_batch(per_process: TrainingSettings, processes: int) -> distributed.BatchSplit:
    """The batch layout that `per_process` settings give over `processes` processes."""
    return distributed.BatchSplit(
        processes=max(1, processes),
        per_device_batch=per_process.per_device_train_batch_size,
        accumulation=per_process.gradient_accumulation_steps,
    )


def torch_out_of_memory() -> type[BaseException]:
    import torch

    return torch.OutOfMemoryError


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


def last_complete_checkpoint(checkpoint_dir: Path, log: logging.Logger) -> str | None:
    """The newest checkpoint-N whose trainer_state.json exists and parses.

    The Trainer writes trainer_state.json last, so a process killed while saving leaves a folder
    without it (or with it cut short); transformers' get_last_checkpoint would pick that folder and
    fail to resume.
    """
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    if not checkpoint_dir.is_dir():
        return None
    candidates = [
        (int(path.name.rsplit("-", 1)[1]), path)
        for path in checkpoint_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*")
        if path.is_dir() and path.name.rsplit("-", 1)[1].isdigit()
    ]
    for _, path in sorted(candidates, reverse=True):
        state = path / "trainer_state.json"
        if not state.exists():
            log.warning(f"{path.name} has no trainer_state.json (interrupted while saving); skipping it")
            continue
        try:
            json.loads(state.read_text())
        except (OSError, ValueError):
            # transformers writes the state in place: a full disk or power loss can leave it empty or cut.
            log.warning(f"{path.name}/trainer_state.json is unreadable (interrupted while saving); skipping it")
            continue
        return str(path)
    return None


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


def start_wandb(target: WandbTarget, settings: TrainingSettings, log):
    """A W&B run (offline unless mode is online) that the Trainer's WandbCallback logs into, or None."""
    if not target.enabled:
        return None
    os.environ["WANDB_MODE"] = target.mode
    os.environ["WANDB_DIR"] = target.dir
    os.environ["WANDB_PROJECT"] = target.project
    # No banner or run summary on stderr (dozens of lines); the line logged below says where the run is.
    os.environ["WANDB_SILENT"] = "true"
    if target.entity:
        os.environ["WANDB_ENTITY"] = target.entity
    Path(target.dir).mkdir(parents=True, exist_ok=True)
    import wandb

    run = wandb.init(
        project=target.project,
        entity=target.entity,
        dir=target.dir,
        mode=target.mode,
        name=target.run_name,
        config={"training": settings.model_dump()},
    )
    log.info(f"W&B run {run.name} ({target.mode}): {run.url or run.settings.sync_dir}")
    return run


def wandb_location(run) -> WandbRun | None:
    if run is None:
        return None
    return WandbRun(run_path=run.path, url=run.url, dir=run.settings.sync_dir)


def materialization_metadata(summary: TrainingSummary, adapter_dir: Path) -> dict:
    """lora_adapter's page (presentation/training.py), as Pipes metadata."""
    from medcot_pipeline.presentation.entries import as_pipes_metadata
    from medcot_pipeline.presentation.training import lora_adapter_page

    return as_pipes_metadata(lora_adapter_page(summary, adapter_dir / LOSS_CURVE_FILE))


def main() -> None:
    from dagster_pipes import PipesDefaultContextLoader, PipesEnvVarParamsLoader, open_dagster_pipes

    if not distributed.is_main_process():
        # Other ranks train in step with rank 0 but never write to Dagster: they only read the extras.
        with PipesDefaultContextLoader().load_context(PipesEnvVarParamsLoader().load_context_params()) as context:
            extras = context["extras"]
        logging.basicConfig(level=logging.WARNING, format=f"rank {distributed.rank()}: %(message)s")
        train(TrainingJob.parse(extras, "Pipes extras"), logging.getLogger(f"medcot_pipeline.rank{distributed.rank()}"))
        return

    with open_dagster_pipes() as pipes:
        # Notes from the backend and trainer modules reach Dagster's log too.
        package_logger = logging.getLogger("medcot_pipeline")
        package_logger.setLevel(logging.INFO)
        for handler in pipes.log.handlers:
            package_logger.addHandler(handler)
        job = TrainingJob.parse(pipes.extras, "Pipes extras")
        summary = train(job, pipes.log)
        pipes.report_asset_materialization(metadata=materialization_metadata(summary, Path(job.output_dir)))


if __name__ == "__main__":
    # Under torchrun, a rank's exception goes into its error file, so torchrun's report (and the step's error) carries it.
    from torch.distributed.elastic.multiprocessing.errors import record

    record(main)()
