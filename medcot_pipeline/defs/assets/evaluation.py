"""Evaluation stage: answers from the fine-tuned and the base model, graded with ROUGE-L."""

import dagster as dg

from medcot_pipeline.contracts import SAMPLES_FILE
from medcot_pipeline.data.schema import read_split
from medcot_pipeline.defs.metadata import answers_side_by_side, answers_table, comparison, rounded, summary_table
from medcot_pipeline.defs.resources import ArtifactStore, BaseModelResource
from medcot_pipeline.defs.stages import EvaluationConfig, current_code_version, stage_asset


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
