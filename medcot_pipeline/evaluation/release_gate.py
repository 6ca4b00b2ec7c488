"""The release gate's decision, from the evidence: the paired intervals of fine-tuned minus base, not the point
estimates. The `release_gate` asset check applies it before hub_release; the release page and the model card
show the same decision.

Criteria, each off when its setting is null (settings.EvaluationSettings, gate_*):
- ROUGE-L (response): the lower end of the 95% interval of the gain is at least `gate_rouge_l_lower_bound`
  (0: the data must show an improvement);
- each benchmark's accuracy: the lower end of the interval of the change is at least `gate_accuracy_lower_bound`
  (-0.05: the data must rule out a loss of more than 5 points);
- the fine-tuned model's format compliance is at least `gate_format_compliance_floor`, and its cut-off rate
  at most `gate_truncation_rate_ceiling` (levels, not differences: the base model is not trained on the tags).

A criterion that could not be measured (no base model to compare with, no benchmark answered) fails: the gate
passes on evidence, not on its absence. With `gate_enabled: false` the decision is "disabled": it blocks
nothing, and still says what it would have decided.
"""

from __future__ import annotations

from medcot_pipeline.contracts import BenchmarkReport, EvaluationReport, GateCriterion, GateDecision, PairedComparison


def decide(report: EvaluationReport, benchmarks: BenchmarkReport | None = None) -> GateDecision:
    settings = report.settings
    criteria: list[GateCriterion] = []
    held_out = {comparison.metric: comparison for comparison in report.comparisons}

    if settings.gate_rouge_l_lower_bound is not None:
        criteria.append(
            _interval_criterion(
                "ROUGE-L (response) gain, lower end of its 95% interval",
                held_out.get("rouge_l_response"),
                settings.gate_rouge_l_lower_bound,
                missing="needs the base model's answers (compare_with_base)",
            )
        )
    if settings.gate_accuracy_lower_bound is not None:
        comparisons = [c for c in (benchmarks.comparisons if benchmarks else []) if c.metric.startswith("accuracy:")]
        if not comparisons:
            missing = "no benchmark answered by both models (benchmark_report)" if benchmarks else "benchmark_report was not read"
            criteria.append(
                _interval_criterion(
                    "benchmark accuracy change, lower end of its 95% interval", None, settings.gate_accuracy_lower_bound, missing=missing
                )
            )
        for comparison in comparisons:
            criteria.append(
                _interval_criterion(
                    f"{comparison.label} change, lower end of its 95% interval",
                    comparison,
                    settings.gate_accuracy_lower_bound,
                    missing="",
                )
            )
    if settings.gate_format_compliance_floor is not None:
        criteria.append(
            _level_criterion(
                "format compliance (fine-tuned)", report.fine_tuned.format_compliance, ">=", settings.gate_format_compliance_floor
            )
        )
    if settings.gate_truncation_rate_ceiling is not None:
        criteria.append(
            _level_criterion("cut-off rate (fine-tuned)", report.fine_tuned.truncation_rate, "<=", settings.gate_truncation_rate_ceiling)
        )

    failed = [criterion for criterion in criteria if not criterion.passed]
    reasons = [_reason(criterion) for criterion in failed]
    if not settings.gate_enabled:
        would = f"it would have failed on {len(failed)} of {len(criteria)} criteria" if failed else "it would have passed"
        return GateDecision(
            status="disabled", criteria=criteria, reasons=[f"the gate is off (gate_enabled: false) and blocks nothing; {would}", *reasons]
        )
    return GateDecision(status="failed" if failed else "passed", criteria=criteria, reasons=reasons)


def _level_criterion(name: str, value: float, direction: str, threshold: float) -> GateCriterion:
    passed = value >= threshold if direction == ">=" else value <= threshold
    return GateCriterion(name=name, threshold=threshold, direction=direction, value=value, passed=passed)


def _interval_criterion(name: str, comparison: PairedComparison | None, threshold: float, missing: str) -> GateCriterion:
    if comparison is None:
        return GateCriterion(name=name, threshold=threshold, direction=">=", value=None, passed=False, note=f"not measured: {missing}")
    return GateCriterion(
        name=name,
        threshold=threshold,
        direction=">=",
        value=comparison.low,
        passed=comparison.low >= threshold,
        note=f"change {comparison.difference:+.3f}, 95% interval {comparison.low:+.3f} to {comparison.high:+.3f} (n={comparison.n}): {comparison.verdict}",
    )


def _reason(criterion: GateCriterion) -> str:
    if criterion.value is None:
        return f"{criterion.name}: {criterion.note}"
    return f"{criterion.name}: {criterion.value:.3f}, needs {criterion.direction} {criterion.threshold:.3f}"
