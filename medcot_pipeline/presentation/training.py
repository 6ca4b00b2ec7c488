"""A training run as it reads on lora_adapter's page and on the model card: the loss series, the facts of the
run, the per-step tables without empty or constant columns, and which step's weights were kept and why."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medcot_pipeline.contracts import TrainingSummary
from medcot_pipeline.presentation.charts import LossSeries, loss_chart_markdown, markdown_image
from medcot_pipeline.presentation.entries import Entry, FilePath, Json, Link, Markdown, Table, without_empty
from medcot_pipeline.presentation.text import (
    duration_text,
    key_value_table,
    markdown_table,
    percent_text,
    rounded,
    score_text,
)

# The per-step numbers, in two tables narrow enough for the page's value column: how it learned, how fast.
LOSS_COLUMNS = {"step": "int", "loss": "float", "learning_rate": "string", "grad_norm": "float"}
SPEED_COLUMNS = {"step": "int", "tokens_seen": "int", "tokens_per_second": "float", "elapsed_s": "float", "peak_gpu_memory_gib": "float"}
# The page's evaluations table: its headers cannot wrap, so it keeps to five columns (the cut-off share of each
# evaluation is in training_summary.json, W&B and the model card's table of graded steps).
GRADE_COLUMNS = {"step": "int", "eval_loss": "float", "format_compliance": "float", "rouge_l_response": "float", "kept": "bool"}


def loss_series(summary: TrainingSummary) -> LossSeries:
    return LossSeries(
        train=[(row["step"], row["loss"]) for row in summary.loss_per_step if row.get("loss") is not None],
        evals=[(row["step"], row["eval_loss"]) for row in summary.eval_losses if row.get("eval_loss") is not None],
        compliance={row["step"]: row["format_compliance"] for row in summary.graded_steps if row.get("format_compliance") is not None},
        kept_step=summary.kept_step,
    )


def resumed_step(summary: TrainingSummary) -> int | None:
    """The step of the checkpoint this run resumed from, or None for a fresh run."""
    if not summary.resumed_from:
        return None
    tail = Path(summary.resumed_from).name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else None


def steps_text(summary: TrainingSummary) -> str:
    """How far training went, against the plan, and where it started: `12`, `8 (resumed from checkpoint-4)`,
    `12 (resumed from checkpoint-12, which had already finished the 12 planned steps)`."""
    planned = summary.settings.max_steps
    text = str(summary.global_step) if summary.global_step == planned else f"{summary.global_step} ({planned} planned)"
    start = resumed_step(summary)
    if start is None:
        return text
    if start >= planned:
        return f"{text} (resumed from checkpoint-{start}, which had already finished the {planned} planned steps)"
    return f"{text} (resumed from checkpoint-{start})"


def last_step(summary: TrainingSummary) -> int:
    """The last step that belongs to the planned run: a resumed finished checkpoint is not a step further."""
    return min(summary.global_step, summary.settings.max_steps)


def kept_weights_text(summary: TrainingSummary) -> str:
    """Which training step's weights these are, and why that one (training/grading.py chose it)."""
    kept = next((row for row in summary.graded_steps if row.get("step") == summary.kept_step), None)
    start = resumed_step(summary)
    resumed = (
        f" This run resumed from checkpoint-{start}, which had already finished the {summary.settings.max_steps} "
        "planned steps; the weights are that training's."
        if start is not None and start >= summary.settings.max_steps
        else ""
    )
    if kept is None:
        step = summary.kept_step if summary.kept_step is not None else summary.global_step
        return f"The weights are those of the last training step ({step}); checkpoints were not graded during training.{resumed}"
    steps = ", ".join(str(row["step"]) for row in summary.graded_steps)
    loss = kept.get("eval_loss")
    return (
        f"The weights are those of step {summary.kept_step} of {last_step(summary)}: at each evaluation (steps {steps}) "
        f"the model answered the same {summary.graded_questions} validation questions, and this checkpoint's answers "
        f"graded best, with format compliance {percent_text(kept['format_compliance'])} and ROUGE-L (response) "
        f"{score_text(kept['rouge_l_response'])}{f', validation loss {score_text(loss)}' if loss is not None else ''}. "
        "Checkpoints are ranked by format compliance first and ROUGE-L second, not by validation loss: an answer that "
        "does not close its tags has no usable response, and validation loss can be lowest before the format is "
        f"learned.{resumed}"
    )


def graded_steps_markdown(summary: TrainingSummary) -> str:
    """The grades of every evaluation during training, the kept step marked: how the format was learned."""
    rows = []
    for row in summary.graded_steps:
        step = f"**{row['step']}** (kept)" if row["step"] == summary.kept_step else str(row["step"])
        rows.append(
            [
                step,
                score_text(row.get("eval_loss")),
                percent_text(row["format_compliance"]),
                score_text(row["rouge_l_response"]),
                percent_text(row["truncation_rate"]),
            ]
        )
    table = markdown_table(["Step", "Validation loss", "Well-formed", "ROUGE-L (response)", "Cut off"], rows)
    # markdown_table escapes cells; the kept step's bold is ours, not text to show as written.
    return table.replace("\\*\\*", "**")


