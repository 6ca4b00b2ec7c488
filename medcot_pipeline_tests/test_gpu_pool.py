"""The `gpu` pool across runs: with the shipped dagster_home/dagster.yaml, a second run's GPU step waits for the
first run's, also when that step trains on several GPUs (two gloo processes here)."""

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import dagster as dg

from medcot_pipeline_tests.conftest import REPO_ROOT
from medcot_pipeline_tests.pipeline_harness import load_defs, materialize, step_errors, tiny_profile, write_profile
from medcot_pipeline_tests.test_faults import cli_materialize, latest_run_id, stop_group, training_processes

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


# ---------------------------------------------------------------- a killed run gives the pool back (issue 28)


def engine_messages(instance: dg.DagsterInstance, run_id: str, level: int = logging.DEBUG) -> list[str]:
    return [e.dagster_event.message or e.user_message for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)
            if e.level >= level]


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL what a test started, its own process group, including children that outlived their parent."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if process.poll() is None:
        process.wait(timeout=30)


def wait_until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise TimeoutError(what)


def test_a_run_whose_process_was_killed_gives_back_the_gpu_pool(tiny_llama_dir, tmp_path):
    """The issue's case, without any daemon: `kill -9` of the `dagster asset materialize` that runs a long training. Run A
    stays STARTED holding the gpu slot, its step and training orphaned. Run B's GPU step says at INFO what it waits for;
    once A's last process is gone too, A is marked failed, its slot given back, and B trains."""
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    instance = dg.DagsterInstance.from_config(str(home))
    assert instance.event_log_storage.initialize_concurrency_limit_to_default("gpu")
    artifacts = tmp_path / "artifacts"
    single = {**POOL_TRAINING, "num_gpus": 1}
    long_run = write_profile(tmp_path / "long.yaml", tiny_profile(tiny_llama_dir, artifacts, lora_adapter={**single, "max_steps": 100_000, "save_steps": 100_000}))
    short_run = write_profile(tmp_path / "short.yaml", tiny_profile(tiny_llama_dir, artifacts, lora_adapter={**single, "learning_rate": 2e-3}))
    prepared = materialize(load_defs(long_run), instance, ["raw_dataset", "benchmark_questions", "formatted_splits"])
    assert prepared.success, step_errors(instance, prepared.run_id)

    log = tmp_path / "cli.log"
    first = cli_materialize("lora_adapter", long_run, home, log)
    second = None
    try:
        wait_until(lambda: training_processes(first), 600, "run A's training never started")
        run_a = latest_run_id(instance)
        assert [slot.run_id for slot in instance.event_log_storage.get_concurrency_info("gpu").claimed_slots] == [run_a]
        os.kill(first.pid, signal.SIGKILL)  # the launching process only: its step and training go on, orphaned
        first.wait(timeout=30)

        second = cli_materialize("lora_adapter", short_run, home, log)
        run_b = wait_until(lambda: next((r.run_id for r in instance.get_runs(limit=1) if r.run_id != run_a), None), 300, "no run B")
        waiting = wait_until(
            lambda: [m for m in engine_messages(instance, run_b, logging.INFO) if m.startswith("lora_adapter waits for pool gpu (limit 1)")],
            600, "run B never said at INFO what it waits for",
        )
        # Naming the holder, and why its slot is still held: A's training still runs.
        assert waiting[0].startswith(f"lora_adapter waits for pool gpu (limit 1), held by run {run_a[:8]}'s lora_adapter (its process, pid {first.pid}, is gone;"), waiting
        assert instance.get_run_by_id(run_a).status == dg.DagsterRunStatus.STARTED

        os.killpg(first.pid, signal.SIGKILL)  # A's orphans end too (the OOM killer, or their own end)
        assert second.wait(timeout=900) == 0, log.read_text()[-6000:]
    finally:
        kill_group(first)
        if second is not None:
            kill_group(second)

    a = instance.get_run_by_id(run_a)
    assert a.status == dg.DagsterRunStatus.FAILURE
    failure = [e.dagster_event.message for e in instance.all_logs(run_a, of_type=dg.DagsterEventType.RUN_FAILURE)]
    assert failure and failure[-1].startswith(f"medcot marked this run failed: its process (pid {first.pid} on ")
    assert instance.get_run_by_id(run_b).status == dg.DagsterRunStatus.SUCCESS
    assert any(m.startswith(f"lora_adapter waits for pool gpu; slots given back: run {run_a[:8]} (lora_adapter) was marked failed")
               for m in engine_messages(instance, run_b)), engine_messages(instance, run_b)
    info = instance.event_log_storage.get_concurrency_info("gpu")
    assert (info.claimed_slots, info.slot_count) == ([], 1)


def test_the_run_monitoring_daemon_fails_a_run_whose_process_is_gone(tmp_path):
    """With `dagster dev`'s daemon: the shipped dagster.yaml turns run monitoring on with medcot's launcher, whose health
    check reports a run whose recorded process is gone as FAILED; Dagster's monitor then marks the run failed (and its
    slots are freed free_slots_after_run_end_seconds later). A live process's run is left alone."""
    import psutil
    from dagster._daemon.monitoring.run_monitoring import monitor_started_run

    from medcot_pipeline.defs.run_workers import WORKER_TAG, MedcotRunLauncher, WorkerIdentity

    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    instance = dg.DagsterInstance.from_config(str(home))
    assert isinstance(instance.run_launcher, MedcotRunLauncher) and instance.run_monitoring_enabled
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    identities = {
        "dead": WorkerIdentity(socket.gethostname(), gone.pid, time.time() - 5, psutil.boot_time()),
        "alive": WorkerIdentity.current(),
    }
    runs = {}
    for label, identity in identities.items():
        run = dg.DagsterRun(job_name="medcot_pipeline", run_id=f"{label}-run", status=dg.DagsterRunStatus.STARTED,
                            tags={WORKER_TAG: identity.tag_value()})
        instance.add_run(run)
        monitor_started_run(instance, None, instance.get_run_record_by_id(run.run_id), logging.getLogger("medcot-tests.monitor"))
        runs[label] = instance.get_run_by_id(run.run_id).status
    assert runs == {"dead": dg.DagsterRunStatus.FAILURE, "alive": dg.DagsterRunStatus.STARTED}
