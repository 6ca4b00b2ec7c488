"""Evaluation stage: answers from the fine-tuned and the base model, graded with ROUGE-L."""

import dagster as dg

from medcot_pipeline.artifact_store import ArtifactError
from medcot_pipeline.contracts import SAMPLES_FILE, ContractError, EvaluationReport, MergeRecord, TrainingSummary
from medcot_pipeline.data.schema import read_split
from medcot_pipeline.defs.metadata import metadata_values
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
    return dg.Output(str(out_dir), metadata=rouge_report_metadata(report, out_dir, merged_model, artifacts, context.log))


def rouge_report_metadata(report: EvaluationReport, out_dir, merged_model: str, artifacts: ArtifactStore, log) -> dict:
    """The page (presentation/report.py): the gate's verdict, the loss curve of the training behind the graded
    model (followed through merge.json to its training summary), the best and worst answer, then the rest. The
    verdict goes to the run's log too, where a disabled gate would otherwise read as a passed check."""
    from medcot_pipeline.presentation.report import rouge_report_page
    from medcot_pipeline.presentation.verdict import verdict_line
    from medcot_pipeline.release.gate import decide

    try:
        adapter = artifacts.store().local_copy(MergeRecord.read(merged_model).adapter_dir)
        training = TrainingSummary.read(adapter)
    except (ContractError, ArtifactError):
        training = None  # a merged model from before merge.json named its adapter: the page goes without the curve
    decision = decide(report)
    log.info(verdict_line(decision))
    page = rouge_report_page(report, decision, out_dir / SAMPLES_FILE, training)
    return {**metadata_values(page), "path": dg.MetadataValue.path(str(out_dir))}
