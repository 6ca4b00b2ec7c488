"""Scale out with real parts, all started here on 127.0.0.1, nothing mocked (docs/scale-out.md).

- S3 (SeaweedFS) as the artifacts root, steps on this host: a run killed while training leaves nothing recorded,
  and a rerun with an empty local disk (another node) resumes from the checkpoint in S3.
- A Ray cluster (head: 2 CPUs, no GPU; worker: no CPU, 1 GPU) running every step through dagster-ray's
  ray_executor, the instance on PostgreSQL (dagster_home/dagster.postgres.yaml as shipped) and the artifacts
  on S3: the demo graph on the tiny random Llama end to end, steps placed by their requests, the Pipes training
  process on the GPU node reporting back; a second run started meanwhile takes its turn on the one GPU, and its
  step, killed on the GPU node mid-upload, leaves the demo's adapter intact and nothing half-written recorded.
One run of each kind serves several tests: every Ray step costs seconds of process start on 2 cores.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import dagster as dg
import psutil
import pytest

from medcot_pipeline.artifact_store import (
    MANIFEST_FILE,
    ArtifactError,
    ArtifactManifest,
    ArtifactRoot,
    download_committed,
    read_manifest,
)
from medcot_pipeline.contracts import MergeRecord
from medcot_pipeline_tests.pipeline_harness import ASSETS, load_defs, materialize, step_errors, tiny_profile, write_profile
from medcot_pipeline_tests.scale_out_services import BIN, BUCKET, REPO_ROOT

pytestmark = pytest.mark.scale_out

TRAINING_MODULE = "medcot_pipeline.training.run"
GPU_STEPS = ("lora_adapter", "merged_model", "rouge_report", "benchmark_report")
CRASH_TRAINING = {"max_steps": 6, "save_steps": 2, "per_device_train_batch_size": 1, "eval_steps": None}


# ------------------------------------------------------------------------------------------------ helpers


def launch(selection: str, profile: Path, home: Path, log: Path, env: dict, cwd: Path) -> subprocess.Popen:
    """`dagster asset materialize` as a user runs it, in its own process group."""
    command = [str(BIN / "dagster"), "asset", "materialize", "-m", "medcot_pipeline.definitions", "--select", selection, "-c", str(profile)]
    full_env = {**os.environ, "DAGSTER_HOME": str(home), "MEDCOT_PROFILE": str(profile),
                "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p), **env}
    with open(log, "ab") as out:
        return subprocess.Popen(command, cwd=cwd, env=full_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def finish(process: subprocess.Popen, timeout: float) -> int:
    try:
        return process.wait(timeout=timeout)
    finally:
        kill_group(process)


def kill_group(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def descendants_running(parent_pids: set[int], module: str) -> list[psutil.Process]:
    """Processes running `python -m module` below one of `parent_pids` (never anyone else's)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if module in " ".join(process.info["cmdline"] or []) and parent_pids & {p.pid for p in process.parents()}:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def runs_of(instance: dg.DagsterInstance, since: float) -> list[dg.DagsterRun]:
    return [r for r in instance.get_runs() if (instance.get_run_record_by_id(r.run_id).create_timestamp.timestamp() >= since)]


def events(instance: dg.DagsterInstance, run_id: str, kind: str) -> list:
    return [e for e in instance.all_logs(run_id) if e.dagster_event and e.dagster_event.event_type_value == kind]


def materialized(instance: dg.DagsterInstance, run_id: str) -> dict[str, dict]:
    """asset -> metadata values of what the run recorded."""
    return {
        e.dagster_event.asset_key.to_user_string(): {k: v.value for k, v in e.dagster_event.materialization.metadata.items()}
        for e in events(instance, run_id, "ASSET_MATERIALIZATION")
    }


def step_windows(instance: dg.DagsterInstance, run_id: str, steps) -> dict[str, tuple[float, float, float]]:
    """step -> (handed to the executor, started in its process, succeeded), from the run's own events."""
    times: dict[str, dict[str, float]] = {}
    for kind in ("STEP_WORKER_STARTING", "STEP_START", "STEP_SUCCESS"):
        for entry in events(instance, run_id, kind):
            if entry.step_key in steps:
                times.setdefault(entry.step_key, {})[kind] = entry.timestamp
    return {step: (t["STEP_WORKER_STARTING"], t["STEP_START"], t["STEP_SUCCESS"]) for step, t in times.items()}


def log_text(instance: dg.DagsterInstance, run_id: str, step: str | None = None) -> str:
    return "\n".join(e.user_message or "" for e in instance.all_logs(run_id) if step is None or e.step_key == step)


# ------------------------------------------------------------------------------------------------ S3 + this host


class KillTrainingAfterCheckpoint(threading.Thread):
    """SIGKILLs this process's training child once `checkpoint-<step>` is committed under `prefix` in S3."""

    def __init__(self, fs, prefix: str, step: int):
        super().__init__(daemon=True)
        self.fs, self.prefix, self.step = fs, prefix, step
        self.done = threading.Event()
        self.committed_at_kill: list[str] = []
        self.error: str | None = None

    def committed(self) -> list[str]:
        return sorted(k.split("/")[-2] for k in self.fs.glob(f"{self.prefix}/lora_adapter/checkpoints/*/*/{MANIFEST_FILE}"))

    def run(self) -> None:
        deadline = time.monotonic() + 600
        while f"checkpoint-{self.step}" not in self.committed():
            if self.done.is_set() or time.monotonic() > deadline:
                self.error = f"checkpoint-{self.step} was not committed before the run ended (or within 600 s)"
                return
            time.sleep(0.1)
        training = descendants_running({os.getpid()}, TRAINING_MODULE)
        if len(training) != 1:
            self.error = f"expected one training process, found {len(training)}"
            return
        training[0].send_signal(signal.SIGKILL)
        self.committed_at_kill = self.committed()


@pytest.fixture(scope="module")
def kills_on_s3(s3_server, tiny_llama_dir, tmp_path_factory):
    """On an S3 root, with SQLite as the instance, steps in this process: the splits; a lora_adapter run on node A
    whose training process is SIGKILLed once checkpoint-2 is committed in S3; a rerun on node B (an empty cache)."""
    home = tmp_path_factory.mktemp("s3_kills")
    prefix = f"{BUCKET}/kills-{home.name}"
    root = f"s3://{prefix}"
    caches = {"a": home / "node-a", "b": home / "node-b"}
    state: dict = {"home": home, "root": root, "prefix": prefix, "caches": caches, "timings": {}}
    profile = write_profile(home / "crash.yaml", tiny_profile(tiny_llama_dir, root, lora_adapter=CRASH_TRAINING))

    with pytest.MonkeyPatch.context() as env:
        for name, value in s3_server.env.items():
            env.setenv(name, value)
        env.setenv("MEDCOT_ARTIFACT_CACHE", str(caches["a"]))
        instance = dg.DagsterInstance.local_temp(str(home))
        defs = load_defs(profile)
        started = time.monotonic()
        splits = materialize(defs, instance, ["raw_dataset", "benchmark_questions", "formatted_splits"])
        assert splits.success, step_errors(instance, splits.run_id)
        state["timings"]["splits"] = time.monotonic() - started

        # 1. Node A trains; its training process is killed right after checkpoint-2 is committed in S3.
        started = time.monotonic()
        killer = KillTrainingAfterCheckpoint(s3_server.filesystem(), prefix, step=2)
        killer.start()
        crash = materialize(defs, instance, ["lora_adapter"])
        killer.done.set()
        killer.join()
        assert killer.error is None, f"{killer.error}: {step_errors(instance, crash.run_id)}"
        state.update(crash=crash, committed_at_kill=killer.committed_at_kill)
        state["timings"]["killed training run"] = time.monotonic() - started

        # 2. Node B, which never saw this training, reruns it.
        assert not caches["b"].exists()
        env.setenv("MEDCOT_ARTIFACT_CACHE", str(caches["b"]))
        started = time.monotonic()
        state["rerun"] = materialize(defs, instance, ["lora_adapter"])
        state["timings"]["resumed run"] = time.monotonic() - started
        state["instance"] = instance
    print("\n[scale-out] S3 kills, seconds:", {k: round(v) for k, v in state["timings"].items()})
    return state


def test_killed_training_records_nothing_and_another_node_resumes_from_s3(kills_on_s3, s3_server, monkeypatch):
    """SIGKILL of the training process: no adapter recorded or committed. The rerun on node B (empty local disk)
    fetches the newest committed checkpoint from S3, resumes from it and trains to the last step."""
    observe_s3(monkeypatch, s3_server)
    state = kills_on_s3
    instance, crash, rerun = state["instance"], state["crash"].run_id, state["rerun"].run_id
    store = ArtifactRoot(state["root"], cache_dir=str(state["home"] / "verifier"))
    assert not state["crash"].success and "checkpoint-2" in state["committed_at_kill"]
    assert "checkpoint-6" not in state["committed_at_kill"], "training finished before the kill landed"
    assert "lora_adapter" not in materialized(instance, crash)
    assert crash not in store.committed_versions("lora_adapter")
    assert any("External execution process failed with code -9" in e for e in step_errors(instance, crash))

    assert state["rerun"].success, step_errors(instance, rerun)
    metadata = materialized(instance, rerun)["lora_adapter"]
    resumed = re.fullmatch(r"(.*)/lora_adapter/checkpoints/[0-9a-f]{16}/checkpoint-(\d+)", metadata["resumed_from"])
    assert resumed and Path(resumed[1]) == state["caches"]["b"] and int(resumed[2]) >= 2, metadata["resumed_from"]
    logs = log_text(instance, rerun, "lora_adapter")
    assert re.search(rf"fetched checkpoint-{resumed[2]} from s3://{state['prefix']}/lora_adapter/checkpoints/", logs), logs[-3000:]
    assert f"resuming from checkpoint-{resumed[2]}" in logs
    assert metadata["global_step"] == CRASH_TRAINING["max_steps"]
    assert [row.data["step"] for row in metadata["loss_per_step"].records] == list(range(1, CRASH_TRAINING["max_steps"] + 1))
    assert metadata["artifact"] == store.location("lora_adapter", rerun, "adapter")
    assert rerun in store.committed_versions("lora_adapter")


# ------------------------------------------------------------------------------------------------ Ray + PostgreSQL + S3


class TrainingWatch(threading.Thread):
    """Records every training process that appears below the Ray nodes, in order: which node's process tree it is
    in, its parent (the step process) and the environment Ray gave it."""

    def __init__(self, cluster):
        super().__init__(daemon=True)
        self.leaders = cluster.leader_pids()
        self.seen: dict[int, dict] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for process in descendants_running(set(self.leaders), TRAINING_MODULE):
                if process.pid in self.seen:
                    continue
                try:
                    environ, step = process.environ(), process.ppid()
                    node = next(self.leaders[p.pid] for p in process.parents() if p.pid in self.leaders)
                except (psutil.NoSuchProcess, psutil.AccessDenied, StopIteration):
                    continue
                self.seen[process.pid] = {"node": node, "step_pid": step,
                                          **{k: environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "MEDCOT_TEST_RAY_NODE", "MEDCOT_ARTIFACT_CACHE")}}
            time.sleep(0.25)


