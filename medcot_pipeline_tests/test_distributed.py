"""Data-parallel training: the launcher, how the global batch is shared, rank-0-only writes, and a killed rank
(two gloo processes on CPU, through Dagster Pipes)."""

import json
import re
import signal
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import psutil
import pydantic
import pytest
import yaml

from medcot_pipeline import data_parallel
from medcot_pipeline.defs.stages import TrainingConfig
from medcot_pipeline.profiles import PROFILES_DIR, ProfileError, load_profile
from medcot_pipeline.settings import TrainingSettings
from medcot_pipeline.training import distributed, recipe
from medcot_pipeline_tests.pipeline_harness import load_defs, materialize, materialized_in, step_errors, tiny_profile, write_profile
from medcot_pipeline_tests.test_training import make_job, splits  # noqa: F401 - splits is a fixture

TRAINING_MODULE = "medcot_pipeline.training.run"


# ---------------------------------------------------------------- launcher


def test_one_process_runs_the_module_and_several_go_through_torchrun_without_restarts():
    assert distributed.launch_command(1, TRAINING_MODULE) == [sys.executable, "-m", "medcot_pipeline.training.run"]
    assert distributed.launch_command(4, TRAINING_MODULE) == [
        sys.executable, "-m", "medcot_pipeline.training.distributed", "--standalone", "--nproc-per-node=4",
        "--max-restarts=0", "-m", "medcot_pipeline.training.run",
    ]
    assert distributed.launch_env(1, "/tmp/f.json") == {}
    env = distributed.launch_env(2, "/tmp/f.json")
    assert env["NCCL_NVLS_ENABLE"] == "0" and env[distributed.FAILURE_FILE_ENV] == "/tmp/f.json"


def test_num_gpus_zero_takes_the_visible_gpus_that_share_the_batch_evenly():
    assert distributed.resolve_num_processes(3, global_batch=24) == 3
    assert distributed.resolve_num_processes(0, global_batch=24, visible=0) == 1  # no GPU: one process
    assert distributed.resolve_num_processes(0, global_batch=24, visible=1) == 1
    assert distributed.resolve_num_processes(0, global_batch=24, visible=4) == 4
    assert distributed.resolve_num_processes(0, global_batch=24, visible=8) == 8
    assert distributed.resolve_num_processes(0, global_batch=24, visible=5) == 4  # 24 rows do not split over 5
    assert distributed.resolve_num_processes(0, global_batch=24, visible=7) == 6
    assert distributed.resolve_num_processes(0, global_batch=8, visible=3) == 2


# ---------------------------------------------------------------- the global batch


@pytest.mark.parametrize(
    "batch, accumulation, processes, per_device, per_process_accumulation",
    [
        (24, 1, 1, 24, 1),  # h100 on one GPU
        (24, 1, 2, 12, 1),  # h100's rows shared: accumulation 1 cannot be divided, the rows can
        (24, 1, 4, 6, 1),
        (24, 1, 8, 3, 1),
        (24, 1, 3, 8, 1),
        (1, 8, 2, 1, 4),  # t4: one row a micro-batch, so the accumulation is shared
        (1, 8, 8, 1, 1),
        (8, 4, 2, 8, 2),  # the profile's micro-batch is kept (its memory is known to fit), fewer micro-batches
        (6, 4, 8, 3, 1),  # 24 rows over 8: 3 each, in one micro-batch of 3 (not larger than 6)
        (4, 2, 8, 1, 1),
        (2, 1, 2, 1, 1),  # the CPU gloo test below
    ],
)
def test_the_global_batch_is_shared_by_the_processes(batch, accumulation, processes, per_device, per_process_accumulation):
    split = data_parallel.split_global_batch(batch, accumulation, processes)
    assert (split.per_device_batch, split.accumulation) == (per_device, per_process_accumulation)
    assert split.global_batch == batch * accumulation


def test_every_split_keeps_the_global_batch_and_the_largest_micro_batch_that_fits():
    for batch in range(1, 33):
        for accumulation in range(1, 9):
            rows = batch * accumulation
            for processes in range(1, 9):
                if rows % processes:
                    with pytest.raises(data_parallel.BatchSplitError, match=f"{rows} rows"):
                        data_parallel.split_global_batch(batch, accumulation, processes)
                    continue
                split = data_parallel.split_global_batch(batch, accumulation, processes)
                assert split.global_batch == rows and split.processes == processes
                assert 1 <= split.per_device_batch <= batch  # never more memory per GPU than the profile on one GPU
                per_process = rows // processes
                assert not [b for b in range(split.per_device_batch + 1, batch + 1) if per_process % b == 0]


