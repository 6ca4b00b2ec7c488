"""The verdict a report page opens with: the release gate's decision (passed, failed or disabled, each criterion
against its threshold) and the differences from the base model with their 95% paired intervals, short enough to
show inline (under 1,000 characters). A disabled gate reads as disabled, never as a pass.

The decision itself is evaluation/release_gate.py's; this module only words it, for the pages, the card and the
run's log alike.
"""

from __future__ import annotations

from medcot_pipeline.contracts import BenchmarkReport, EvaluationReport, GateCriterion, GateDecision, PairedComparison
from medcot_pipeline.presentation.text import percent_text, score_text, table_cell

HEADLINES = {
    "passed": "✅ Release gate PASSED",
    "failed": "❌ Release gate FAILED: hub_release is blocked",
    "disabled": "⚪ Release gate DISABLED: it blocks nothing, this is not a pass",
}
INLINE_LIMIT = 1000
SYMBOLS = {">=": "≥", "<=": "≤"}
# The differences worth a line in the verdict, in this order, then every benchmark (the full table is `comparison`).
KEY_METRICS = {
    "rouge_l_response": "ROUGE-L (response)",
    "format_compliance": "well-formed answers",
    "truncation_rate": "cut off",
    "mc_accuracy": "multiple-choice accuracy (log-likelihood)",
}


def _mark(decision: GateDecision, criterion: GateCriterion) -> str:
    if criterion.value is None:
        return "–"
    return ("✓" if criterion.passed else "✗") + (" (not enforced)" if decision.status == "disabled" else "")


def criterion_line(decision: GateDecision, criterion: GateCriterion) -> str:
    """`✗ format compliance (fine-tuned): 0.667, needs ≥ 0.900`, or what was not measured."""
    if criterion.value is None:
        return f"{_mark(decision, criterion)} {criterion.name}: {criterion.note or 'not measured'}"
    return (
        f"{_mark(decision, criterion)} {criterion.name}: {score_text(criterion.value)}, needs "
        f"{SYMBOLS.get(criterion.direction, criterion.direction)} {score_text(criterion.threshold)}"
    )


def _is_share(comparison: PairedComparison) -> bool:
    from medcot_pipeline.evaluation.scores import METRICS

    shares = {metric.key for metric in METRICS if metric.percent}
    return comparison.metric in shares or comparison.metric.startswith("accuracy:")


def difference_line(comparison: PairedComparison) -> str:
    """`ROUGE-L (response): 0.056 → 0.076, +0.020 [-0.010, +0.050]: no detectable change`."""
    from medcot_pipeline.evaluation.scores import change_text

    share = _is_share(comparison)
    value = percent_text if share else score_text
    label = KEY_METRICS.get(comparison.metric, comparison.label.replace("`", ""))
    return (
        f"{label}: {value(comparison.base)} → {value(comparison.fine_tuned)}, "
        f"{change_text(share, comparison.difference, comparison)}: {comparison.verdict}"
    )


def differences_lines(report: EvaluationReport, benchmarks: BenchmarkReport | None = None) -> list[str]:
    held_out = {comparison.metric: comparison for comparison in report.comparisons}
    ordered = [held_out[key] for key in KEY_METRICS if key in held_out]
    ordered += [c for c in (benchmarks.comparisons if benchmarks is not None else []) if c.metric.startswith("accuracy:")]
    return [difference_line(comparison) for comparison in ordered]


def verdict_markdown(
    decision: GateDecision, report: EvaluationReport, benchmarks: BenchmarkReport | None = None, limit: int = INLINE_LIMIT, note: str = ""
) -> str:
    """Headline, one line a criterion, then the key differences with their intervals; lines that would take it past
    `limit` are left to the page's `comparison` and `release_gate_criteria` entries, and it says so. `note` says
    what the decision covers where it is not the whole gate."""
    head = [f"**{HEADLINES[decision.status]}**" + (f" ({note})" if note else "")]
    if decision.status == "disabled" and decision.reasons:
        head.append(table_cell(decision.reasons[0]))
    criteria = [f"- {table_cell(criterion_line(decision, c))}" for c in decision.criteria]
    differences = differences_lines(report, benchmarks)
    tail = (
        [
            f"**Fine-tuned against the base model** (n = {report.n}, 95% paired intervals):",
            *(f"- {table_cell(line)}" for line in differences),
        ]
        if differences
        else ["The base model was not evaluated: no comparison."]
    )
    lines = head + criteria + tail
    text = "\n".join(lines)
    while len(text) >= limit and len(lines) > len(head) + 1:
        lines = lines[:-1]
        text = "\n".join(lines + ["- … (the rest in `comparison` and the gate's criteria)"])
    return text


def gate_markdown(decision: GateDecision | None) -> str:
    """The gate's section on the model card: the headline, every criterion in a table, and why."""
    from medcot_pipeline.evaluation.scores import gate_rows, markdown_table

    if decision is None:
        return "The release gate's decision was not recorded."
    reasons = "\n".join(f"- {reason}" for reason in decision.reasons)
    return "\n\n".join(part for part in (f"**{HEADLINES[decision.status]}**", markdown_table(gate_rows(decision)), reasons) if part)


def verdict_line(decision: GateDecision) -> str:
    """The decision in one line, for the run's log: `release gate FAILED: ✗ format compliance (fine-tuned): 0.667,
    needs ≥ 0.900; ✓ …`."""
    judged = "; ".join(criterion_line(decision, c) for c in decision.criteria)
    return f"release gate {decision.status.upper()}: {judged or 'no criterion is set'}"
