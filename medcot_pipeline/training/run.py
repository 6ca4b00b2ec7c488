"""The training process that Dagster launches through Pipes: `python -m medcot_pipeline.training.run`.

Reads the extras, trains a LoRA adapter (resuming from the last checkpoint), saves it, and reports the
materialization. transformers, TRL and PEFT are imported inside `train`, after the backend is chosen,
because Unsloth must be imported before them.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Mapping

from medcot_pipeline.configs import TrainingConfig
from medcot_pipeline.training import backends, distributed

EXTRAS_TYPES: dict[str, type] = {
    "base_model": str,
    "train_file": str,
    "validation_file": str,
    "output_dir": str,
    "checkpoint_dir": str,
    "max_seq_length": int,
    "training": dict,
    "wandb": dict,
}
# Optional: the profile's name, for messages that tell the user which settings to change.
OPTIONAL_EXTRAS_TYPES: dict[str, type] = {"profile": str}
WANDB_TYPES: dict[str, type] = {"mode": str, "project": str, "dir": str, "run_name": str}
SUMMARY_FILE = "training_summary.json"
LOSS_CURVE_FILE = "loss_curve.png"


def validate_extras(extras: Mapping[str, Any]) -> dict:
    """The extras, checked against the contract with the `lora_adapter` asset."""
    for key, kind in EXTRAS_TYPES.items():
        if key not in extras:
            raise ValueError(f"Pipes extras: '{key}' is missing")
        value = extras[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise TypeError(f"Pipes extras: '{key}' should be {kind.__name__}, got {type(value).__name__}")
    for key, kind in OPTIONAL_EXTRAS_TYPES.items():
        if key in extras and not isinstance(extras[key], kind):
            raise TypeError(f"Pipes extras: '{key}' should be {kind.__name__}, got {type(extras[key]).__name__}")
    wandb = extras["wandb"]
    if not isinstance(wandb.get("enabled"), bool):
        raise ValueError("Pipes extras: 'wandb.enabled' is missing or not a bool")
    if wandb["enabled"]:
        for key, kind in WANDB_TYPES.items():
            if not isinstance(wandb.get(key), kind):
                raise ValueError(f"Pipes extras: 'wandb.{key}' is missing or not a {kind.__name__}")
        if wandb["mode"] not in ("offline", "online"):
            raise ValueError(f"Pipes extras: 'wandb.mode' is {wandb['mode']!r}, expected 'offline' or 'online'")
    return dict(extras)


def train(extras: Mapping[str, Any], log: logging.Logger) -> dict:
    """Fine-tune, save the adapter into `output_dir`, and return the training summary."""
    started = time.perf_counter()
    extras = validate_extras(extras)
    config = TrainingConfig(**extras["training"])
    processes = distributed.world_size()
    if processes > 1:
        config = _data_parallel_config(config, processes, log)
    backend = backends.choose_backend(config)
    if backend == "unsloth":
        backends.import_unsloth()
    # After Unsloth, which patches these libraries as it is imported.
    from medcot_pipeline.training import reporting, sft_data
    from medcot_pipeline.training.trainer import build_sft_config, build_trainer

    output_dir, checkpoint_dir = Path(extras["output_dir"]), Path(extras["checkpoint_dir"])
    max_seq_length = extras["max_seq_length"]
    log.info(f"backend {backend}: loading {extras['base_model']}")
    model, tokenizer, backend = backends.load_model_for_training(extras["base_model"], config, max_seq_length)
    train_dataset = sft_data.to_training_dataset(tokenizer, sft_data.read_split(extras["train_file"]))
    validation = sft_data.read_split(extras["validation_file"])
    eval_dataset = sft_data.to_training_dataset(tokenizer, validation) if len(validation) else None

    # One W&B run for the whole job: only rank 0 reports.
    wandb_run = start_wandb(extras["wandb"], extras["training"], log) if distributed.is_main_process() else None
    exit_code = 1  # marks the W&B run failed unless training gets to the end
    try:
        sft_config = build_sft_config(
            config,
            str(checkpoint_dir),
            max_seq_length,
            has_eval=eval_dataset is not None,
            report_to=["wandb"] if wandb_run else [],
            run_name=extras["wandb"].get("run_name"),
        )
        progress = reporting.TrainingProgress(log)
        trainer = build_trainer(model, tokenizer, train_dataset, eval_dataset, sft_config, [progress])
        resume_from = last_complete_checkpoint(checkpoint_dir, log)
        log.info(f"resuming from {Path(resume_from).name}" if resume_from else "no checkpoint, starting fresh")
        try:
            trainer.train(resume_from_checkpoint=resume_from)
        except torch_out_of_memory() as err:
            raise RuntimeError(out_of_memory_advice(config, max_seq_length, extras.get("profile"))) from err
        step = trainer.state.global_step
        evals = reporting.eval_rows(trainer.state.log_history)
        # The Trainer already evaluates at the last step when eval_steps divides max_steps.
        if eval_dataset is not None and not (evals and evals[-1]["step"] == step):
            trainer.evaluate()
            evals = reporting.eval_rows(trainer.state.log_history)

        history = trainer.state.log_history
        losses = reporting.loss_rows(history, progress.timings)
        summary = {
            "backend": backend,
            "base_model": extras["base_model"],
            "adapter_dir": str(output_dir),
            "global_step": step,
            "resumed_from": resume_from,
            "train_rows": len(train_dataset),
            "validation_rows": len(eval_dataset) if eval_dataset is not None else 0,
            "train_loss_final": losses[-1]["loss"] if losses else None,
            "eval_loss_final": evals[-1]["eval_loss"] if evals else None,
            "learning_rate_final": losses[-1]["learning_rate"] if losses else None,
            "loss_per_step": losses,
            "eval_losses": evals,
            "tokens_seen": trainer.state.num_input_tokens_seen,
            "tokens_this_run": progress.session_tokens,
            "tokens_per_second": progress.tokens_per_second,
            "training_seconds": round(progress.training_seconds, 2),
            "peak_gpu_memory_gib": reporting.peak_gpu_memory_gib(),
            "versions": library_versions(backend),
            "wandb": wandb_location(wandb_run),
            "wall_time_s": round(time.perf_counter() - started, 2),
        }
        if distributed.is_main_process():
            save_adapter(trainer.model, tokenizer, output_dir, summary, history, log)
        exit_code = 0
    finally:
        if wandb_run is not None:
            wandb_run.finish(exit_code=exit_code)
    return summary


def _data_parallel_config(config: TrainingConfig, processes: int, log) -> TrainingConfig:
    """The per-process settings of a data-parallel run: the global batch stays as configured."""
    accumulation, exact = distributed.per_process_accumulation(config.gradient_accumulation_steps, processes)
    if not exact:
        log.warning(
            f"gradient_accumulation_steps {config.gradient_accumulation_steps} does not divide by {processes} processes; "
            f"using {accumulation} per process, a global batch of {config.per_device_train_batch_size * accumulation * processes}"
        )
    updates = {"gradient_accumulation_steps": accumulation}
    if backends.choose_backend(config) == "unsloth":
        # Unsloth 2026.10.9 trains on one GPU; several go through transformers + PEFT (README: multi-GPU).
        log.info(f"{processes} processes: training with transformers + PEFT instead of Unsloth")
        updates["backend"] = "transformers"
    return config.model_copy(update=updates)


def torch_out_of_memory() -> type[BaseException]:
    import torch

    return torch.OutOfMemoryError


def out_of_memory_advice(config: TrainingConfig, max_seq_length: int, profile: str | None) -> str:
    settings = (
        f"batch {config.per_device_train_batch_size} x accumulation {config.gradient_accumulation_steps}, "
        f"max_seq_length {max_seq_length}, load_in_4bit {config.load_in_4bit}, "
        f"gradient_checkpointing {config.gradient_checkpointing}"
    )
    return (
        f"CUDA ran out of memory training with profile {profile or '(unnamed)'} ({settings}). "
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


def save_adapter(model, tokenizer, output_dir: Path, summary: dict, history: list, log) -> None:
    """Write adapter, tokenizer, summary and loss curve under a temporary name, then rename into place,
    so `output_dir` only ever holds a complete adapter."""
    from medcot_pipeline.training.reporting import loss_curve_png

    staging = output_dir.with_name(f".{output_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        model.save_pretrained(staging)
        # Readers of the adapter generate, and generation pads on the left.
        tokenizer.padding_side = "left"
        tokenizer.save_pretrained(staging)
        loss_curve_png(history, staging / LOSS_CURVE_FILE)
        (staging / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if output_dir.exists():
        log.warning(f"replacing the earlier adapter at {output_dir}")
        shutil.rmtree(output_dir)
    staging.rename(output_dir)
    log.info(f"adapter saved to {output_dir}")


def start_wandb(settings: Mapping[str, Any], training: Mapping[str, Any], log):
    """A W&B run (offline unless mode is online) that the Trainer's WandbCallback logs into, or None."""
    if not settings.get("enabled"):
        return None
    os.environ["WANDB_MODE"] = settings["mode"]
    os.environ["WANDB_DIR"] = settings["dir"]
    os.environ["WANDB_PROJECT"] = settings["project"]
    if settings.get("entity"):
        os.environ["WANDB_ENTITY"] = settings["entity"]
    Path(settings["dir"]).mkdir(parents=True, exist_ok=True)
    import wandb

    run = wandb.init(
        project=settings["project"],
        entity=settings.get("entity"),
        dir=settings["dir"],
        mode=settings["mode"],
        name=settings["run_name"],
        config={"training": dict(training)},
    )
    log.info(f"W&B run {run.name} ({settings['mode']}): {run.url or run.settings.sync_dir}")
    return run


