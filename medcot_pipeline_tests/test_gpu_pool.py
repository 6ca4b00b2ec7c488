"""The `gpu` pool across runs: with the shipped dagster_home/dagster.yaml, a second run's GPU step waits for the
first run's, also when that step trains on several GPUs (two gloo processes here)."""

import shutil

import dagster as dg

from medcot_pipeline_tests.conftest import REPO_ROOT
from medcot_pipeline_tests.pipeline_harness import load_defs, materialize, step_errors, tiny_profile, write_profile
from medcot_pipeline_tests.test_faults import cli_materialize, latest_run_id, stop_group

# Data-parallel training (torchrun, 2 processes): one step holding "every GPU" of the host.
POOL_TRAINING = {
    "num_gpus": 2, "max_steps": 2, "save_steps": 2, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1,
    "eval_steps": None, "report_to_wandb": False,
}


def step_window(instance: dg.DagsterInstance, run_id: str, step_key: str) -> tuple[float, float]:
    """When the step started and when it ended (success or failure), from the run's event log."""
    started = [e.timestamp for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START) if e.step_key == step_key]
    ended = [
        e.timestamp
        for e in instance.all_logs(run_id, of_type={dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE})
        if e.step_key == step_key
    ]
    assert len(started) == 1 and len(ended) == 1, (run_id, started, ended)
    return started[0], ended[0]


def test_a_second_run_waits_for_the_gpu_step_of_the_first(tiny_llama_dir, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    instance = dg.DagsterInstance.local_temp(str(home))
    assert instance.get_concurrency_config().pool_config.default_pool_limit == 1  # the shipped file was read
    # Dagster creates a pool's limit and slots from default_limit when a step first asks for it; two runs that
    # reach a pool nobody has used in the same instant overlapped once here (SQLite), most likely both creating a slot.
    # Any earlier run has created it; here it is created first, as `dagster instance concurrency set gpu 1` would.
    assert instance.event_log_storage.initialize_concurrency_limit_to_default("gpu")

    artifacts = tmp_path / "artifacts"
    # Two users training at once with different learning rates (so different checkpoint directories).
    profiles = [
        write_profile(tmp_path / f"lr{n}.yaml", tiny_profile(tiny_llama_dir, artifacts, lora_adapter={**POOL_TRAINING, "learning_rate": lr}))
        for n, lr in ((1, 1e-3), (2, 2e-3))
    ]
    prepared = materialize(load_defs(profiles[0]), instance, ["raw_dataset", "benchmark_questions", "formatted_splits"])
    assert prepared.success, step_errors(instance, prepared.run_id)

    log = tmp_path / "cli.log"
    clis = [cli_materialize("lora_adapter", profile, home, log) for profile in profiles]
    try:
        return_codes = [cli.wait(timeout=1200) for cli in clis]
    finally:
        for cli in clis:
            stop_group(cli)
    assert return_codes == [0, 0], log.read_text()[-6000:]

    runs = [run.run_id for run in instance.get_runs(limit=2)]
    assert prepared.run_id not in runs and latest_run_id(instance) in runs
    for run_id in runs:
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.SUCCESS
        [materialization] = [
            e.asset_materialization for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
        ]
        assert "| processes | 2 |" in materialization.metadata["training"].value  # the step held "both GPUs"

    first, second = sorted((step_window(instance, run_id, "lora_adapter"), run_id) for run_id in runs)
    assert second[0][0] >= first[0][1], f"GPU steps overlapped: {first} and {second}"
    # The second run's step was ready while the first held the pool, and waited for it rather than starting late.
    blocked = [e.user_message for e in instance.all_logs(second[1], of_type=dg.DagsterEventType.ENGINE_EVENT) if e.step_key == "lora_adapter"]
    assert "Step blocked by limit for pool gpu" in blocked, blocked
    # Both steps gave their slot back, and there was only ever the one.
    info = instance.event_log_storage.get_concurrency_info("gpu")
    assert (info.claimed_slots, info.slot_count) == ([], 1)