class RayJobWatch(threading.Thread):
    """Samples Ray's own view of the GPU steps' jobs (PENDING, RUNNING, ...) twice a second."""

    def __init__(self, cluster, steps):
        super().__init__(daemon=True)
        from ray.job_submission import JobSubmissionClient

        self.client, self.steps = JobSubmissionClient(cluster.dashboard_url), steps
        self.samples: list[dict[tuple[str, str], str]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                jobs = self.client.list_jobs()
            except Exception:  # noqa: BLE001 - a slow dashboard answer is one lost sample, not a failure
                jobs = []
            sample = {(j.metadata.get("dagster/run-id"), j.metadata.get("dagster/op")): j.status.value
                      for j in jobs if j.metadata.get("dagster/op") in self.steps}
            self.samples.append(sample)
            time.sleep(0.5)


def ray_jobs(cluster, run_ids: set[str]) -> dict[tuple[str, str], object]:
    from ray.job_submission import JobSubmissionClient

    return {(j.metadata["dagster/run-id"], j.metadata["dagster/op"]): j
            for j in JobSubmissionClient(cluster.dashboard_url).list_jobs() if j.metadata.get("dagster/run-id") in run_ids}


def wait_until(condition, timeout: float, what: str, process: subprocess.Popen, log: Path, every: float = 0.2):
    """Poll `condition` until it returns something truthy; fail naming `what` if `process` ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert process.poll() is None, f"the run ended (rc={process.returncode}) before {what}: {log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        time.sleep(every)
    return found


@pytest.fixture(scope="module")
def ray_runs(ray_cluster, postgres_dagster_home, s3_server, tiny_llama_dir, tmp_path_factory):
    """Two runs on the cluster (MEDCOT_EXECUTOR=ray, the instance on PostgreSQL, the artifacts on S3), launched as a
    user does, by processes that hold no S3 credentials (only the nodes have them):

    - the demo graph (tiny profile), end to end;
    - once the demo's training holds the one GPU, a second run of lora_adapter with another seed, which Ray must
      keep waiting; the moment the first file of its adapter lands in S3, its step process on the GPU node is
      frozen, and then killed: a node lost mid-upload, with the demo's adapter committed before it.
    """
    work = tmp_path_factory.mktemp("ray_runs")
    prefix = f"{BUCKET}/ray-{work.name}"
    root = f"s3://{prefix}"
    profiles = {"demo": write_profile(work / "tiny.yaml", tiny_profile(tiny_llama_dir, root)),
                "second": write_profile(work / "seed2.yaml", tiny_profile(tiny_llama_dir, root, lora_adapter={"seed": 2}))}
    logs = {name: work / f"{name}.log" for name in profiles}
    env = {"MEDCOT_EXECUTOR": "ray", "RAY_ADDRESS": ray_cluster.dashboard_url}
    # At the pool's default limit (1) Dagster itself would hold the second run's step back; at 2 only Ray stands
    # between the two runs and the cluster's one GPU.
    subprocess.run([str(BIN / "dagster"), "instance", "concurrency", "set", "gpu", "2"],
                   env={**os.environ, "DAGSTER_HOME": str(postgres_dagster_home)}, check=True, capture_output=True)
    instance = dg.DagsterInstance.from_config(str(postgres_dagster_home))
    fs = s3_server.filesystem()
    state: dict = {"instance": instance, "root": root, "prefix": prefix, "work": work, "logs": logs, "timings": {},
                   "caches": {node.name: Path(node.env["MEDCOT_ARTIFACT_CACHE"]) for node in ray_cluster.nodes}}
    trainings, gpu_jobs = TrainingWatch(ray_cluster), RayJobWatch(ray_cluster, GPU_STEPS)
    trainings.start()
    gpu_jobs.start()
    since, started = time.time(), time.monotonic()
    demo = launch(",".join(ASSETS), profiles["demo"], postgres_dagster_home, logs["demo"], env, cwd=work)
    second = None
    try:
        # launch() copies this process's environment, which holds no S3 credentials: only the nodes have them.
        assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"} & set(psutil.Process(demo.pid).environ())
        [demo_run] = wait_until(lambda: runs_of(instance, since), 120, "the demo run was created", demo, logs["demo"])
        wait_until(lambda: any(s.get((demo_run.run_id, "lora_adapter")) == "RUNNING" for s in gpu_jobs.samples),
                   600, "the demo's lora_adapter ran on Ray", demo, logs["demo"])
        second = launch("lora_adapter", profiles["second"], postgres_dagster_home, logs["second"], env, cwd=work)
        [second_run] = wait_until(lambda: [r for r in runs_of(instance, since) if r.run_id != demo_run.run_id], 120,
                                  "the second run was created", second, logs["second"])
        # Its training is the second one seen (the GPU was the demo's until then); its parent is the step process,
        # which uploads the adapter once the training has exited.
        wait_until(lambda: len(trainings.seen) >= 2, 600, "the second run's training started", second, logs["second"])
        training_pid, training = list(trainings.seen.items())[1]
        step = psutil.Process(training["step_pid"])
        assert "execute_step" in " ".join(step.cmdline()), step.cmdline()
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(training_pid).wait(600)
        version = f"{prefix}/lora_adapter/{second_run.run_id}"
        wait_until(lambda: fs.find(version), 120, "the second run's adapter upload began", second, logs["second"], every=0.01)
        step.suspend()
        state["killed_at"] = time.time()
        state["half_keys"] = sorted(fs.find(version))
        step.kill()
        state["good_manifest"] = ArtifactManifest.model_validate_json(fs.cat_file(f"{prefix}/lora_adapter/{demo_run.run_id}/{MANIFEST_FILE}"))
        state["second_rc"] = finish(second, 300)
        state["demo_rc"] = finish(demo, 900)
    finally:
        for process in (demo, second):
            if process is not None:
                kill_group(process)
        trainings.stop.set()
        gpu_jobs.stop.set()
        trainings.join()
        gpu_jobs.join()
    state["timings"]["both runs"] = time.monotonic() - started
    state.update(demo=instance.get_run_by_id(demo_run.run_id), second=instance.get_run_by_id(second_run.run_id),
                 training=list(trainings.seen.values()), samples=gpu_jobs.samples, nodes=ray_cluster.node_ids(),
                 jobs=ray_jobs(ray_cluster, {demo_run.run_id, second_run.run_id}))
    print("\n[scale-out] Ray, seconds:", {"cluster start": round(ray_cluster.start_seconds),
                                          **{k: round(v) for k, v in state["timings"].items()}})
    return state


def test_the_demo_graph_runs_on_ray_with_each_step_where_its_request_fits(ray_runs):
    run, instance = ray_runs["demo"], ray_runs["instance"]
    assert ray_runs["demo_rc"] == 0 and run.status == dg.DagsterRunStatus.SUCCESS, ray_runs["logs"]["demo"].read_text()[-5000:]
    assert set(materialized(instance, run.run_id)) == set(ASSETS)
    checks = [e.dagster_event.event_specific_data for e in events(instance, run.run_id, "ASSET_CHECK_EVALUATION")]
    # Every check ran and passed but the release gate, which the demo profile turns off: a warning, never a pass.
    assert {c.check_name for c in checks if not c.passed} == {"release_gate"}, [c for c in checks if not c.passed]
    assert all(c.severity == dg.AssetCheckSeverity.WARN for c in checks if c.check_name == "release_gate")

    jobs = {op: job for (run_id, op), job in ray_runs["jobs"].items() if run_id == run.run_id}
    nodes = ray_runs["nodes"]
    # Every step (the assets and the checks that run as steps of their own) was a Ray job, and Ray ran it where its
    # request fits: the GPU steps on the worker, the only node with a GPU (and no CPU), everything else on the head.
    steps = {e.step_key for e in events(instance, run.run_id, "STEP_START")}
    assert set(jobs) >= set(ASSETS) and set(jobs) == steps, (sorted(jobs), sorted(steps))
    for op, job in jobs.items():
        assert job.status.value == "SUCCEEDED", (op, job.message)
        assert nodes[job.driver_node_id] == ("worker" if op in GPU_STEPS else "head"), (op, nodes[job.driver_node_id])


def test_the_pipes_training_process_runs_on_the_node_ray_chose_and_reports_to_dagster(ray_runs):
    run, instance = ray_runs["demo"], ray_runs["instance"]
    # Seen while they ran (the demo's, then the second run's): in the worker node's process tree, with the GPU Ray
    # assigned and that node's own disk.
    assert len(ray_runs["training"]) == 2, ray_runs["training"]
    for training in ray_runs["training"]:
        assert training["node"] == training["MEDCOT_TEST_RAY_NODE"] == "worker", training
        assert training["CUDA_VISIBLE_DEVICES"] == "0", training
        assert training["MEDCOT_ARTIFACT_CACHE"] == str(ray_runs["caches"]["worker"]), training
    # Its Pipes messages reached the run's event log in PostgreSQL: log lines and the materialization it reported.
    logs = log_text(instance, run.run_id, "lora_adapter")
    assert re.search(r"training \S+ with transformers in 1 process\(es\)", logs), logs[-3000:]
    assert "checkpoint-2 committed to s3://" in logs
    metadata = materialized(instance, run.run_id)["lora_adapter"]
    assert metadata["global_step"] == 2 and "| backend | transformers |" in metadata["training"]
    assert [row.data["step"] for row in metadata["loss_per_step"].records] == [1, 2]


def observe_s3(monkeypatch, s3_server) -> None:
    """The test's own look at S3 needs the credentials the nodes have (the launching process had none)."""
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)


