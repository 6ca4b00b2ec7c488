"""Checks beside the assets they judge. Blocking ones stop everything downstream when they fail."""

import dagster as dg
import pandas as pd

from medcot_pipeline import raw_parquet
from medcot_pipeline.assets.data import read_split
from medcot_pipeline.assets.evaluation import load_report
from medcot_pipeline.dataset_sources import REQUIRED_COLUMNS
from medcot_pipeline.profiles import Profile
from medcot_pipeline.tagged_output import parse_tagged_output


def build_asset_checks(profile: Profile) -> list[dg.AssetChecksDefinition]:
    formatting = profile.asset_config("formatted_splits")
    evaluation = profile.asset_config("rouge_report")

    @dg.asset_check(asset="raw_dataset", blocking=True, description="Question, Complex_CoT and Response columns exist.")
    def raw_dataset_has_required_columns(raw_dataset: str) -> dg.AssetCheckResult:
        columns = list(raw_parquet.read_raw_parquet(raw_dataset).columns)
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
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
        description="Every target has exactly one balanced <think> block followed by one <response> block.",
    )
    def targets_are_well_formed(formatted_splits: str) -> dg.AssetCheckResult:
        frames = pd.concat([read_split(formatted_splits, "train"), read_split(formatted_splits, "validation")])
        bad = [i for i, target in enumerate(frames["target"]) if not parse_tagged_output(target).compliant]
        return dg.AssetCheckResult(
            passed=not bad, metadata={"targets": len(frames), "malformed": len(bad), "first_malformed_rows": str(bad[:10])}
        )

    @dg.asset_check(
        asset="formatted_splits",
        description=f"Share of input rows dropped by cleaning and length limits stays under {formatting.max_dropped_share:.0%}.",
    )
    def dropped_share_is_small(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        event = context.instance.get_latest_materialization_event(dg.AssetKey("formatted_splits"))
        metadata = event.asset_materialization.metadata if event else {}
        share = metadata["dropped_share"].value if "dropped_share" in metadata else 0.0
        return dg.AssetCheckResult(
            passed=share <= formatting.max_dropped_share,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"dropped_share": share, "threshold": formatting.max_dropped_share,
                      "dropped_rows": metadata["dropped_rows"].value if "dropped_rows" in metadata else 0},
        )

    @dg.asset_check(asset="formatted_splits", description="The validation split has the configured size (or the stated small-data cap).")
    def validation_size_as_configured(context: dg.AssetCheckExecutionContext, formatted_splits: str) -> dg.AssetCheckResult:
        actual = len(read_split(formatted_splits, "validation"))
        event = context.instance.get_latest_materialization_event(dg.AssetKey("formatted_splits"))
        metadata = event.asset_materialization.metadata if event else {}
        note = metadata["validation_size_note"].value if "validation_size_note" in metadata else ""
        # A smaller split is acceptable only when the asset stated why (small data).
        passed = actual == formatting.validation_size or note.startswith("capped")
        return dg.AssetCheckResult(
            passed=passed, severity=dg.AssetCheckSeverity.WARN,
            metadata={"requested": formatting.validation_size, "actual": actual, "note": note or "none"},
        )

    @dg.asset_check(
        asset="rouge_report", blocking=True,
        description="Release gate: fine-tuned ROUGE-L not below base beyond the tolerance, format compliance above the floor.",
    )
    def release_gate(rouge_report: str) -> dg.AssetCheckResult:
        report = load_report(rouge_report)
        tuned, base = report.get("fine_tuned", {}), report.get("base") or {}
        tuned_rouge = tuned.get("rouge_l_response", 0.0)
        base_rouge = base.get("rouge_l_response")
        compliance = tuned.get("format_compliance", 0.0)
        rouge_ok = base_rouge is None or tuned_rouge >= base_rouge - evaluation.rouge_tolerance
        compliance_ok = compliance >= evaluation.format_compliance_floor
        return dg.AssetCheckResult(
            passed=rouge_ok and compliance_ok,
            metadata={
                "fine_tuned_rouge_l": tuned_rouge,
                "base_rouge_l": base_rouge if base_rouge is not None else "not measured",
                "rouge_tolerance": evaluation.rouge_tolerance,
                "format_compliance": compliance,
                "format_compliance_floor": evaluation.format_compliance_floor,
                "rouge_ok": rouge_ok,
                "compliance_ok": compliance_ok,
            },
        )

    return [
        raw_dataset_has_required_columns,
        no_train_validation_overlap,
        targets_are_well_formed,
        dropped_share_is_small,
        validation_size_as_configured,
        release_gate,
    ]