def test_a_gpu_count_that_cannot_share_the_batch_fails_at_launch(tmp_path):
    message = "global batch of 24 rows a step .* does not split evenly over 5 GPUs; use a GPU count that divides it \\(1, 2, 3, 4, 6, 8, 12, 24\\)"
    with pytest.raises(data_parallel.BatchSplitError, match=message):
        data_parallel.split_global_batch(24, 1, 5)
    # In a profile: the launch fails naming the file and the key.
    profile = tmp_path / "five.yaml"
    profile.write_text(yaml.safe_dump({"ops": {"lora_adapter": {"config": {
        "per_device_train_batch_size": 24, "gradient_accumulation_steps": 1, "num_gpus": 5}}}}))
    with pytest.raises(ProfileError, match=f"{profile}: ops.lora_adapter.config.num_gpus: Value error, the global batch of 24"):
        load_profile(profile)
    # From the Launchpad or `-c` run config: the asset's config rejects it before the step starts.
    h100 = load_profile(PROFILES_DIR / "h100.yaml").stages.lora_adapter.model_dump()
    with pytest.raises(pydantic.ValidationError, match="num_gpus"):
        TrainingConfig(**{**h100, "num_gpus": 5})
    assert TrainingConfig(**{**h100, "num_gpus": 4}).num_gpus == 4
    # num_gpus: 0 and 1 never fail here (0 is resolved on the host, from the visible GPUs).
    assert TrainingSettings(per_device_train_batch_size=5, gradient_accumulation_steps=1, num_gpus=0).num_gpus == 0


def test_each_process_runs_its_share():
    h100_like = TrainingSettings(per_device_train_batch_size=24, gradient_accumulation_steps=1, max_steps=67, learning_rate=1.73e-5)
    shared = recipe.per_process_settings(h100_like, 2)
    assert (shared.per_device_train_batch_size, shared.gradient_accumulation_steps) == (12, 1)
    # Steps, learning rate and schedule are untouched: each step still sees 24 rows.
    assert shared.model_dump(exclude={"per_device_train_batch_size", "gradient_accumulation_steps"}) == h100_like.model_dump(
        exclude={"per_device_train_batch_size", "gradient_accumulation_steps"}
    )
    assert recipe.batch_layout(shared, 2).global_batch == 24
    assert recipe.per_process_settings(h100_like, 1) is h100_like


def test_the_multi_gpu_profile_is_h100_on_every_gpu():
    """h100-multi.yaml extends h100.yaml and differs from it in num_gpus only, so a change to h100 carries over."""
    h100, multi = load_profile(PROFILES_DIR / "h100.yaml"), load_profile(PROFILES_DIR / "h100-multi.yaml")
    assert multi.files == (PROFILES_DIR / "h100-multi.yaml", PROFILES_DIR / "h100.yaml")
    assert multi.stages.lora_adapter.num_gpus == 0
    assert multi.stages.model_dump() == h100.stages.model_copy(
        update={"lora_adapter": h100.stages.lora_adapter.model_copy(update={"num_gpus": 0})}
    ).model_dump()
    assert multi.resources == h100.resources
    training = multi.stages.lora_adapter
    rows = training.per_device_train_batch_size * training.gradient_accumulation_steps
    for gpus in (1, 2, 4, 8):  # the hosts the device pool lends, and an 8-GPU node
        assert data_parallel.split_global_batch(training.per_device_train_batch_size, training.gradient_accumulation_steps, gpus).global_batch == rows


# ---------------------------------------------------------------- two gloo processes


