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
        model, tokenizer = backends.load_for_training(backend, job.base_model.reference, settings, job.max_seq_length)
        trainer = recipe.build_trainer(
            model, tokenizer, settings, job.max_seq_length, train_frame, eval_frame, str(checkpoint_dir),
            report_to=["wandb"] if wandb_run else [], run_name=job.wandb.run_name or None,
            callbacks=[tracker, *checkpoint_upload.callbacks(job, log)], backend=backend, log=log,
        )
        resume_from = last_complete_checkpoint(checkpoint_dir, log, job.settings.max_steps)
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
            save_adapter(trainer.model, trainer.processing_class, output_dir, summary, history, log)
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


def last_complete_checkpoint(checkpoint_dir: Path, log: logging.Logger, max_steps: int | None = None) -> str | None:
    """The checkpoint a rerun resumes from: the newest that is whole and not the end of a finished training
    (training/checkpoints.py says why each skipped one was skipped)."""
    from medcot_pipeline.training.checkpoints import resume_point

    return resume_point(checkpoint_dir, max_steps, log)


def save_adapter(model, tokenizer, output_dir: Path, summary: TrainingSummary, history: list, log) -> None:
    """Adapter, tokenizer, summary and loss curve, appearing in `output_dir` all at once."""
    from medcot_pipeline.training.progress import loss_curve_png

    if output_dir.exists():
        log.warning(f"replacing the earlier adapter at {output_dir}")
    with atomic_directory(output_dir) as staging:
        model.save_pretrained(staging)
        # Readers of the adapter generate, and generation pads on the left.
        tokenizer.padding_side = "left"
        tokenizer.save_pretrained(staging)
        loss_curve_png(history, staging / LOSS_CURVE_FILE)
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
    if target.entity:
        os.environ["WANDB_ENTITY"] = target.entity
    Path(target.dir).mkdir(parents=True, exist_ok=True)
    from medcot_pipeline.training.wandb_connection import init_run

    # Offline, with a warning, when the W&B server cannot be reached: tracking never costs the training run.
    run = init_run(
        log,
        project=target.project,
        entity=target.entity,
        dir=target.dir,
        mode=target.mode,
        name=target.run_name,
        config={"training": settings.model_dump()},
    )
    log.info(f"W&B run {run.name} ({run.settings.mode}): {run.url or run.settings.sync_dir}")
    return run


def wandb_location(run) -> WandbRun | None:
    if run is None:
        return None
    return WandbRun(run_path=run.path, url=run.url, dir=run.settings.sync_dir)


def _value(raw, kind: str) -> dict:
    """A typed Pipes metadata value; None becomes Dagster's null rather than a failed cast."""
    return {"raw_value": raw, "type": "null" if raw is None else kind}


def _table(rows: list[dict], columns: dict[str, str]) -> dict:
    return _value(
        {
            "records": [{name: row.get(name) for name in columns} for row in rows],
            "schema": [{"name": name, "type": kind} for name, kind in columns.items()],
        },
        "table",
    )


def _markdown_rows(rows: dict) -> dict:
    """Facts for the page but not for the Plots tab: a two-column markdown table, numbers written for reading."""
    def text(value) -> str:
        if value is None:
            return "n/a"
        if isinstance(value, float):
            return f"{value:.2e}" if value and abs(value) < 1e-3 else f"{value:,.4g}"
        return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)

    lines = ["| | |", "|---|---|"] + [f"| {label} | {text(value).replace('|', '/')} |" for label, value in rows.items()]
    return _value("\n".join(lines), "md")


