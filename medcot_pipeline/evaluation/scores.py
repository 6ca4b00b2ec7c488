"""The metrics a report holds: what each is called, which way is better, how the Hub's model-index names it,
and the one table that shows base against fine-tuned (asset metadata and the model card both use it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from medcot_pipeline.contracts import EvaluationReport, ModelScores


@dataclass(frozen=True)
class Metric:
    key: str  # the ModelScores field
    label: str
    higher_is_better: bool
    model_index_type: Optional[str] = None  # None: shown in tables, not published as a model-index result
    model_index_name: Optional[str] = None
    percent: bool = False


METRICS = (
    Metric("rouge_l_response", "ROUGE-L F1, `<response>` only", True, "rouge", "ROUGE-L F1 (response)"),
    Metric("rouge_l_full", "ROUGE-L F1, whole output", True, "rouge", "ROUGE-L F1 (think + response)"),
    Metric("format_compliance", "Well-formed `<think>`/`<response>` output", True, "format_compliance", "Format compliance", percent=True),
    Metric("truncation_rate", "Cut off before `</response>`", False, "truncation_rate", "Truncation rate", percent=True),
    Metric("mc_accuracy", "Multiple-choice accuracy (option log-likelihood)", True, "accuracy", "Multiple-choice accuracy", percent=True),
    Metric("mean_output_tokens", "Mean answer length (tokens)", False),
)


def format_value(metric: Metric, value: Optional[float]) -> str:
    if value is None:
        return "n/a"
    if metric.percent:
        return f"{value:.1%}"
    if isinstance(value, float):
        # Scores in [0, 1] to three places; counts such as the mean answer length to one.
        return f"{value:.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def _value(scores: Optional[ModelScores], key: str) -> Optional[float]:
    return None if scores is None else getattr(scores, key)


def comparison_rows(report: EvaluationReport) -> list[dict[str, str]]:
    """One row a measured metric: its label, which way is better, base and fine-tuned, and the change."""
    rows = []
    for metric in METRICS:
        base, tuned = _value(report.base, metric.key), _value(report.fine_tuned, metric.key)
        if base is None and tuned is None:
            continue
        label = metric.label
        if metric.key == "mc_accuracy":
            label += f" (n={report.fine_tuned.mc_n})"
        rows.append({
            "metric": label,
            "better": "higher" if metric.higher_is_better else "lower",
            "base": format_value(metric, base),
            "fine-tuned": format_value(metric, tuned),
            "change": "" if base is None or tuned is None else format_delta(metric, tuned - base),
        })
    return rows


def comparison_table(report: EvaluationReport) -> str:
    """Markdown: one row a metric, base and fine-tuned side by side, the difference, and which way is better."""
    lines = ["| metric | better | base | fine-tuned | change |", "|---|---|---|---|---|"]
    for row in comparison_rows(report):
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in row.values()) + " |")
    return "\n".join(lines)


def format_delta(metric: Metric, delta: float) -> str:
    text = f"{delta * 100:+.1f} pts" if metric.percent else f"{delta:+.3f}"
    improved = delta > 0 if metric.higher_is_better else delta < 0
    return f"{text} {'(better)' if improved else '(worse)' if delta else ''}".strip()
