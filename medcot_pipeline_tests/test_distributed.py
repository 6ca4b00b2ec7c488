"""Data-parallel training: the launcher command, the per-process batch, and rank-0-only writes (two gloo processes on CPU)."""

import sys
from pathlib import Path

import dagster as dg

from medcot_pipeline.training import distributed
from medcot_pipeline_tests.test_training import make_job, splits  # noqa: F401 - splits is a fixture

TRAINING_MODULE = "medcot_pipeline.training.run"


def test_one_process_runs_the_module_and_several_go_through_torchrun():
    assert distributed.launch_command(1, TRAINING_MODULE) == [sys.executable, "-m", "medcot_pipeline.training.run"]
    assert distributed.launch_command(4, TRAINING_MODULE) == [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4", "-m", "medcot_pipeline.training.run",
    ]
    assert distributed.launch_env(1) == {}
    assert distributed.launch_env(2)["NCCL_NVLS_ENABLE"] == "0"
    assert distributed.resolve_num_processes(3) == 3


def test_accumulation_is_divided_to_keep_the_global_batch():
    assert distributed.per_process_accumulation(8, 2) == (4, True)
    assert distributed.per_process_accumulation(8, 8) == (1, True)
    assert distributed.per_process_accumulation(3, 2) == (2, False)
    assert distributed.per_process_accumulation(1, 4) == (1, False)


def test_two_gloo_processes_train_and_only_rank_zero_writes(tiny_llama_dir, splits, tmp_path):  # noqa: F811
    extras = make_job(
        tiny_llama_dir, splits, tmp_path, wandb=True, max_steps=2, save_steps=2, gradient_accumulation_steps=2
    ).model_dump(mode="json")

    @dg.asset
    def lora_adapter(context: dg.AssetExecutionContext, pipes: dg.PipesSubprocessClient):
        return pipes.run(
            command=distributed.launch_command(2, TRAINING_MODULE), context=context, extras=extras, env=distributed.launch_env(2)
        ).get_materialize_result()

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([lora_adapter], resources={"pipes": dg.PipesSubprocessClient()}, instance=instance, raise_on_error=False)
    assert result.success
    [materialization] = result.asset_materializations_for_node("lora_adapter")  # reported once, by rank 0
    assert materialization.metadata["global_step"].value == 2
    # Each of the 2 processes accumulated 1 micro-batch of 1: the global batch of 2 rows per step is kept.
    assert [row.data["step"] for row in materialization.metadata["loss_per_step"].value.records] == [1, 2]

    messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert sum("adapter saved" in m for m in messages) == 1
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no second staging dir
    assert len(list((tmp_path / "wandb").rglob("run-*.wandb"))) == 1  # one W&B run, not one per rank
    assert sorted(p.name for p in Path(tmp_path / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2"]
