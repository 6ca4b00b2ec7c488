"""Release stage: a model card and the release folder, pushed to the Hub when HF_TOKEN is set."""

from pathlib import Path

import dagster as dg

from medcot_pipeline.artifact_store import ArtifactError
from medcot_pipeline.contracts import BenchmarkReport, EvaluationReport, MergeRecord, TrainingSummary
from medcot_pipeline.defs.metadata import metadata_values, model_card_markdown
from medcot_pipeline.defs.resources import ArtifactStore, HubResource, verified_inputs
from medcot_pipeline.defs.stages import ReleaseConfig, current_code_version, stage_asset


def check_lineage(
    report: EvaluationReport, merge: MergeRecord, merged_model: str, lora_adapter: str, benchmarks: BenchmarkReport | None = None
) -> None:
    """The reports graded this merged model, and this merged model holds this adapter; else say what to rerun."""
    # allow_retries=False: the same artifacts disagree the same way on a retry.
    for asset, graded in (
        ("rouge_report", report.merged_model_dir),
        ("benchmark_report", benchmarks.merged_model_dir if benchmarks else None),
    ):
        if graded is not None and Path(graded) != Path(merged_model):
            raise dg.Failure(
                f"{asset} graded {graded}, not the current merged_model {merged_model}: "
                f"materialize {asset} (and hub_release) again so the release is the model that was graded",
                allow_retries=False,
            )
    if Path(merge.adapter_dir) != Path(lora_adapter):
        raise dg.Failure(
            f"merged_model was merged from {merge.adapter_dir}, not the current lora_adapter {lora_adapter}: "
            "materialize merged_model and everything below it again",
            allow_retries=False,
        )


# The retry is for a Hub that stayed unavailable through push_release's own retries; every other failure
# (a refused token, HF_HUB_OFFLINE, a missing file) is raised with allow_retries=False and fails at once.
# What is released is checked byte for byte (sha256) against what merged_model, lora_adapter and the two reports
# recorded when they wrote it, so a file damaged since is never staged or pushed.
@stage_asset(
    kinds={"huggingface"},
    retry_policy=dg.RetryPolicy(max_retries=1, delay=30),
    ins=verified_inputs("merged_model", "lora_adapter", "rouge_report", "benchmark_report"),
)
def hub_release(
    context: dg.AssetExecutionContext,
    config: ReleaseConfig,
    merged_model: str,
    lora_adapter: str,
    rouge_report: str,
    benchmark_report: str,
    formatted_splits: str,
    artifacts: ArtifactStore,
    hub: HubResource,
) -> dg.Output[str]:
    """The release folder (merged model, adapter, model card), pushed to the Hub only with HF_TOKEN set."""
    from medcot_pipeline.contracts import ContractError
    from medcot_pipeline.release.hub_publishing import HubUnavailableError, ReleaseError, push_release, stage_release
    from medcot_pipeline.release.model_card import ReleaseFacts, ReleaseFactsError, build_model_card

    # Every fact comes from the artifacts this release is made of, following their own records upstream.
    try:
        report = EvaluationReport.read(rouge_report)
        benchmarks = BenchmarkReport.read(benchmark_report)
        merge = MergeRecord.read(merged_model)
        summary = TrainingSummary.read(lora_adapter)
    except ContractError as err:
        raise dg.Failure(str(err), allow_retries=False) from None
    # Contracts name artifacts by their location in the root (on object storage, not this node's copies).
    check_lineage(report, merge, artifacts.location_of(merged_model), artifacts.location_of(lora_adapter), benchmarks)
    try:
        facts = ReleaseFacts.from_artifacts(
            config.repo_id,
            lora_adapter,
            rouge_report,
            code_version={
                **{asset: version or "unknown" for asset, version in summary.lineage.items()},
                "lora_adapter": summary.code_version or "unknown",
                "merged_model": merge.code_version or "unknown",
                "rouge_report": report.code_version or "unknown",
                "benchmark_report": benchmarks.code_version or "unknown",
                "hub_release": current_code_version(context) or "unknown",
            },
            adapter_location={"subfolder": "adapter/", "separate_repo": f"{config.repo_id}-lora", "none": None}[config.adapter],
            license=config.license,
            benchmark_report=benchmark_report,
            formatted_splits=formatted_splits,
        )
    except (ReleaseFactsError, ContractError) as err:
        raise dg.Failure(str(err), allow_retries=False) from None
    card = build_model_card(facts)
    try:
        with artifacts.new_version("hub_release", context.run_id) as staging:
            manifest = stage_release(
                Path(merged_model),
                Path(lora_adapter) if config.adapter != "none" else None,
                card,
                staging,
                config.adapter,
                repo_id=config.repo_id,
            )
    except (ReleaseError, ArtifactError) as err:
        raise dg.Failure(str(err), allow_retries=False) from None
    staged = artifacts.version_dir("hub_release", context.run_id)
    metadata = release_metadata(facts, rouge_report, card, staged, manifest, config)
    if not hub.token:
        context.log.warning("HF_TOKEN is not set: the release is staged locally and nothing was pushed.")
        return dg.Output(str(staged), metadata={**metadata, "status": "staged, not pushed (HF_TOKEN is not set)"})
    try:
        pushed = push_release(
            staged,
            config.repo_id,
            hub.token,
            private=config.private,
            adapter_mode=config.adapter,
            commit_message=config.commit_message,
            endpoint=hub.endpoint,
        )
    except ReleaseError as err:
        raise dg.Failure(str(err), allow_retries=isinstance(err, HubUnavailableError)) from None
    status = "pushed" if pushed.get("pushed") else "unchanged on the Hub, no new commit"
    return dg.Output(
        str(staged),
        metadata={
            **metadata,
            "status": status,
            "repo_url": dg.MetadataValue.url(pushed["repo_url"]),
            "commit": pushed.get("commit_oid") or "none",
        },
    )


def release_metadata(facts, rouge_report: str, card, staged: Path, manifest, config: ReleaseConfig) -> dict:
    """The page opens as rouge_report's does (the gate's verdict, the loss curve, the best and worst answer, from
    the same artifacts the card states), then what was staged and the card itself."""
    from medcot_pipeline.contracts import SAMPLES_FILE
    from medcot_pipeline.evaluation.scores import gate_rows, markdown_table
    from medcot_pipeline.presentation.report import verdict_entries
    from medcot_pipeline.presentation.text import size_text

    opening = verdict_entries(facts.decision, facts.evaluation, Path(rouge_report) / SAMPLES_FILE, facts.training, facts.benchmarks)
    return {
        **metadata_values(opening),
        # Every criterion with its detail (the interval behind it): the verdict above has one line each.
        "release_gate_criteria": dg.MetadataValue.md(markdown_table(gate_rows(facts.decision))),
        "path": dg.MetadataValue.path(str(staged)),
        "repo_id": config.repo_id,
        "private": config.private,
        "license": facts.license,
        "files": str(len(manifest.files)),
        "size": size_text(manifest.total_bytes),
        "model_card": model_card_markdown(card),
    }