def run_facts(summary: TrainingSummary) -> dict[str, Any]:
    """What ran, for the page's `training` table: every value a fact of this run (none of them charted)."""
    return {
        "profile": summary.profile,
        "backend": summary.backend,
        "base weights": summary.base_weights,
        "hardware": summary.hardware,
        "processes": summary.processes,
        "rows a step (global batch)": summary.global_batch_rows,
        "steps": steps_text(summary),
        "training rows": summary.train_rows,
        "validation rows": summary.validation_rows,
        "tokens seen": summary.tokens_seen,
        "final learning rate": summary.learning_rate_final,
        "wall time": duration_text(summary.wall_time_seconds),
        "graded questions": summary.graded_questions,
        "checkpoint kept by": summary.kept_by,
    }


def informative_columns(
    rows: Sequence[dict], columns: dict[str, str], keep: Sequence[str] = ("step",)
) -> tuple[dict[str, str], dict[str, Any]]:
    """The columns that say something: one that is empty in every row is left out, and one that holds the same
    value in every row (of two or more) is left out and returned as a constant, to be stated once."""
    kept, constants = {}, {}
    for name, kind in columns.items():
        values = [row.get(name) for row in rows]
        if name in keep:
            kept[name] = kind
        elif all(value is None for value in values):
            continue
        elif len(rows) > 1 and len(set(map(repr, values))) == 1:
            constants[name] = values[0]
        else:
            kept[name] = kind
    return kept, constants


def _cell(name: str, value: Any) -> Any:
    if value is None or isinstance(value, (bool, int)):
        return value
    if name == "learning_rate":
        # Text in scientific notation: the UI writes 2.7e-05 as 0.00002727272727272727.
        return f"{value:.3e}"
    return rounded(float(value))


def step_table(rows: Sequence[dict], columns: dict[str, str]) -> tuple[Table | None, dict[str, Any]]:
    kept, constants = informative_columns(rows, columns)
    if len(kept) <= 1:  # only the step: nothing to tabulate
        return None, constants
    records = [{name: _cell(name, row.get(name)) for name in kept} for row in rows]
    return Table(columns=tuple(kept.items()), records=records), constants


def evaluations_table(summary: TrainingSummary) -> Table | None:
    """One row per evaluation: eval loss and, where answers were graded, their grades, the kept step marked."""
    if summary.graded_steps:
        rows = [{**row, "kept": row["step"] == summary.kept_step} for row in summary.graded_steps]
        columns = GRADE_COLUMNS
    else:
        rows, columns = summary.eval_losses, {"step": "int", "eval_loss": "float"}
    if not rows:
        return None
    return Table(columns=tuple(columns.items()), records=[{name: _cell(name, row.get(name)) for name in columns} for row in rows])


def lora_adapter_page(summary: TrainingSummary, loss_curve_png: Path | None = None) -> dict[str, Entry]:
    """lora_adapter's metadata, in the order a reader wants it: the curve, what ran, the numbers worth a chart
    across runs (the Plots tab draws every number, so only those are numbers), then the tables."""
    kept = next((row for row in summary.graded_steps if row["step"] == summary.kept_step), {})
    losses, loss_constants = step_table(summary.loss_per_step, LOSS_COLUMNS)
    speeds, speed_constants = step_table(summary.loss_per_step, SPEED_COLUMNS)
    facts = run_facts(summary)
    for name, value in {**loss_constants, **speed_constants}.items():
        facts[f"{name.replace('_', ' ')} (every step)"] = value
    entries: dict[str, Any] = {
        "loss_curve": Markdown(loss_chart_markdown(loss_series(summary))),
        "training": Markdown(key_value_table({label: value for label, value in facts.items() if value is not None})),
        "train_loss_final": rounded(summary.train_loss_final),
        "eval_loss_final": rounded(summary.eval_loss_final),
        "global_step": summary.global_step,
        "kept_step": summary.kept_step,
        # Short keys: the longest key sets the width of the page's key column, and with it how much the values get.
        "kept_compliance": rounded(kept.get("format_compliance")),
        "kept_rouge_l": rounded(kept.get("rouge_l_response")),
        "tokens_per_second": rounded(summary.tokens_per_second),
        "training_seconds": rounded(summary.training_seconds),
        "peak_gpu_memory_gib": rounded(summary.peak_gpu_memory_gib),
        ("graded_steps" if summary.graded_steps else "eval_losses"): evaluations_table(summary),
        "loss_per_step": losses,
        "speed_per_step": speeds,
        "loss_curve_png": Markdown(markdown_image(loss_curve_png)) if loss_curve_png and Path(loss_curve_png).exists() else None,
        "versions": Json(summary.versions),
        "resumed_from": FilePath(summary.resumed_from) if summary.resumed_from else None,
    }
    if summary.wandb is not None:
        entries["wandb_run"] = Link(summary.wandb.url) if summary.wandb.url else FilePath(summary.wandb.dir)
    return without_empty(entries)
