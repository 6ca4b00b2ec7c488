"""Checks beside the assets they judge. Blocking ones stop everything downstream when they fail.

Thresholds come from the artifact being judged, which records the settings of the run that made it:
a tolerance changed in the launchpad is the tolerance the gate applies.
"""

import re
from typing import Any

import dagster as dg
import pandas as pd

from medcot_pipeline.contracts import BenchmarkQuestions, BenchmarkReport, EvaluationReport, SplitsSummary
from medcot_pipeline.data import benchmarks, decontamination, raw_parquet
from medcot_pipeline.data.schema import RAW_COLUMNS, read_split
from medcot_pipeline.data.text_comparison import comparison_key
from medcot_pipeline.evaluation.release_gate import decide
from medcot_pipeline.evaluation.scores import gate_headline, gate_rows, markdown_table
from medcot_pipeline.tagged_output import parse_tagged_output


@dg.asset_check(asset="raw_dataset", blocking=True, description="Question, Complex_CoT and Response columns exist.")
def raw_dataset_has_required_columns(raw_dataset: str) -> dg.AssetCheckResult:
    columns = list(raw_parquet.read_raw_parquet(raw_parquet.records_path(raw_dataset)).columns)
    missing = [c for c in RAW_COLUMNS if c not in columns]
    return dg.AssetCheckResult(
        passed=not missing, metadata={"missing": ", ".join(missing) or "none", "columns": ", ".join(map(str, columns))}
    )


@dg.asset_check(
    asset="formatted_splits",
    blocking=True,
    description="No question is in both train and validation, however its case, whitespace or Unicode form differs.",
)
def no_train_validation_overlap(formatted_splits: str) -> dg.AssetCheckResult:
    train, validation = read_split(formatted_splits, "train"), read_split(formatted_splits, "validation")
    overlap = set(map(comparison_key, train["question"])) & set(map(comparison_key, validation["question"]))
    return dg.AssetCheckResult(
        passed=not overlap,
        metadata={"overlapping_questions": len(overlap), "train_rows": len(train), "validation_rows": len(validation)},
    )


@dg.asset_check(
    asset="formatted_splits",
    blocking=True,
    description="Every target has exactly one balanced `<think>` block followed by one `<response>` block.",
)
def targets_are_well_formed(formatted_splits: str) -> dg.AssetCheckResult:
    frames = pd.concat([read_split(formatted_splits, "train"), read_split(formatted_splits, "validation")])
    bad = [i for i, target in enumerate(frames["target"]) if not parse_tagged_output(target).compliant]
    return dg.AssetCheckResult(
        passed=not bad, metadata={"targets": len(frames), "malformed": len(bad), "first_malformed_rows": str(bad[:10])}
    )


@dg.asset_check(
    asset="formatted_splits", description="The share of input rows dropped by cleaning and length limits stays under max_dropped_share."
)
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
        passed=passed,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"requested": requested, "actual": summary.validation_rows, "note": note or "none"},
    )


@dg.asset_check(
    asset="formatted_splits",
    blocking=True,
    additional_ins={"benchmark_questions": dg.AssetIn("benchmark_questions")},
    description="No training record shares a 13-word run with a held-out record or a benchmark question "
    "(GPT-3 / OLMo decontamination; case, Unicode and spacing ignored).",
)
def training_data_is_decontaminated(formatted_splits: str, benchmark_questions: str) -> dg.AssetCheckResult:
    train, validation = read_split(formatted_splits, "train"), read_split(formatted_splits, "validation")
    references = decontamination.split_references(validation, benchmarks.read_questions(benchmark_questions))
    found = decontamination.decontaminate(decontamination.training_fields(train), references)
    summary = SplitsSummary.read(formatted_splits)
    removed = summary.decontamination.removed_by_source if summary.decontamination else {}
    stand_in = BenchmarkQuestions.read(benchmark_questions).stand_in
    return dg.AssetCheckResult(
        passed=found.removed_rows == 0,
        metadata={
            "contaminated_training_records": found.removed_rows,
            "by_reference_set": dg.MetadataValue.json(found.removed_by_source),
            "removed_when_formatting": dg.MetadataValue.json(removed),
            "reference_texts": dg.MetadataValue.json(found.references),
            "boilerplate_ngrams_ignored": found.boilerplate_ngrams,
            "rule": f"{decontamination.NGRAM_WORDS}-word overlap; shorter references as a whole (at least "
            f"{decontamination.MIN_WORDS} words); n-grams in more than {decontamination.BOILERPLATE_DOCUMENTS} references ignored",
            **({"benchmarks": "the stand-in sample, not the real benchmarks"} if stand_in else {}),
        },
    )


@dg.asset_check(
    asset="benchmark_questions",
    description="Each benchmark was read at a pinned commit (a 40-hex revision in the profile), so a rerun evaluates the same questions.",
)
def benchmark_revisions_pinned(benchmark_questions: str) -> dg.AssetCheckResult:
    sources = BenchmarkQuestions.read(benchmark_questions).sources
    unpinned = [s.name for s in sources if not s.stand_in and not re.fullmatch(r"[0-9a-f]{40}", s.revision or "")]
    return dg.AssetCheckResult(
        passed=not unpinned,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "unpinned": ", ".join(unpinned) or "none",
            "read_at": dg.MetadataValue.json({s.name: s.commit or "bundled" for s in sources}),
            "fix": "copy each read_at commit into the profile's benchmark_questions <name>_revision" if unpinned else "",
        },
    )


@dg.asset_check(
    asset="rouge_report",
    blocking=True,
    additional_ins={"benchmark_report": dg.AssetIn("benchmark_report")},
    description="Release gate on evidence: the 95% paired intervals of fine-tuned minus base (ROUGE-L gain, each "
    "benchmark's accuracy change) and the fine-tuned model's compliance and cut-off rate, against the profile's gate_* "
    "settings (evaluation/release_gate.py).",
)
def release_gate(rouge_report: str, benchmark_report: str) -> dg.AssetCheckResult:
    report = EvaluationReport.read(rouge_report)
    benchmark = BenchmarkReport.read(benchmark_report)
    if benchmark.merged_model_dir != report.merged_model_dir:
        return dg.AssetCheckResult(
            passed=False,
            metadata={
                "decision": f"benchmark_report graded {benchmark.merged_model_dir}, rouge_report graded "
                f"{report.merged_model_dir}: materialize both again so the gate judges one model"
            },
        )
    decision = decide(report, benchmark)
    metadata: dict[str, Any] = {
        "decision": gate_headline(decision),
        "criteria": dg.MetadataValue.md(markdown_table(gate_rows(decision))),
        "status": decision.status,
    }
    if decision.status == "disabled":
        # Not a green pass: a warning that blocks nothing, saying what the gate would have decided.
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN, metadata=metadata)
    return dg.AssetCheckResult(passed=decision.status == "passed", metadata=metadata)


ASSET_CHECKS = [
    raw_dataset_has_required_columns,
    no_train_validation_overlap,
    targets_are_well_formed,
    dropped_share_is_small,
    validation_size_as_configured,
    training_data_is_decontaminated,
    benchmark_revisions_pinned,
    release_gate,
]
