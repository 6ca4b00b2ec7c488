"""Model stage: the LoRA adapter (trained in its own process through Dagster Pipes) and the merged model."""

import hashlib
import json
from pathlib import Path

import dagster as dg

from medcot_pipeline.profiles import Profile, code_version
from medcot_pipeline.resources import (
    ArtifactStore,
    BaseModelResource,
    WandbResource,
    tree_bytes,
    tree_sha256,
)

MODEL_GROUP = "model"
# Steps that hold a GPU: limited within a run by the executor's tag limit and across runs by the pool.
GPU_TAG = {"medcot/gpu": "true"}
GPU_POOL = "gpu"


def build_model_assets(profile: Profile) -> list[dg.AssetsDefinition]:
    TrainingConfig = profile.config_class("lora_adapter")
    MergeConfig = profile.config_class("merged_model")
    base_settings = BaseModelResource(**profile.resource_values("base_model")).model_dump()

    def lora_adapter(
        context: dg.AssetExecutionContext,
        config: TrainingConfig,
        formatted_splits: str,
        artifacts: ArtifactStore,
        base_model: BaseModelResource,
        wandb: WandbResource,
        pipes_subprocess_client: dg.PipesSubprocessClient,
    ) -> dg.Output[str]:
        """LoRA adapter trained with TRL's SFTTrainer (Unsloth on CUDA, transformers + PEFT on CPU)."""
        from medcot_pipeline.training import distributed

        splits_dir = Path(formatted_splits)
        processes = distributed.resolve_num_processes(config.num_gpus)
        base_ref = base_model.resolve(artifacts)
        # Same settings and same data -> same checkpoint directory, so a rerun after a crash resumes.
        run_key = hashlib.sha256(
            json.dumps([config.model_dump(), base_model.model_dump(), _file_digest(splits_dir / "train.parquet")], sort_keys=True).encode()
        ).hexdigest()[:16]
        checkpoint_dir = artifacts.path("lora_adapter", "checkpoints", run_key)
        with artifacts.new_version("lora_adapter", context.run_id) as staging:
            extras = {
                "base_model": base_ref,
                "train_file": str(splits_dir / "train.parquet"),
                "validation_file": str(splits_dir / "validation.parquet"),
                "output_dir": str(staging / "adapter"),
                "checkpoint_dir": str(checkpoint_dir),
                "max_seq_length": base_model.max_seq_length,
                "profile": profile.name,
                "training": config.model_dump(),
                "wandb": {
                    "enabled": config.report_to_wandb,
                    "mode": wandb.mode,
                    "project": wandb.project,
                    "entity": wandb.entity,
                    "dir": str(artifacts.path("wandb")),
                    "run_name": f"lora_adapter-{context.run_id[:8]}",
                },
            }
            if processes > 1:
                context.log.info(f"training data-parallel in {processes} processes: {' '.join(distributed.launch_command(processes))}")
            result = pipes_subprocess_client.run(
                command=distributed.launch_command(processes), context=context, extras=extras,
                env={**wandb.env(), **distributed.launch_env(processes)},
            ).get_materialize_result()
            if not (staging / "adapter" / "adapter_config.json").exists():
                raise dg.Failure(f"training finished without writing an adapter to {staging / 'adapter'}")
        adapter_dir = artifacts.path("lora_adapter", context.run_id, "adapter")
        return dg.Output(
            str(adapter_dir),
            metadata={
                **(result.metadata or {}),
                "path": dg.MetadataValue.path(str(adapter_dir)),
                "size_mb": round(tree_bytes(adapter_dir) / 2**20, 2),
                "content_sha256": tree_sha256(adapter_dir),
                "base_model": base_model.name,
                "processes": processes,
                "checkpoint_dir": dg.MetadataValue.path(str(checkpoint_dir)),
            },
        )

    def merged_model(
        context: dg.AssetExecutionContext,
        config: MergeConfig,
        lora_adapter: str,
        artifacts: ArtifactStore,
        base_model: BaseModelResource,
    ) -> dg.Output[str]:
        """The adapter merged into the 16-bit base weights, saved as safetensors with its tokenizer."""
        from medcot_pipeline import merging

        base_ref = base_model.resolve(artifacts)
        with artifacts.new_version("merged_model", context.run_id) as staging:
            try:
                info = merging.merge_adapter(base_ref, lora_adapter, staging / "model", dtype=config.dtype, max_shard_size=config.max_shard_size)
            except merging.MergeError as err:
                raise dg.Failure(str(err)) from err
        model_dir = artifacts.path("merged_model", context.run_id, "model")
        return dg.Output(
            str(model_dir),
            metadata={
                "path": dg.MetadataValue.path(str(model_dir)),
                "parameters": info.get("parameters"),
                "dtype": config.dtype,
                "size_mb": round(tree_bytes(model_dir) / 2**20, 1),
                "content_sha256": tree_sha256(model_dir),
                "base_model": base_model.name,
            },
        )

    lora_asset = dg.asset(
        name="lora_adapter",
        group_name=MODEL_GROUP,
        kinds={"pytorch", "unsloth"},
        op_tags=GPU_TAG,
        pool=GPU_POOL,
        code_version=code_version(
            [lora_adapter], ["training", "chat_format.py", "base_models.py"],
            {"config": profile.asset_config("lora_adapter").model_dump(), "base_model": base_settings},
        ),
    )(lora_adapter)
    merged_asset = dg.asset(
        name="merged_model",
        group_name=MODEL_GROUP,
        kinds={"pytorch", "safetensors"},
        op_tags=GPU_TAG,
        pool=GPU_POOL,
        code_version=code_version(
            [merged_model], ["merging.py", "base_models.py"],
            {"config": profile.asset_config("merged_model").model_dump(), "base_model": base_settings},
        ),
    )(merged_model)
    return [lora_asset, merged_asset]


def _file_digest(path: Path) -> str:
    from medcot_pipeline.resources import file_sha256

    return file_sha256(path) if path.exists() else ""
