"""Evaluation stage: the fine-tuned and the base model answer the held-out questions (rouge_report) and the
standard benchmarks (benchmark_report); every difference comes with its paired interval."""

from typing import Any

import dagster as dg

from medcot_pipeline.contracts import SAMPLES_FILE
from medcot_pipeline.data.schema import read_split
from medcot_pipeline.defs.metadata import answers_side_by_side, answers_table, comparison, rounded, string_table, summary_table
from medcot_pipeline.defs.resources import ArtifactStore, BaseModelResource
from medcot_pipeline.defs.stages import BenchmarkEvaluationConfig, EvaluationConfig, current_code_version, stage_asset


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
            merged_model, base_ref, validation, config, staging, log=context.log, code_version=current_code_version(context),
            merged_model_location=artifacts.location_of(merged_model),
        )
    out_dir = artifacts.version_dir("rouge_report", context.run_id)
    tuned, base = report.fine_tuned, report.base
    samples = out_dir / SAMPLES_FILE
    metadata = {
        # What a reader looks for first: the scores side by side, then the answers beside the reference.
        "comparison": comparison(report),
        "answers_side_by_side": answers_side_by_side(samples),
        "answers": answers_table(samples),
        # The numbers worth a chart across runs (the Plots tab draws every numeric entry).
        "rouge_l_response": rounded(tuned.rouge_l_response),
        "format_compliance": rounded(tuned.format_compliance),
        "generation_tokens_per_second": rounded(tuned.tokens_per_second),
    }
    if base is not None:
        metadata["base_rouge_l_response"] = rounded(base.rouge_l_response)
    settings = report.settings  # as the run was configured (the launchpad may have changed the profile's values)
    metadata["evaluation"] = summary_table({
        "questions": report.n,
        "decoding": "sampled" if settings.do_sample else "greedy",
        "max_new_tokens (+ continuation)": f"{settings.max_new_tokens} (+ {settings.continuation_tokens})",
        "batch size": settings.batch_size,
        "attention, KV cache": f"{settings.attention}, {settings.kv_cache}",
        "fine-tuned: generation seconds": tuned.wall_seconds,
        **({"base: generation seconds": base.wall_seconds} if base is not None else {}),
    })
    metadata["path"] = dg.MetadataValue.path(str(out_dir))
    return dg.Output(str(out_dir), metadata=metadata)


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
            merged_model, base_ref, questions, sources, config, staging, log=context.log,
            code_version=current_code_version(context), merged_model_location=artifacts.location_of(merged_model),
        )
    out_dir = artifacts.version_dir("benchmark_report", context.run_id)
    metadata: dict[str, Any] = {}
    if report.stand_in:
        # First on the page: these numbers are not a benchmark result.
        metadata["not_a_benchmark"] = f"These questions are the stand-in sample, not MedQA, MedMCQA or PubMedQA: {SAMPLE_TITLE}."
    metadata["accuracy"] = string_table(benchmark_rows(report))
    for scores in report.fine_tuned:
        metadata[f"accuracy_{scores.benchmark}"] = rounded(scores.accuracy)
    metadata["evaluation"] = summary_table({
        "questions per model": report.questions,
        "answer budget (new tokens)": f"{config.max_new_tokens} (+ {config.continuation_tokens}); a cut-off answer counts as wrong",
        "decoding": "sampled" if config.do_sample else "greedy",
        "attention, KV cache": f"{config.attention}, {config.kv_cache}",
        **{f"{label}: generated tokens/s": round(totals.tokens_per_second) for label, totals in report.generation.items()},
        "wall seconds (both models, loading and compiling included)": round(report.wall_seconds, 1),
    })
    metadata["answers_file"] = dg.MetadataValue.path(str(out_dir / BENCHMARK_ANSWERS_FILE))
    metadata["path"] = dg.MetadataValue.path(str(out_dir))
    return dg.Output(str(out_dir), metadata=metadata)
