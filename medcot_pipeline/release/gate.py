"""The release gate's decision from a report: the rules the `release_gate` check applies, as a `GateDecision` that
the check, the asset pages and the model card all state the same way.

The thresholds are the report's own settings (the run that made it), so a tolerance changed in the launchpad is
the tolerance applied.
"""

from __future__ import annotations

from medcot_pipeline.contracts import EvaluationReport, GateCriterion, GateDecision


def decide(report: EvaluationReport) -> GateDecision:
    """Fine-tuned format compliance at least the floor; fine-tuned ROUGE-L (response) not below the base's minus
    the tolerance (when the base was measured). ROUGE-L and compliance lie in [0, 1], so a floor of 0 with a
    tolerance of 1 cannot fail: such a gate is `disabled`, not `passed`."""
    settings, tuned = report.settings, report.fine_tuned
    floor, tolerance = settings.format_compliance_floor, settings.rouge_tolerance
    criteria = [GateCriterion(
        name="format compliance (fine-tuned)", rule="at least", threshold=floor, value=tuned.format_compliance,
        passed=tuned.format_compliance >= floor, percent=True,
    )]
    reasons = []
    if report.base is not None:
        threshold = report.base.rouge_l_response - tolerance
        criteria.append(GateCriterion(
            name="ROUGE-L, response (fine-tuned)", rule=f"at least the base's {report.base.rouge_l_response:.3f} - {tolerance:g}",
            threshold=threshold, value=tuned.rouge_l_response, passed=tuned.rouge_l_response >= threshold,
        ))
    else:
        reasons.append("the base model was not evaluated, so ROUGE-L was not compared with it")
    if floor <= 0 and tolerance >= 1:
        status = "disabled"
        reasons.insert(0, f"the profile sets format_compliance_floor {floor:g} and rouge_tolerance {tolerance:g}, "
                          "which no score can fail, so nothing was judged")
    else:
        status = "passed" if all(c.passed for c in criteria) else "failed"
        reasons[:0] = [f"{c.name} {'meets' if c.passed else 'misses'} its threshold" for c in criteria]
    return GateDecision(status=status, criteria=criteria, reasons=reasons)
