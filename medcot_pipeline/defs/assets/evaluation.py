"""Evaluation stage: answers from the fine-tuned and the base model, graded with ROUGE-L."""

import json
from pathlib import Path

import dagster as dg

from medcot_pipeline.contracts import SAMPLES_FILE
from medcot_pipeline.data.schema import read_split
from medcot_pipeline.defs.resources import ArtifactStore, BaseModelResource
from medcot_pipeline.defs.stages import EvaluationConfig, current_code_version, stage_asset


def samples_table(samples_path: Path, limit: int = 3) -> str:
    rows = ["| model | question | response | ROUGE-L |", "|---|---|---|---|"]
    with open(samples_path) as handle:
        for line in list(handle)[: limit * 2]:
            sample = json.loads(line)
            cells = [sample.get("model", ""), sample.get("question", "")[:90], (sample.get("response") or "(none)")[:140]]
            cells = [str(c).replace("|", "/").replace("\n", " ") for c in cells]
            score = sample.get("rouge_l_response")
            rows.append(f"| {' | '.join(cells)} | {'n/a' if score is None else f'{score:.3f}'} |")
    return "\n".join(rows)


@stage_asset(kinds={"pytorch"})
def rouge_report(
    context: dg.AssetExecutionContext,
    config: EvaluationConfig,
    merged_model: str,
    formatted_splits: str,
    artifacts: ArtifactStore,
    base_model: BaseModelResource,
) -> dg.Output[str]:
    """ROUGE-L, format compliance and truncation for base vs fine-tuned on the validation split."""
    import os

    # torch.compile's caches under the artifacts root: a later run of this step (same model shapes) reuses the
    # compiled decode step instead of compiling it again.
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(artifacts.path("torch_compile_cache")))
    from medcot_pipeline.evaluation.report import write_rouge_report
    from medcot_pipeline.evaluation.scores import comparison_table

    validation = read_split(formatted_splits, "validation")
    base_ref = base_model.resolve(artifacts) if config.compare_with_base else None
    with artifacts.new_version("rouge_report", context.run_id) as staging:
        report = write_rouge_report(
            merged_model, base_ref, validation, config, staging, log=context.log, code_version=current_code_version(context)
        )
    out_dir = artifacts.version_dir("rouge_report", context.run_id)
    tuned, base = report.fine_tuned, report.base
    metadata = {
        "path": dg.MetadataValue.path(str(out_dir)),
        "questions": report.n,
        "rouge_l_response": tuned.rouge_l_response,
        "rouge_l_full": tuned.rouge_l_full,
        "format_compliance": tuned.format_compliance,
        "truncation_rate": tuned.truncation_rate,
        "comparison": dg.MetadataValue.md(comparison_table(report)),
        "samples": dg.MetadataValue.md(samples_table(out_dir / SAMPLES_FILE)),
        "generation_tokens_per_second": tuned.tokens_per_second,
    }
    if base is not None:
        metadata["base_rouge_l_response"] = base.rouge_l_response
        metadata["base_format_compliance"] = base.format_compliance
    return dg.Output(str(out_dir), metadata=metadata)
