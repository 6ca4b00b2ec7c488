"""Model stage: the LoRA adapter (trained in its own process through Dagster Pipes) and the merged model."""

import hashlib
import time
from pathlib import Path

import dagster as dg

from medcot_pipeline.artifact_io import file_sha256, tree_bytes, tree_sha256
from medcot_pipeline.contracts import MergeRecord, SplitsSummary, TrainingJob, WandbTarget
from medcot_pipeline.data.schema import split_path
from medcot_pipeline.defs.resources import ArtifactStore, BaseModelResource, WandbResource, verified_inputs
from medcot_pipeline.defs.stages import PROFILE, PROFILE_TAG_KEY, MergeConfig, TrainingConfig, current_code_version, stage_asset
from medcot_pipeline.presentation.text import number_text, size_text


@stage_asset(kinds={"pytorch", "peft"})
def lora_adapter(
    context: dg.AssetExecutionContext,
    config: TrainingConfig,
    formatted_splits: str,
    artifacts: ArtifactStore,
    base_model: BaseModelResource,
    wandb: WandbResource,
    pipes_subprocess_client: dg.PipesSubprocessClient,
) -> dg.Output[str]:
    """LoRA adapter trained with TRL's SFTTrainer (Unsloth on one CUDA GPU, transformers + PEFT elsewhere)."""
    from medcot_pipeline import data_parallel
    from medcot_pipeline.training import distributed
    from medcot_pipeline.training import run as training_process

    splits = SplitsSummary.read(formatted_splits)
    rows = config.per_device_train_batch_size * config.gradient_accumulation_steps
    processes = distributed.resolve_num_processes(config.num_gpus, rows)
    try:
        split = data_parallel.split_global_batch(config.per_device_train_batch_size, config.gradient_accumulation_steps, processes)
    except data_parallel.BatchSplitError as err:
        raise dg.Failure(f"lora_adapter: {err}") from err
    if config.num_gpus == 0 and processes < distributed.visible_gpus():
        context.log.warning(
            f"{distributed.visible_gpus()} GPUs are visible but {rows} rows a step split evenly over {processes} of them; "
            f"training on {processes} so the global batch stays {rows}"
        )
    base = base_model.ref(artifacts)
    splits_sha256 = file_sha256(split_path(formatted_splits, "train"))
    # Same settings and same data -> same checkpoint directory, so a rerun after a crash resumes.
    run_key = hashlib.sha256("\n".join([config.model_dump_json(), base_model.model_dump_json(), splits_sha256]).encode()).hexdigest()[:16]
    checkpoint_dir = artifacts.path("lora_adapter", "checkpoints", run_key)
    # Object storage: start from the newest checkpoint any node committed; training commits each new one there.
    checkpoint_location = artifacts.fetch_checkpoints(checkpoint_dir, context.log)
    with artifacts.new_version("lora_adapter", context.run_id) as staging:
        job = TrainingJob(
            base_model=base,
            splits_dir=str(formatted_splits),
            output_dir=str(staging / "adapter"),
            checkpoint_dir=str(checkpoint_dir),
            checkpoint_location=checkpoint_location,
            max_seq_length=base_model.max_seq_length,
            settings=config,
            wandb=WandbTarget(
                enabled=config.report_to_wandb,
                mode=wandb.mode,
                project=wandb.project,
                entity=wandb.entity,
                dir=str(artifacts.path("wandb")),
                run_name=f"lora_adapter-{context.run_id[:8]}",
            ),
            dataset=splits.dataset,
            splits_sha256=splits_sha256,
            profile=context.run.tags.get(PROFILE_TAG_KEY) or PROFILE.path.name,
            code_version=current_code_version(context),
            lineage={
                "raw_dataset": splits.dataset.code_version,
                "benchmark_questions": splits.benchmark_questions_code_version,
                "formatted_splits": splits.code_version,
            },
        )
        command = distributed.launch_command(processes, training_process.__name__)
        if processes > 1:
            context.log.info(f"training data-parallel, {split.describe()}: {' '.join(command)}")
        failure_file = staging / "torchrun_failure.json"
        try:
            result = pipes_subprocess_client.run(
                command=command,
                context=context,
                extras=job.model_dump(mode="json"),
                env={**wandb.env(), **distributed.launch_env(processes, failure_file)},
            ).get_materialize_result()
        except Exception as err:
            failure = distributed.RankFailure.read(failure_file)
            if failure is None:  # one process, or a failure outside the ranks: Pipes' own error says it
                raise
            raise dg.Failure(
                f"data-parallel training failed: {failure.describe()}; torchrun stopped all {processes} processes. "
                f"Checkpoints so far are kept in {checkpoint_dir}: rerun to resume from the last one.",
                metadata={
                    "failed_rank": failure.rank,
                    "exitcode": failure.exitcode,
                    "signal": failure.signal or "",
                    "error": dg.MetadataValue.text(failure.message),
                },
            ) from err
        if not (staging / "adapter" / "adapter_config.json").exists():
            raise dg.Failure(f"training finished without writing an adapter to {staging / 'adapter'}")
    adapter_dir = artifacts.version_dir("lora_adapter", context.run_id) / "adapter"
    # The training process only knew the staging directory; this is where the adapter now is.
    context.log.info(f"adapter at {adapter_dir}")
    # The page (presentation/training.py: processes and the global batch are in its `training` table, not numbers
    # the Plots tab would draw as flat lines), from what the training process wrote beside the adapter.
    return dg.Output(
        str(adapter_dir),
        metadata={
            **(result.metadata or {}),
            **adapter_page(adapter_dir),
            "path": dg.MetadataValue.path(str(adapter_dir)),
            "size": size_text(tree_bytes(adapter_dir)),
            "content_sha256": tree_sha256(adapter_dir),
            "base_model": base_model.name,
            "checkpoint_dir": dg.MetadataValue.path(str(checkpoint_dir)),
        },
    )


