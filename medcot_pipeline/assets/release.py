"""Release stage: a model card and the release folder, pushed to the Hub when HF_TOKEN is set."""

import json
import platform
from pathlib import Path

import dagster as dg

from medcot_pipeline.assets.evaluation import load_report
from medcot_pipeline.profiles import Profile, code_version
from medcot_pipeline.resources import ArtifactStore, BaseModelResource, HubResource

RELEASE_GROUP = "release"
LINEAGE = ("raw_dataset", "formatted_splits", "lora_adapter", "merged_model", "rouge_report")


def _latest_materialization(context: dg.AssetExecutionContext, asset: str):
    event = context.instance.get_latest_materialization_event(dg.AssetKey(asset))
    return event.asset_materialization if event else None


def _metadata_value(materialization, key: str, default=None):
    if materialization is None or key not in materialization.metadata:
        return default
    return materialization.metadata[key].value


def _hardware(training_summary: dict) -> str:
    gpu = training_summary.get("gpu_name")
    return gpu or f"CPU ({platform.processor() or platform.machine()})"


def build_release_assets(profile: Profile) -> list[dg.AssetsDefinition]:
    ReleaseConfig = profile.config_class("hub_release")

    def hub_release(
        context: dg.AssetExecutionContext,
        config: ReleaseConfig,
        merged_model: str,
        lora_adapter: str,
        rouge_report: str,
        artifacts: ArtifactStore,
        base_model: BaseModelResource,
        hub: HubResource,
    ) -> dg.Output[str]:
        """The release folder (merged model, adapter, model card), pushed to the Hub only with HF_TOKEN set."""
        from medcot_pipeline.hub_publishing import ReleaseError, push_release, stage_release
        from medcot_pipeline.model_card import ReleaseFacts, build_model_card

        raw = _latest_materialization(context, "raw_dataset")
        summary_path = Path(lora_adapter) / "training_summary.json"
        training_summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        code_versions = {}
        for asset in LINEAGE:
            event = _latest_materialization(context, asset)
            code_versions[asset] = (event.tags or {}).get("dagster/code_version", "unknown") if event else "unknown"
        code_versions["hub_release"] = context.assets_def.code_versions_by_key.get(context.asset_key) or "unknown"

        facts = ReleaseFacts(
            repo_id=config.repo_id,
            base_model=training_summary.get("base_model_id") or base_model.name,
            dataset_id=_metadata_value(raw, "location", "bundled sample"),
            dataset_config="en",
            dataset_revision=_metadata_value(raw, "revision", "n/a"),
            license=config.license,
            language="en",
            metrics=load_report(rouge_report),
            training={**training_summary.get("settings", {}), "max_seq_length": base_model.max_seq_length},
            hardware=_hardware(training_summary),
            wall_time_seconds=training_summary.get("wall_time_seconds"),
            code_version=code_versions,
            wandb_run=training_summary.get("wandb_run"),
            adapter_location={"subfolder": "adapter/", "separate_repo": f"{config.repo_id}-lora", "none": None}[config.adapter],
        )
        card = build_model_card(facts)
        with artifacts.new_version("hub_release", context.run_id) as staging:
            manifest = stage_release(
                Path(merged_model), Path(lora_adapter) if config.adapter != "none" else None, card, staging,
                config.adapter, repo_id=config.repo_id,
            )
        staged = artifacts.path("hub_release", context.run_id)
        metadata = {
            "staged_path": dg.MetadataValue.path(str(staged)),
            "repo_id": config.repo_id,
            "private": config.private,
            "files": len(manifest["files"]),
            "size_mb": round(manifest["total_bytes"] / 2**20, 1),
            "model_card": dg.MetadataValue.md(str(card)[:6000]),
        }
        if not hub.token:
            context.log.warning("HF_TOKEN is not set: the release is staged locally and nothing was pushed.")
            return dg.Output(str(staged), metadata={**metadata, "status": "staged, not pushed (HF_TOKEN is not set)"})
        try:
            pushed = push_release(
                staged, config.repo_id, hub.token, private=config.private, adapter_mode=config.adapter,
                commit_message=config.commit_message, endpoint=hub.endpoint,
            )
        except ReleaseError as err:
            raise dg.Failure(str(err)) from err
        status = "pushed" if pushed.get("pushed") else "unchanged on the Hub, no new commit"
        return dg.Output(
            str(staged),
            metadata={**metadata, "status": status, "repo_url": dg.MetadataValue.url(pushed["repo_url"]),
                      "commit": pushed.get("commit_oid") or "none"},
        )

    release_asset = dg.asset(
        name="hub_release",
        group_name=RELEASE_GROUP,
        kinds={"huggingface"},
        retry_policy=dg.RetryPolicy(max_retries=1, delay=30),
        code_version=code_version(
            [hub_release, _hardware], ["model_card.py", "hub_publishing.py"],
            profile.asset_config("hub_release").model_dump(),
        ),
    )(hub_release)
    return [release_asset]