def test_the_run_reads_and_writes_artifacts_only_through_s3(ray_runs, s3_server, monkeypatch):
    """Every version is committed in S3, each node's cache holds copies of what the other node made (the only way
    across is S3), and nothing was written to a local artifacts directory."""
    observe_s3(monkeypatch, s3_server)
    run, instance, root = ray_runs["demo"], ray_runs["instance"], ray_runs["root"]
    recorded = materialized(instance, run.run_id)
    store = ArtifactRoot(root, cache_dir=str(ray_runs["work"] / "verifier"))
    for asset in ASSETS:
        assert recorded[asset]["artifact"].startswith(f"{root}/{asset}/{run.run_id}"), recorded[asset]
        assert read_manifest(store.location(asset, run.run_id)) is not None, asset
    assert not (ray_runs["work"] / "artifacts").exists() and not (REPO_ROOT / "artifacts" / "lora_adapter" / run.run_id).exists()

    caches = ray_runs["caches"]
    # Made on the head (CPU steps), read on the worker: the splits; made on the worker, read on the head: the model.
    for node, asset in (("worker", "formatted_splits"), ("head", "merged_model"), ("head", "rouge_report"), ("head", "lora_adapter")):
        copy = caches[node] / asset / run.run_id
        assert (copy / MANIFEST_FILE).read_text() == read_manifest(store.location(asset, run.run_id)).model_dump_json(indent=1), (node, asset)
    # The contracts name the artifacts by their place in S3, not by a node's copy.
    merge = MergeRecord.read(store.local_copy(recorded["merged_model"]["artifact"]))
    assert merge.adapter_dir == recorded["lora_adapter"]["artifact"]