def materialization_metadata(summary: TrainingSummary, adapter_dir: Path) -> dict:
    """The summary as Dagster metadata: the loss curve first (small enough to show inline), the few numbers
    worth a chart across runs (the Plots tab draws every numeric entry), then the rest as tables."""
    from medcot_pipeline.training.grading import GRADE_KEYS as grading_keys
    from medcot_pipeline.training.progress import loss_chart_markdown, markdown_image

    wandb = summary.wandb
    history = [{"step": r["step"], "loss": r["loss"]} for r in summary.loss_per_step] + [
        {"step": r["step"], "eval_loss": r["eval_loss"]} for r in summary.eval_losses
    ]
    data = summary.model_dump()
    kept = next((row for row in summary.graded_steps if row["step"] == summary.kept_step), {})

    def rounded(value, digits: int = 4):
        return None if value is None else float(f"{value:.{digits}g}")

    return {
        "loss_curve": _value(loss_chart_markdown(history), "md"),
        "train_loss_final": _value(rounded(data["train_loss_final"]), "float"),
        "eval_loss_final": _value(rounded(data["eval_loss_final"]), "float"),
        "global_step": _value(data["global_step"], "int"),
        "tokens_per_second": _value(rounded(data["tokens_per_second"]), "float"),
        "training_seconds": _value(rounded(data["training_seconds"]), "float"),
        "peak_gpu_memory_gib": _value(rounded(data["peak_gpu_memory_gib"], 3), "float"),
        # Grading during training (training/grading.py): the step whose answers graded best, and its grades.
        "kept_step": _value(data["kept_step"], "int"),
        "kept_format_compliance": _value(rounded(kept.get("format_compliance")), "float"),
        "kept_rouge_l_response": _value(rounded(kept.get("rouge_l_response")), "float"),
        "training": _markdown_rows({
            "profile": summary.profile,
            "backend": summary.backend,
            "base weights": summary.base_weights,
            "hardware": summary.hardware,
            "processes": summary.processes,
            "rows a step (global batch)": summary.global_batch_rows,
            "steps": summary.global_step,
            "resumed from": Path(summary.resumed_from).name if summary.resumed_from else "no checkpoint",
            "final learning rate": summary.learning_rate_final,
            "training rows": summary.train_rows,
            "validation rows": summary.validation_rows,
            "tokens seen": summary.tokens_seen,
            "wall time (s)": summary.wall_time_seconds,
            "graded questions": summary.graded_questions,
            "checkpoint kept by": summary.kept_by,
        }),
        "loss_per_step": _table(
            [
                {**row, "loss": rounded(row.get("loss")), "grad_norm": rounded(row.get("grad_norm")),
                 # In scientific notation: the UI would write 2.7e-05 as 0.00002727272727272727.
                 "learning_rate": None if row.get("learning_rate") is None else f"{row['learning_rate']:.3e}"}
                for row in data["loss_per_step"]
            ],
            {
                "step": "int",
                "loss": "float",
                "learning_rate": "string",
                "grad_norm": "float",
                "tokens_seen": "int",
                "tokens_per_second": "float",
                "elapsed_s": "float",
                "peak_gpu_memory_gib": "float",
            },
        ),
        "eval_losses": _table(
            [{**row, "eval_loss": rounded(row.get("eval_loss"))} for row in data["eval_losses"]], {"step": "int", "eval_loss": "float"}
        ),
        # What each evaluation's answers scored (format compliance, ROUGE-L, cut off) beside eval loss.
        "graded_steps": _table(
            [
                {**row, **{key: rounded(row.get(key)) for key in ("eval_loss", *grading_keys)}, "kept": row["step"] == data["kept_step"]}
                for row in data["graded_steps"]
            ],
            {"step": "int", "eval_loss": "float", **{key: "float" for key in grading_keys}, "kept": "bool"},
        ),
        "loss_curve_png": _value(markdown_image(adapter_dir / LOSS_CURVE_FILE), "md"),
        "backend": _value(data["backend"], "text"),
        "versions": _value(data["versions"], "json"),
        "resumed_from": _value(data["resumed_from"], "path"),
        "wandb_run": _value(None, "text") if wandb is None else _value(wandb.url, "url") if wandb.url else _value(wandb.dir, "path"),
    }


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
