"""Checks beside the assets they judge. Blocking ones stop everything downstream when they fail.

Thresholds come from the artifact being judged, which records the settings of the run that made it:
a tolerance changed in the launchpad is the tolerance the gate applies.
"""

import dagster as dg
import pandas as pd

from medcot_pipeline.contracts import EvaluationReport, SplitsSummary
from medcot_pipeline.data import raw_parquet
from medcot_pipeline.data.schema import RAW_COLUMNS, read_split
from medcot_pipeline.release.gate import decide
from medcot_pipeline.tagged_output import parse_tagged_output


@dg.asset_check(asset="raw_dataset", blocking=True, description="Question, Complex_CoT and Response columns exist.")
def raw_dataset_has_required_columns(raw_dataset: str) -> dg.AssetCheckResult:
    columns = list(raw_parquet.read_raw_parquet(raw_parquet.records_path(raw_dataset)).columns)
    missing = [c for c in RAW_COLUMNS if c not in columns]
    return dg.AssetCheckResult(
        passed=not missing, metadata={"missing": ", ".join(missing) or "none", "columns": ", ".join(map(str, columns))}
    )


@dg.asset_check(asset="formatted_splits", blocking=True, description="No question is in both train and validation.")
def no_train_validation_overlap(formatted_splits: str) -> dg.AssetCheckResult:
    train, validation = read_split(formatted_splits, "train"), read_split(formatted_splits, "validation")
    overlap = set(train["question"]) & set(validation["question"])
    return dg.AssetCheckResult(
        passed=not overlap,
        metadata={"overlapping_questions": len(overlap), "train_rows": len(train), "validation_rows": len(validation)},
    )


@dg.asset_check(
    asset="formatted_splits", blocking=True,
    description="Every target has exactly one balanced `<think>` block followed by one `<response>` block.",
)
def targets_are_well_formed(formatted_splits: str) -> dg.AssetCheckResult:
    frames = pd.concat([read_split(formatted_splits, "train"), read_split(formatted_splits, "validation")])
    bad = [i for i, target in enumerate(frames["target"]) if not parse_tagged_output(target).compliant]
    return dg.AssetCheckResult(
        passed=not bad, metadata={"targets": len(frames), "malformed": len(bad), "first_malformed_rows": str(bad[:10])}
    )


@dg.asset_check(asset="formatted_splits", description="The share of input rows dropped by cleaning and length limits stays under max_dropped_share.")
def dropped_share_is_small(formatted_splits: str) -> dg.AssetCheckResult:
    summary = SplitsSummary.read(formatted_splits)
    threshold = summary.settings.max_dropped_share
    return dg.AssetCheckResult(
        passed=summary.dropped_share <= threshold,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"dropped_share": summary.dropped_share, "threshold": threshold, "dropped_rows": summary.dropped_rows},
    )


@dg.asset_check(asset="formatted_splits", description="The validation split has the configured size (or the stated small-data cap).")
def validation_size_as_configured(formatted_splits: str) -> dg.AssetCheckResult:
    summary = SplitsSummary.read(formatted_splits)
    requested = summary.settings.validation_size
    note = summary.split.get("validation_size_reason", "")
    # A smaller split is acceptable only when the asset stated why (small data).
    passed = summary.validation_rows == requested or note.startswith("capped")
    return dg.AssetCheckResult(
        passed=passed, severity=dg.AssetCheckSeverity.WARN,
        metadata={"requested": requested, "actual": summary.validation_rows, "note": note or "none"},
    )


@dg.asset_check(
    asset="rouge_report", blocking=True,
    description="Release gate: fine-tuned ROUGE-L not below base beyond the tolerance, format compliance above the floor.",
)
def release_gate(rouge_report: str) -> dg.AssetCheckResult:
    report = EvaluationReport.read(rouge_report)
    tolerance, floor = report.settings.rouge_tolerance, report.settings.format_compliance_floor
    tuned_rouge = report.fine_tuned.rouge_l_response
    base_rouge = report.base.rouge_l_response if report.base is not None else None
    compliance = report.fine_tuned.format_compliance
    rouge_ok = base_rouge is None or tuned_rouge >= base_rouge - tolerance
    compliance_ok = compliance >= floor
    metadata = {
        "fine_tuned_rouge_l": round(tuned_rouge, 4),
        "base_rouge_l": round(base_rouge, 4) if base_rouge is not None else "not measured",
        "rouge_tolerance": tolerance,
        "format_compliance": round(compliance, 4),
        "format_compliance_floor": floor,
        "rouge_ok": rouge_ok,
        "compliance_ok": compliance_ok,
    }
    # ROUGE-L and compliance lie in [0, 1]: with these settings nothing can fail, and a green check must not read as a pass.
    if floor <= 0 and tolerance >= 1:
        metadata = {
            "gate": f"gate disabled by profile settings (format_compliance_floor {floor}, rouge_tolerance {tolerance}): "
            "it passes whatever the scores",
            **metadata,
        }
    # release/gate.py words the same decision on the rouge_report and hub_release pages and the card.
    return dg.AssetCheckResult(passed=not decide(report).blocks_release, metadata=metadata)


ASSET_CHECKS = [
    raw_dataset_has_required_columns,
    no_train_validation_overlap,
    targets_are_well_formed,
    dropped_share_is_small,
    validation_size_as_configured,
    release_gate,
]
