"""The verdict a report page opens with: the release gate's decision (passed, failed or disabled, each threshold
against its value) and the key differences from the base model, short enough to show inline (under 1,000
characters). A disabled gate reads as disabled, never as a pass."""

from __future__ import annotations

from medcot_pipeline.contracts import EvaluationReport, GateCriterion, GateDecision
from medcot_pipeline.presentation.text import percent_text, score_text, table_cell

HEADLINES = {
    "passed": "✅ Release gate PASSED",
    "failed": "❌ Release gate FAILED: hub_release is blocked",
    "disabled": "⚪ Release gate DISABLED: nothing was judged, this is not a pass",
}
# The differences worth a line in the verdict, in this order (the full table is the page's `comparison`).
KEY_METRICS = {"rouge_l_response": "ROUGE-L (response)", "format_compliance": "well-formed answers",
               "truncation_rate": "cut off", "mc_accuracy": "multiple-choice accuracy"}


def criterion_value(criterion: GateCriterion, value) -> str:
    return percent_text(value) if criterion.percent else score_text(value)


def criteria_table(decision: GateDecision) -> str:
    """Each rule with its threshold and the value it judged; under a disabled gate, the column says not enforced."""
    enforced = decision.status != "disabled"
    lines = ["| criterion | rule | threshold | value | " + ("passed |" if enforced else "enforced |"), "|---|---|---|---|---|"]
    for c in decision.criteria:
        mark = ("✓" if c.passed else "✗") if enforced else "no"
        lines.append(f"| {table_cell(c.name)} | {table_cell(c.rule)} | {criterion_value(c, c.threshold)} | "
                     f"{criterion_value(c, c.value)} | {mark} |")
    return "\n".join(lines)


def differences_text(report: EvaluationReport) -> str:
    """A line per key metric, base against fine-tuned: `- ROUGE-L (response): 0.056 → 0.076 (+0.020, better)`."""
    from medcot_pipeline.evaluation.scores import METRICS, format_delta, format_value

    if report.base is None:
        return "The base model was not evaluated: no comparison."
    lines = [f"**Fine-tuned against the base model** (n = {report.n}):"]
    for metric in METRICS:
        if metric.key not in KEY_METRICS:
            continue
        base, tuned = getattr(report.base, metric.key), getattr(report.fine_tuned, metric.key)
        if base is None or tuned is None:
            continue
        change = format_delta(metric, tuned - base).replace(" (", ", ").rstrip(")")
        lines.append(f"- {KEY_METRICS[metric.key]}: {format_value(metric, base)} → {format_value(metric, tuned)} ({change})")
    return "\n".join(lines)


def verdict_markdown(decision: GateDecision, report: EvaluationReport) -> str:
    parts = [f"**{HEADLINES[decision.status]}**"]
    if decision.status == "disabled":
        parts.append(table_cell(decision.reasons[0]))
    parts += [criteria_table(decision), differences_text(report)]
    return "\n\n".join(parts)


def verdict_line(decision: GateDecision) -> str:
    """The decision in one line, for the run's log: `release gate FAILED: format compliance (fine-tuned) 50.0%,
    threshold 90.0% ✗; …`; a disabled gate says it judged nothing."""
    judged = "; ".join(
        f"{c.name} {criterion_value(c, c.value)}, threshold {criterion_value(c, c.threshold)}"
        + ("" if decision.status == "disabled" else " ✓" if c.passed else " ✗")
        for c in decision.criteria
    )
    if decision.status == "disabled":
        return f"release gate DISABLED: {decision.reasons[0]} ({judged})"
    return f"release gate {decision.status.upper()}: {judged}"