def wandb_location(run) -> dict | None:
    if run is None:
        return None
    return {"run_path": run.path, "url": run.url, "dir": run.settings.sync_dir}


def library_versions(backend: str) -> dict[str, str]:
    packages = ["torch", "transformers", "trl", "peft", "datasets", "accelerate"]
    if backend == "unsloth":
        packages += ["unsloth", "unsloth_zoo", "bitsandbytes"]
    versions = {"python": platform.python_version()}
    for package in packages:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    return versions


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


def materialization_metadata(summary: dict, adapter_dir: Path) -> dict:
    """The summary as Dagster metadata, with the loss curve inline."""
    from medcot_pipeline.training.reporting import markdown_image

    wandb = summary["wandb"] or {}
    return {
        "train_loss_final": _value(summary["train_loss_final"], "float"),
        "eval_loss_final": _value(summary["eval_loss_final"], "float"),
        "learning_rate_final": _value(summary["learning_rate_final"], "float"),
        "global_step": _value(summary["global_step"], "int"),
        "loss_per_step": _table(
            summary["loss_per_step"],
            {
                "step": "int",
                "loss": "float",
                "learning_rate": "float",
                "grad_norm": "float",
                "tokens_seen": "int",
                "tokens_per_second": "float",
                "elapsed_s": "float",
                "peak_gpu_memory_gib": "float",
            },
        ),
        "eval_losses": _table(summary["eval_losses"], {"step": "int", "eval_loss": "float"}),
        "tokens_seen": _value(summary["tokens_seen"], "int"),
        "tokens_per_second": _value(summary["tokens_per_second"], "float"),
        "training_seconds": _value(summary["training_seconds"], "float"),
        "wall_time_s": _value(summary["wall_time_s"], "float"),
        "peak_gpu_memory_gib": _value(summary["peak_gpu_memory_gib"], "float"),
        "backend": _value(summary["backend"], "text"),
        "versions": _value(summary["versions"], "json"),
        "resumed_from": _value(summary["resumed_from"], "path"),
        "wandb_run": _value(wandb.get("url"), "url") if wandb.get("url") else _value(wandb.get("dir"), "path"),
        "train_rows": _value(summary["train_rows"], "int"),
        "validation_rows": _value(summary["validation_rows"], "int"),
        "loss_curve": _value(markdown_image(adapter_dir / LOSS_CURVE_FILE), "md"),
    }


def main() -> None:
    from dagster_pipes import PipesDefaultContextLoader, PipesEnvVarParamsLoader, open_dagster_pipes

    if not distributed.is_main_process():
        # Other ranks train in step with rank 0 but never write to Dagster: they only read the extras.
        with PipesDefaultContextLoader().load_context(PipesEnvVarParamsLoader().load_context_params()) as context:
            extras = context["extras"]
        logging.basicConfig(level=logging.WARNING, format=f"rank {distributed.rank()}: %(message)s")
        train(extras, logging.getLogger(f"medcot_pipeline.rank{distributed.rank()}"))
        return

    with open_dagster_pipes() as pipes:
        # Notes from the backend and trainer modules reach Dagster's log too.
        package_logger = logging.getLogger("medcot_pipeline")
        package_logger.setLevel(logging.INFO)
        for handler in pipes.log.handlers:
            package_logger.addHandler(handler)
        summary = train(pipes.extras, pipes.log)
        pipes.report_asset_materialization(metadata=materialization_metadata(summary, Path(summary["adapter_dir"])))


if __name__ == "__main__":
    main()