def test_postgres_holds_the_run_and_its_events(ray_runs, postgres_server):
    instance, run = ray_runs["instance"], ray_runs["demo"]
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
    assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
    rows = postgres_server.sql(f"select count(*) from event_logs where run_id = '{run.run_id}' and dagster_event_type = 'ASSET_MATERIALIZATION'")
    assert int(rows) == len(ASSETS)


def test_two_concurrent_runs_never_hold_the_one_gpu_at_once(ray_runs):
    """Dagster's pool lets both runs' GPU steps go (limit 2); the cluster has one GPU, so Ray keeps one run's GPU
    step PENDING while the other's runs, and the two never hold the GPU at the same time."""
    instance, demo, second = ray_runs["instance"], ray_runs["demo"], ray_runs["second"]
    ours = {demo.run_id, second.run_id}
    samples = [{key: status for key, status in sample.items() if key[0] in ours} for sample in ray_runs["samples"]]
    # Ray's view: never two GPU jobs running; and at some moment one run's waited, PENDING, while the other's ran.
    assert all(sum(status == "RUNNING" for status in sample.values()) <= 1 for sample in samples), samples
    assert any(set(sample.values()) >= {"RUNNING", "PENDING"} and len({run for run, _ in sample}) == 2 for sample in samples), samples
    # Dagster's view: from step start to step success (or, for the second run, to the moment it was killed), the
    # demo's GPU steps and the second run's training do not overlap.
    windows = [(start, end, demo.run_id) for _, start, end in step_windows(instance, demo.run_id, GPU_STEPS).values()]
    [second_start] = [e.timestamp for e in events(instance, second.run_id, "STEP_START") if e.step_key == "lora_adapter"]
    windows = sorted([*windows, (second_start, ray_runs["killed_at"], second.run_id)])
    assert len(windows) == len(GPU_STEPS) + 1 and all(later[0] >= earlier[1] for earlier, later in itertools.pairwise(windows)), windows