def test_two_gloo_processes_share_the_batch_and_only_rank_zero_writes(tiny_llama_dir, splits, tmp_path):  # noqa: F811
    # h100's shape: rows a step and no accumulation, so the processes must share the rows (1 each).
    extras = make_job(
        tiny_llama_dir, splits, tmp_path, wandb=True, max_steps=2, save_steps=2, per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
    ).model_dump(mode="json")

    @dg.asset
    def lora_adapter(context: dg.AssetExecutionContext, pipes: dg.PipesSubprocessClient):
        from medcot_pipeline.defs.assets.model import adapter_page

        pipes.run(
            command=distributed.launch_command(2, TRAINING_MODULE), context=context, extras=extras,
            env=distributed.launch_env(2, tmp_path / "failure.json"),
        ).get_materialize_result()  # reported once, by rank 0
        # As the real step does: the page from what rank 0 wrote beside the adapter.
        return dg.MaterializeResult(metadata=adapter_page(tmp_path / "adapter"))

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([lora_adapter], resources={"pipes": dg.PipesSubprocessClient()}, instance=instance, raise_on_error=False)
    assert result.success
    [materialization] = result.asset_materializations_for_node("lora_adapter")
    assert materialization.metadata["global_step"].value == 2
    assert [row.data["step"] for row in materialization.metadata["loss_per_step"].value.records] == [1, 2]

    summary = json.loads((tmp_path / "adapter" / "training_summary.json").read_text())
    assert (summary["processes"], summary["global_batch_rows"], summary["per_process_batch"], summary["per_process_accumulation"]) == (2, 2, 1, 1)
    # What the trainer really did: 6 training rows at 2 a step are 3 steps an epoch, so 2 steps are 2/3 of one
    # (with 2 rows on each process, 4 a step, they would be a whole epoch).
    state = json.loads((tmp_path / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["epoch"] == pytest.approx(2 / 3)

    messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert sum("adapter saved" in m for m in messages) == 1
    assert any("2 steps, 2 rows a step = 2 process(es) x 1 rows x 1 accumulation" in m for m in messages), messages
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no second staging dir
    assert not (tmp_path / "failure.json").exists()
    assert len(list((tmp_path / "wandb").rglob("run-*.wandb"))) == 1  # one W&B run, not one per rank
    assert sorted(p.name for p in Path(tmp_path / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2"]
    # Rank 1 adds only its RNG state to rank 0's checkpoint (the two ranks formed one gloo group).
    assert sorted(p.name for p in (tmp_path / "checkpoints" / "checkpoint-2").glob("rng_state*")) == ["rng_state_0.pth", "rng_state_1.pth"]


# ---------------------------------------------------------------- a rank killed mid-run, then the rerun

KILL_TRAINING = {
    "num_gpus": 2, "max_steps": 8, "save_steps": 1, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1,
    "eval_steps": None, "report_to_wandb": False,
}


def our_training_ranks() -> dict[int, psutil.Process]:
    """The training ranks below this test process (torchrun's workers), by RANK; never anyone else's processes."""
    ranks = {}
    for child in psutil.Process().children(recursive=True):
        try:
            if TRAINING_MODULE in child.cmdline() and "RANK" in (environ := child.environ()):
                ranks[int(environ["RANK"])] = child
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return ranks


def kill_rank_after_checkpoint(checkpoints: Path, rank: int, step: int, timeout: float, seen: dict) -> None:
    """Poll for checkpoint-<step>/trainer_state.json; then SIGKILL the training process of `rank`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if list(checkpoints.glob(f"*/checkpoint-{step}/trainer_state.json")):
            victim = our_training_ranks().get(rank)
            if victim is not None:
                victim.send_signal(signal.SIGKILL)
                seen["checkpoints_at_kill"] = sorted(p.name for p in checkpoints.glob("*/checkpoint-*"))
                break
        time.sleep(0.01)
    else:
        seen["error"] = f"checkpoint-{step} or rank {rank} not seen within {timeout}s"
        return
    # The other ranks must go within torchrun's grace period (SIGTERM, then SIGKILL after 30 s); if they hang in a
    # collective instead, say so and end them, so the test fails rather than waits forever.
    deadline = time.monotonic() + 120
    while our_training_ranks() and time.monotonic() < deadline:
        time.sleep(0.2)
    if hung := our_training_ranks():
        seen["hung"] = sorted(hung)
        for process in hung.values():
            process.send_signal(signal.SIGKILL)


@pytest.fixture(scope="module")
def killed_rank_and_rerun(tiny_llama_dir, tmp_path_factory):
    """lora_adapter on two gloo processes through the real asset; rank 1 SIGKILLed after checkpoint-2; then a rerun."""
    home = tmp_path_factory.mktemp("rank_kill")
    artifacts = home / "artifacts"
    instance = dg.DagsterInstance.local_temp(str(home))
    defs = load_defs(write_profile(home / "two.yaml", tiny_profile(tiny_llama_dir, artifacts, lora_adapter=KILL_TRAINING)))
    checkpoints = artifacts / "lora_adapter" / "checkpoints"

    seen: dict = {}
    killer = threading.Thread(target=kill_rank_after_checkpoint, args=(checkpoints, 1, 2, 600, seen), daemon=True)
    killer.start()
    crashed = materialize(defs, instance, ["raw_dataset", "benchmark_questions", "formatted_splits", "lora_adapter"])
    killer.join(timeout=5)
    state = {
        "defs": defs, "instance": instance, "artifacts": artifacts, "seen": seen, "crashed": crashed,
        "left_running": our_training_ranks(), "after_crash": sorted(p.name for p in (artifacts / "lora_adapter").iterdir()),
    }
    state["rerun"] = materialize(defs, instance, ["lora_adapter"])
    return state


def test_a_killed_rank_fails_the_step_naming_it_and_leaves_no_adapter(killed_rank_and_rerun):
    state = killed_rank_and_rerun
    seen, crashed, instance = state["seen"], state["crashed"], state["instance"]
    assert "error" not in seen and "hung" not in seen, seen
    assert "checkpoint-8" not in seen["checkpoints_at_kill"], "training finished before the kill landed"

    assert not crashed.success
    assert materialized_in(crashed) == {"raw_dataset", "benchmark_questions", "formatted_splits"}
    errors = "\n".join(step_errors(instance, crashed.run_id))
    assert "data-parallel training failed: rank 1 failed first (killed by SIGKILL); torchrun stopped all 2 processes" in errors, errors
    assert "rerun to resume from the last one" in errors
    # torchrun tore the group down: rank 0 is not left waiting for rank 1 in a collective.
    assert state["left_running"] == {}
    # No adapter and no staging dir; the checkpoints the rerun resumes from are kept.
    assert state["after_crash"] == ["checkpoints"], state["after_crash"]


def test_the_rerun_resumes_from_the_last_checkpoint_and_finishes(killed_rank_and_rerun):
    state = killed_rank_and_rerun
    rerun, instance = state["rerun"], state["instance"]
    assert rerun.success, step_errors(instance, rerun.run_id)
    [materialization] = rerun.asset_materializations_for_node("lora_adapter")
    metadata = materialization.metadata
    resumed = Path(metadata["resumed_from"].value).name
    assert resumed.startswith("checkpoint-") and 2 <= int(resumed.split("-")[1]) < KILL_TRAINING["max_steps"], resumed
    assert metadata["global_step"].value == KILL_TRAINING["max_steps"]
    # Facts of the run, in the page's `training` table (numbers there would be charted as flat lines).
    assert "| processes | 2 |" in metadata["training"].value and "| rows a step (global batch) | 2 |" in metadata["training"].value
    messages = "\n".join(entry.user_message or "" for entry in instance.all_logs(rerun.run_id))
    assert f"resuming from {resumed}" in messages
    adapter = state["artifacts"] / "lora_adapter" / rerun.run_id / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file()
    assert not list((state["artifacts"] / "lora_adapter").glob(".*staging*"))


def test_a_rank_that_raises_fails_the_step_with_its_error(killed_rank_and_rerun):
    """An exception in the ranks (here an optimizer TrainingArguments does not know) reaches the step's error and metadata."""
    state = killed_rank_and_rerun
    instance = state["instance"]
    job = state["defs"].resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(
        instance=instance, asset_selection=[dg.AssetKey("lora_adapter")], raise_on_error=False,
        run_config={"ops": {"lora_adapter": {"config": {"optim": "no_such_optimizer"}}}},
    )
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    data = failure.step_failure_data
    assert re.search(r"data-parallel training failed: rank [01] failed first \(exit code 1\)", data.error.to_string()), data.error.to_string()
    assert "no_such_optimizer" in data.user_failure_data.metadata["error"].value
    assert not (state["artifacts"] / "lora_adapter" / result.run_id).exists()
