"""Evaluation stage: the fine-tuned and the base model answer the held-out questions (rouge_report) and the
standard benchmarks (benchmark_report); every difference comes with its paired interval."""

from typing import Any

import dagster as dg

from medcot_pipeline.artifact_store import ArtifactError
from medcot_pipeline.contracts import SAMPLES_FILE, ContractError, EvaluationReport, MergeRecord, TrainingSummary
from medcot_pipeline.data.schema import read_split
from medcot_pipeline.defs.metadata import metadata_values, string_table, summary_table
from medcot_pipeline.defs.resources import ArtifactStore, BaseModelResource
from medcot_pipeline.defs.stages import BenchmarkEvaluationConfig, EvaluationConfig, current_code_version, stage_asset
from medcot_pipeline.presentation.text import rounded


@stage_asset(kinds={"pytorch"})
def rouge_report(
    context: dg.AssetExecutionContext,
    config: EvaluationConfig,
    merged_model: str,
    formatted_splits: str,
    artifacts: ArtifactStore,
    base_model: BaseModelResource,
) -> dg.Output[str]:
    """ROUGE-L, format compliance and truncation for base vs fine-tuned on the validation split, with their answers side by side."""
    import os

    # torch.compile's caches under the artifacts root: a later run of this step (same model shapes) reuses the
    # compiled decode step instead of compiling it again.
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(artifacts.path("torch_compile_cache")))
    from medcot_pipeline.evaluation.report import write_rouge_report

    validation = read_split(formatted_splits, "validation")
    base_ref = base_model.resolve(artifacts) if config.compare_with_base else None
    with artifacts.new_version("rouge_report", context.run_id) as staging:
        report = write_rouge_report(
            merged_model,
            base_ref,
            validation,
            config,
            staging,
            log=context.log,
            code_version=current_code_version(context),
            merged_model_location=artifacts.location_of(merged_model),
        )
    out_dir = artifacts.version_dir("rouge_report", context.run_id)
    return dg.Output(str(out_dir), metadata=rouge_report_metadata(report, out_dir, merged_model, artifacts, context.log))


def rouge_report_metadata(report: EvaluationReport, out_dir, merged_model: str, artifacts: ArtifactStore, log) -> dict:
    """The page (presentation/report.py): the gate's verdict, the loss curve of the training behind the graded
    model (followed through merge.json to its training summary), the best and worst answer, then the rest. The
    verdict goes to the run's log too, where a disabled gate would otherwise read as a passed check."""
    from medcot_pipeline.evaluation.release_gate import decide
    from medcot_pipeline.presentation.report import rouge_report_page
    from medcot_pipeline.presentation.verdict import verdict_line

    try:
        adapter = artifacts.store().local_copy(MergeRecord.read(merged_model).adapter_dir)
        training = TrainingSummary.read(adapter)
    except (ContractError, ArtifactError):
        training = None  # a merged model from before merge.json named its adapter: the page goes without the curve
    # This page judges what this report holds; the benchmark criteria need benchmark_report, which the release_gate
    # check reads beside it (and hub_release's page shows the whole decision).
    held_out = report.model_copy(update={"settings": report.settings.model_copy(update={"gate_accuracy_lower_bound": None})})
    decision = decide(held_out)
    log.info(verdict_line(decision))
    page = rouge_report_page(report, decision, out_dir / SAMPLES_FILE, training)
    return {**metadata_values(page), "path": dg.MetadataValue.path(str(out_dir))}


@stage_asset(kinds={"pytorch"})
def benchmark_report(
    context: dg.AssetExecutionContext,
    config: BenchmarkEvaluationConfig,
    merged_model: str,
    benchmark_questions: str,
    artifacts: ArtifactStore,
    base_model: BaseModelResource,
) -> dg.Output[str]:
    """Accuracy on the standard benchmarks (or the offline stand-in sample), fine-tuned against base: each answer
    written in the model's own format, the choice read from it; the change per benchmark with its 95% interval."""
    import os

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(artifacts.path("torch_compile_cache")))
    from medcot_pipeline.contracts import BENCHMARK_ANSWERS_FILE, BenchmarkQuestions
    from medcot_pipeline.data.benchmarks import SAMPLE_TITLE, read_questions
    from medcot_pipeline.evaluation.benchmark_report import write_benchmark_report
    from medcot_pipeline.evaluation.scores import benchmark_rows

    questions = read_questions(benchmark_questions)
    sources = BenchmarkQuestions.read(benchmark_questions).sources
    base_ref = base_model.resolve(artifacts) if config.compare_with_base else None
    with artifacts.new_version("benchmark_report", context.run_id) as staging:
        report = write_benchmark_report(
            merged_model,
            base_ref,
            questions,
            sources,
            config,
            staging,
            log=context.log,
            code_version=current_code_version(context),
            merged_model_location=artifacts.location_of(merged_model),
        )
    out_dir = artifacts.version_dir("benchmark_report", context.run_id)
    metadata: dict[str, Any] = {}
    if report.stand_in:
        # First on the page: these numbers are not a benchmark result.
        metadata["not_a_benchmark"] = f"These questions are the stand-in sample, not MedQA, MedMCQA or PubMedQA: {SAMPLE_TITLE}."
    metadata["accuracy"] = string_table(benchmark_rows(report))
    for scores in report.fine_tuned:
        metadata[f"accuracy_{scores.benchmark}"] = rounded(scores.accuracy)
    metadata["evaluation"] = summary_table(
        {
            "questions per model": report.questions,
            "answer budget (new tokens)": f"{config.max_new_tokens} (+ {config.continuation_tokens}); a cut-off answer counts as wrong",
            "decoding": "sampled" if config.do_sample else "greedy",
            "attention, KV cache": f"{config.attention}, {config.kv_cache}",
            **{f"{label}: generated tokens/s": round(totals.tokens_per_second) for label, totals in report.generation.items()},
            "wall seconds (both models, loading and compiling included)": round(report.wall_seconds, 1),
        }
    )
    metadata["answers_file"] = dg.MetadataValue.path(str(out_dir / BENCHMARK_ANSWERS_FILE))
    metadata["path"] = dg.MetadataValue.path(str(out_dir))
    return dg.Output(str(out_dir), metadata=metadata)