def adapter_page(adapter_dir: Path) -> dict:
    """lora_adapter's page from its training summary and loss-curve PNG."""
    from medcot_pipeline.contracts import LOSS_CURVE_FILE, TrainingSummary
    from medcot_pipeline.defs.metadata import metadata_values
    from medcot_pipeline.presentation.training import lora_adapter_page

    return metadata_values(lora_adapter_page(TrainingSummary.read(adapter_dir), adapter_dir / LOSS_CURVE_FILE))


# The adapter's every byte is checked against what training recorded before it is merged into the base.
@stage_asset(kinds={"pytorch", "safetensors"}, ins=verified_inputs("lora_adapter"))
def merged_model(
    context: dg.AssetExecutionContext,
    config: MergeConfig,
    lora_adapter: str,
    artifacts: ArtifactStore,
    base_model: BaseModelResource,
) -> dg.Output[str]:
    """The adapter merged into the 16-bit base weights, saved as safetensors with its tokenizer."""
    from medcot_pipeline import merging

    base = base_model.ref(artifacts)
    context.log.info(
        f"merging the adapter {lora_adapter} into {base_model.name} as {config.dtype} (loads the base, then writes safetensors)"
    )
    started = time.perf_counter()
    with artifacts.new_version("merged_model", context.run_id) as staging:
        try:
            info = merging.merge_adapter(
                base.reference, lora_adapter, staging / "model", dtype=config.dtype, max_shard_size=config.max_shard_size
            )
        except merging.MergeError as err:
            raise dg.Failure(str(err)) from err
        record = MergeRecord(
            adapter_dir=artifacts.location_of(lora_adapter),
            adapter_sha256=tree_sha256(lora_adapter),
            base_model=base,
            dtype=config.dtype,
            parameters=info["parameters"],
            weights_sha256=info["sha256"],
            size_bytes=info["size_bytes"],
            code_version=current_code_version(context),
        )
        record.write(staging / "model")
    model_dir = artifacts.version_dir("merged_model", context.run_id) / "model"
    size = size_text(tree_bytes(model_dir))
    context.log.info(f"merged model at {model_dir}: {info['parameters']:,} parameters, {size}, in {time.perf_counter() - started:.0f} s")
    return dg.Output(
        str(model_dir),
        metadata={
            "path": dg.MetadataValue.path(str(model_dir)),
            "parameters": number_text(info["parameters"]),
            "dtype": config.dtype,
            "size": size,
            "content_sha256": tree_sha256(model_dir),
            "base_model": base_model.name,
        },
    )
