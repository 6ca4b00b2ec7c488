"""The training process that Dagster launches through Pipes: `python -m medcot_pipeline.training.run`.

Reads its job (the Pipes extras, a `TrainingJob`), runs the LoRA fine-tuning recipe (training/recipe.py:
setup, train from the last complete checkpoint, save the adapter with its `TrainingSummary`, clean up), and
reports the materialization. It imports `dagster_pipes`, never `dagster`: every torchrun rank starts this
module, and the orchestrator stays out. Nothing here imports transformers, TRL or PEFT: the recipe imports
them after the backend is prepared, because Unsloth must be imported before them.
"""

from __future__ import annotations

import logging
from pathlib import Path

from medcot_pipeline import data_parallel
from medcot_pipeline.contracts import TrainingJob, TrainingSummary
from medcot_pipeline.training.recipe import LOSS_CURVE_FILE, LoraFinetuneRecipe


def train(job: TrainingJob, log: logging.Logger) -> TrainingSummary:
    """Fine-tune, save the adapter into `job.output_dir` (rank 0), and return the training summary."""
    recipe = LoraFinetuneRecipe(job, log)
    try:
        recipe.setup()
        recipe.train()
        return recipe.save()
    finally:
        recipe.cleanup()


def main() -> None:
    from dagster_pipes import PipesDefaultContextLoader, PipesEnvVarParamsLoader, open_dagster_pipes

    if not data_parallel.is_main_process():
        # Other ranks train in step with rank 0 but never write to Dagster: they only read the extras.
        with PipesDefaultContextLoader().load_context(PipesEnvVarParamsLoader().load_context_params()) as context:
            extras = context["extras"]
        logging.basicConfig(level=logging.WARNING, format=f"rank {data_parallel.rank()}: %(message)s")
        train(TrainingJob.parse(extras, "Pipes extras"), logging.getLogger(f"medcot_pipeline.rank{data_parallel.rank()}"))
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


# ---------------------------------------------------------------------------------------------------------------
# Presentation: the summary as Dagster metadata (Pipes' typed values), plain dicts with no dagster import.
# Kept apart from the process above so that it can move to one presentation module with defs/metadata.py.


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


if __name__ == "__main__":
    # Under torchrun, a rank's exception goes into its error file, so torchrun's report (and the step's error) carries it.
    from torch.distributed.elastic.multiprocessing.errors import record

    record(main)()
