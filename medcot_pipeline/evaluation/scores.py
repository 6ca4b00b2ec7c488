"""The metrics a report holds: what each is called, which way is better, how the Hub's model-index names it,
and the one table that shows base against fine-tuned (asset metadata and the model card both use it)."""

from __future__ import annotations

from dataclasses import dataclass

from medcot_pipeline.contracts import BenchmarkReport, EvaluationReport, GateDecision, ModelScores, PairedComparison


@dataclass(frozen=True)
class Metric:
    key: str  # the ModelScores field
    label: str
    higher_is_better: bool
    model_index_type: str | None = None  # None: shown in tables, not published as a model-index result
    model_index_name: str | None = None
    percent: bool = False


METRICS = (
    Metric("rouge_l_response", "ROUGE-L F1, `<response>` only", True, "rouge", "ROUGE-L F1 (response)"),
    Metric("rouge_l_full", "ROUGE-L F1, whole output", True, "rouge", "ROUGE-L F1 (think + response)"),
    Metric("format_compliance", "Well-formed `<think>`/`<response>` output", True, "format_compliance", "Format compliance", percent=True),
    Metric("truncation_rate", "Cut off before `</response>`", False, "truncation_rate", "Truncation rate", percent=True),
    Metric("mc_accuracy", "Multiple-choice accuracy (option log-likelihood)", True, "accuracy", "Multiple-choice accuracy", percent=True),
    Metric("mean_output_tokens", "Mean answer length (tokens)", False),
)


# Metrics scored right or wrong per question: their comparison also gets McNemar's exact test.
RIGHT_OR_WRONG = frozenset({"format_compliance", "truncation_rate", "mc_accuracy"})


def format_value(metric: Metric, value: float | None) -> str:
    if value is None:
        return "n/a"
    if metric.percent:
        return f"{value:.1%}"
    if isinstance(value, float):
        # Scores in [0, 1] to three places; counts such as the mean answer length to one.
        return f"{value:.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def _value(scores: ModelScores | None, key: str) -> float | None:
    return None if scores is None else getattr(scores, key)


def comparison_rows(report: EvaluationReport) -> list[dict[str, str]]:
    """One row a measured metric: its label, which way is better, base and fine-tuned, the change with its 95%
    paired interval, and what the interval says (better / no detectable change / worse)."""
    intervals = {comparison.metric: comparison for comparison in report.comparisons}
    rows = []
    for metric in METRICS:
        base, tuned = _value(report.base, metric.key), _value(report.fine_tuned, metric.key)
        if base is None and tuned is None:
            continue
        label = metric.label
        if metric.key == "mc_accuracy":
            label += f" (n={report.fine_tuned.mc_n})"
        interval = intervals.get(metric.key)
        rows.append(
            {
                "metric": label,
                "better": "higher" if metric.higher_is_better else "lower",
                "base": format_value(metric, base),
                "fine-tuned": format_value(metric, tuned),
                "change (95% interval)": "" if base is None or tuned is None else change_text(metric.percent, tuned - base, interval),
                "verdict": interval.verdict if interval else ("" if base is None else "no interval"),
            }
        )
    return rows


def markdown_table(rows: list[dict[str, str]]) -> str:
    """Rows of equal keys as a markdown table (the keys are the header)."""
    if not rows:
        return ""
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(str(row[key]).replace("|", "/") for key in header) + " |")
    return "\n".join(lines)


def comparison_table(report: EvaluationReport) -> str:
    """Markdown: one row a metric, base and fine-tuned side by side, the change with its interval, the verdict."""
    return markdown_table(comparison_rows(report))


def change_text(percent: bool, delta: float, interval: PairedComparison | None) -> str:
    """ "+4.2 pts [+1.0, +7.5]" or "+0.031 [+0.012, +0.050]": the change and, where measured, its 95% interval."""
    if percent:
        text = f"{delta * 100:+.1f} pts"
        return text + (f" [{interval.low * 100:+.1f}, {interval.high * 100:+.1f}]" if interval else "")
    return f"{delta:+.3f}" + (f" [{interval.low:+.3f}, {interval.high:+.3f}]" if interval else "")


def format_delta(metric: Metric, delta: float) -> str:
    text = f"{delta * 100:+.1f} pts" if metric.percent else f"{delta:+.3f}"
    improved = delta > 0 if metric.higher_is_better else delta < 0
    return f"{text} {'(better)' if improved else '(worse)' if delta else ''}".strip()


def benchmark_rows(report: BenchmarkReport) -> list[dict[str, str]]:
    """One row a benchmark: questions, accuracy of each model (the choice read from its answer), the change with its
    interval and verdict, McNemar's p, answers with no choice, and the option log-likelihood accuracy beside."""
    base = {scores.benchmark: scores for scores in report.base}
    intervals = {comparison.metric: comparison for comparison in report.comparisons}
    titles = {source.name: source.title for source in report.sources}
    rows = []
    for tuned in report.fine_tuned:
        other = base.get(tuned.benchmark)
        interval = intervals.get(f"accuracy:{tuned.benchmark}")
        rows.append(
            {
                "benchmark": titles.get(tuned.benchmark, tuned.benchmark),
                "n": str(tuned.n),
                "base": f"{other.accuracy:.1%}" if other else "n/a",
                "fine-tuned": f"{tuned.accuracy:.1%}",
                "change (95% interval)": change_text(True, tuned.accuracy - other.accuracy, interval) if other else "",
                "verdict": interval.verdict if interval else "",
                "McNemar p": f"{interval.mcnemar_p:.3g}" if interval and interval.mcnemar_p is not None else "",
                "no choice (base / fine-tuned)": f"{sum(other.no_choice.values()) if other else 'n/a'} / {sum(tuned.no_choice.values())}",
                "option log-likelihood (base / fine-tuned)": (
                    f"{other.loglikelihood_accuracy:.1%} / {tuned.loglikelihood_accuracy:.1%}"
                    if other and other.loglikelihood_accuracy is not None
                    else f"n/a / {tuned.loglikelihood_accuracy:.1%}"
                    if tuned.loglikelihood_accuracy is not None
                    else ""
                ),
            }
        )
    return rows


def gate_rows(decision: GateDecision) -> list[dict[str, str]]:
    """One row a criterion of the release gate: what it needs, what was measured, and whether it passed."""
    return [
        {
            "criterion": criterion.name,
            "needs": f"{criterion.direction} {criterion.threshold:.3f}",
            "measured": "not measured" if criterion.value is None else f"{criterion.value:.3f}",
            "result": ("pass" if criterion.passed else "FAIL") + (" (gate off)" if decision.status == "disabled" else ""),
            "detail": criterion.note,
        }
        for criterion in decision.criteria
    ]


def gate_headline(decision: GateDecision) -> str:
    """One line: the decision first, so that a disabled gate never reads as a pass."""
    if decision.status == "disabled":
        return "Release gate: DISABLED (blocks nothing). " + "; ".join(decision.reasons)
    if decision.status == "failed":
        return "Release gate: FAILED. " + "; ".join(decision.reasons)
    return f"Release gate: PASSED ({len(decision.criteria)} criteria)."