def test_a_run_killed_mid_upload_leaves_the_previous_version_intact_and_nothing_half_written_recorded(ray_runs, s3_server, monkeypatch, tmp_path):
    """The second run's step, killed on the GPU node while its adapter was half uploaded: the run fails, nothing of
    it is recorded or trusted, and the demo's adapter committed before it is unchanged, byte for byte."""
    observe_s3(monkeypatch, s3_server)
    instance, demo, killed = ray_runs["instance"], ray_runs["demo"], ray_runs["second"]
    store = ArtifactRoot(ray_runs["root"], cache_dir=str(tmp_path / "fresh-node"))
    half = f"{ray_runs['prefix']}/lora_adapter/{killed.run_id}"
    # Caught mid-write: part of the new adapter is under its final keys, its manifest is not.
    assert ray_runs["half_keys"] and f"{half}/{MANIFEST_FILE}" not in ray_runs["half_keys"], ray_runs["half_keys"]
    assert ray_runs["second_rc"] != 0 and killed.status == dg.DagsterRunStatus.FAILURE
    assert ray_runs["jobs"][(killed.run_id, "lora_adapter")].status.value == "FAILED"

    assert "lora_adapter" not in materialized(instance, killed.run_id)
    assert instance.get_latest_materialization_event(dg.AssetKey("lora_adapter")).run_id == demo.run_id
    assert store.committed_versions("lora_adapter") == [demo.run_id]
    assert store.read_ref("lora_adapter", killed.run_id) == store.location("lora_adapter", demo.run_id, "adapter")
    with pytest.raises(ArtifactError, match="not committed"):
        store.local_copy(store.location("lora_adapter", killed.run_id, "adapter"))
    # The previous version: the same manifest as when the kill landed, every byte as it lists.
    assert read_manifest(store.location("lora_adapter", demo.run_id)) == ray_runs["good_manifest"]
    copy = download_committed(store.location("lora_adapter", demo.run_id), tmp_path / "check")
    assert "adapter/adapter_model.safetensors" in copy.files
