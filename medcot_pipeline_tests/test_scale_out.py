"""Scale out with real parts, all started here on 127.0.0.1, nothing mocked (README "Scale out").

- S3 (SeaweedFS) as the artifacts root, steps on this host: a run killed while training leaves nothing recorded
  and a rerun with an empty local disk (another node) resumes from the checkpoint in S3; a run killed while
  uploading its adapter leaves the previous version intact and the half-written one untrusted.
- A Ray cluster (head: 2 CPUs, no GPU; worker: no CPU, 1 GPU) running every step through dagster-ray's
  ray_executor, the instance on PostgreSQL (dagster_home/dagster.postgres.yaml as shipped) and the artifacts
  on S3: the demo graph on the tiny random Llama end to end, steps placed by their requests, the Pipes training
  process on the GPU node reporting back; then two concurrent runs that take turns on the one GPU.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import psutil
import pytest

from medcot_pipeline.artifact_store import MANIFEST_FILE, ArtifactError, ArtifactRoot, download_committed, read_manifest
from medcot_pipeline.contracts import MergeRecord
from medcot_pipeline_tests.pipeline_harness import ASSETS, load_defs, materialize, step_errors, tiny_profile, write_profile
from medcot_pipeline_tests.scale_out_services import BIN, BUCKET, REPO_ROOT

pytestmark = pytest.mark.scale_out

TRAINING_MODULE = "medcot_pipeline.training.run"
GPU_STEPS = ("lora_adapter", "merged_model", "rouge_report")
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


@pytest.fixture(scope="module")
def kills_on_s3(s3_server, tiny_llama_dir, tmp_path_factory):
    """On an S3 root, with SQLite as the instance: the splits; a lora_adapter run whose training process is
    SIGKILLed once checkpoint-2 is committed in S3 (on node A); a rerun on node B (an empty cache); a third run
    (B again, already at the last step) whose step is stopped and killed the moment its adapter upload begins."""
    home = tmp_path_factory.mktemp("s3_kills")
    prefix = f"{BUCKET}/kills-{home.name}"
    root = f"s3://{prefix}"
    caches = {"a": home / "node-a", "b": home / "node-b"}
    fs = s3_server.filesystem()
    state: dict = {"home": home, "root": root, "prefix": prefix, "caches": caches, "log": home / "cli.log", "timings": {}}
    profile = write_profile(home / "crash.yaml", tiny_profile(tiny_llama_dir, root, lora_adapter=CRASH_TRAINING))

    with pytest.MonkeyPatch.context() as env:
        for name, value in s3_server.env.items():
            env.setenv(name, value)
        env.setenv("MEDCOT_ARTIFACT_CACHE", str(caches["a"]))
        instance = dg.DagsterInstance.local_temp(str(home))
        started = time.monotonic()
        splits = materialize(load_defs(profile), instance, ["raw_dataset", "formatted_splits"])
        assert splits.success, step_errors(instance, splits.run_id)
        state["timings"]["splits in process"] = time.monotonic() - started
        node = {name: {"MEDCOT_ARTIFACT_CACHE": str(path)} for name, path in caches.items()}

        # 1. Node A trains; killed right after checkpoint-2 is committed in S3.
        started = time.monotonic()
        cli = launch("lora_adapter", profile, home, state["log"], node["a"], cwd=home)
        try:
            deadline = time.monotonic() + 600
            while not fs.glob(f"{prefix}/lora_adapter/checkpoints/*/checkpoint-2/{MANIFEST_FILE}"):
                assert cli.poll() is None, f"the run ended (rc={cli.returncode}) before checkpoint-2 was committed"
                assert time.monotonic() < deadline, "checkpoint-2 was not committed within 600 s"
                time.sleep(0.05)
            [training] = descendants_running({cli.pid}, TRAINING_MODULE)
            training.send_signal(signal.SIGKILL)
            state["committed_at_kill"] = sorted(k.split("/")[-2] for k in fs.glob(f"{prefix}/lora_adapter/checkpoints/*/*/{MANIFEST_FILE}"))
        finally:
            state["crash_rc"] = finish(cli, 300)
        state["crash_run"] = instance.get_runs(limit=1)[0].run_id
        state["timings"]["killed training run"] = time.monotonic() - started

        # 2. Node B, which never saw this training, reruns it.
        assert not caches["b"].exists()
        started = time.monotonic()
        state["rerun_rc"] = finish(launch("lora_adapter", profile, home, state["log"], node["b"], cwd=home), 600)
        state["rerun"] = instance.get_runs(limit=1)[0].run_id
        state["timings"]["resumed run"] = time.monotonic() - started
        store = ArtifactRoot(root, cache_dir=str(home / "verifier"))
        state["good_manifest"] = read_manifest(store.location("lora_adapter", state["rerun"]))

        # 3. Node B again; stopped as the first file of its adapter lands in S3, then killed.
        started = time.monotonic()
        known = {f"{prefix}/lora_adapter/{name}" for name in ("checkpoints", state["rerun"])}
        cli = launch("lora_adapter", profile, home, state["log"], node["b"], cwd=home)
        try:
            deadline = time.monotonic() + 600
            while True:
                fresh = [k for k in fs.find(f"{prefix}/lora_adapter") if not any(k.startswith(f"{p}/") for p in known)]
                if fresh:
                    os.killpg(cli.pid, signal.SIGSTOP)  # freeze the upload where it is
                    break
                assert cli.poll() is None, f"the run ended (rc={cli.returncode}) before its upload started"
                assert time.monotonic() < deadline, "the upload did not start within 600 s"
                time.sleep(0.01)
            state["half_version"] = fresh[0].removeprefix(f"{prefix}/lora_adapter/").split("/")[0]
            state["half_keys"] = sorted(fs.find(f"{prefix}/lora_adapter/{state['half_version']}"))
            os.killpg(cli.pid, signal.SIGKILL)
        finally:
            finish(cli, 60)
        state["upload_killed_run"] = instance.get_runs(limit=1)[0].run_id
        state["timings"]["run killed mid-upload"] = time.monotonic() - started
        state["instance"] = instance
    print("\n[scale-out] S3 kills, seconds:", {k: round(v) for k, v in state["timings"].items()})
    return state


def test_killed_training_records_nothing_and_another_node_resumes_from_s3(kills_on_s3):
    """SIGKILL of the training process: no adapter recorded or committed. The rerun on node B (empty local disk)
    fetches the newest committed checkpoint from S3, resumes from it and trains to the last step."""
    state = kills_on_s3
    instance, crash, rerun = state["instance"], state["crash_run"], state["rerun"]
    store = ArtifactRoot(state["root"], cache_dir=str(state["home"] / "verifier"))
    assert state["crash_rc"] != 0 and "checkpoint-2" in state["committed_at_kill"]
    assert "checkpoint-6" not in state["committed_at_kill"], "training finished before the kill landed"
    assert "lora_adapter" not in materialized(instance, crash)
    assert crash not in store.committed_versions("lora_adapter")
    assert any("External execution process failed with code -9" in e for e in step_errors(instance, crash))

    assert state["rerun_rc"] == 0, state["log"].read_text()[-4000:]
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


def test_a_run_killed_mid_upload_leaves_the_previous_version_intact_and_nothing_half_written_recorded(kills_on_s3, tmp_path):
    state = kills_on_s3
    instance, good, killed = state["instance"], state["rerun"], state["upload_killed_run"]
    store = ArtifactRoot(state["root"], cache_dir=str(tmp_path / "fresh-node"))
    half = f"{state['prefix']}/lora_adapter/{state['half_version']}"
    # Caught mid-write: part of the new adapter is under its final keys, its manifest is not.
    assert state["half_version"] == killed
    assert state["half_keys"] and f"{half}/{MANIFEST_FILE}" not in state["half_keys"], state["half_keys"]

    assert "lora_adapter" not in materialized(instance, killed)
    latest = instance.get_latest_materialization_event(dg.AssetKey("lora_adapter"))
    assert latest.run_id == good
    assert store.committed_versions("lora_adapter") == [good]
    assert store.read_ref("lora_adapter", killed) == store.location("lora_adapter", good, "adapter")
    with pytest.raises(ArtifactError, match="not committed"):
        store.local_copy(store.location("lora_adapter", killed, "adapter"))
    # The previous version: same manifest as before the kill, every byte as it lists.
    assert read_manifest(store.location("lora_adapter", good)) == state["good_manifest"]
    copy = download_committed(store.location("lora_adapter", good), tmp_path / "check")
    assert "adapter/adapter_model.safetensors" in copy.files


# ------------------------------------------------------------------------------------------------ Ray + PostgreSQL + S3


class TrainingWatch(threading.Thread):
    """Records every training process that appears below the Ray nodes: which node's process tree it is in, and
    the environment Ray gave it."""

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
                    environ = process.environ()
                    node = next(self.leaders[p.pid] for p in process.parents() if p.pid in self.leaders)
                except (psutil.NoSuchProcess, psutil.AccessDenied, StopIteration):
                    continue
                self.seen[process.pid] = {"node": node, **{k: environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "MEDCOT_TEST_RAY_NODE", "MEDCOT_ARTIFACT_CACHE")}}
            time.sleep(0.1)


def ray_jobs(cluster, run_ids: set[str]) -> dict[tuple[str, str], object]:
    from ray.job_submission import JobSubmissionClient

    return {(j.metadata["dagster/run-id"], j.metadata["dagster/op"]): j
            for j in JobSubmissionClient(cluster.dashboard_url).list_jobs() if j.metadata.get("dagster/run-id") in run_ids}


@pytest.fixture(scope="module")
def ray_demo(ray_cluster, postgres_dagster_home, s3_server, tiny_llama_dir, tmp_path_factory):
    """The demo graph (tiny profile) once on the cluster: MEDCOT_EXECUTOR=ray, the instance on PostgreSQL, the
    artifacts on S3. The launching process holds no S3 credentials: only the steps on the nodes touch artifacts."""
    work = tmp_path_factory.mktemp("ray_demo")
    root = f"s3://{BUCKET}/ray-{work.name}"
    profile = write_profile(work / "tiny.yaml", tiny_profile(tiny_llama_dir, root))
    env = {"MEDCOT_EXECUTOR": "ray", "RAY_ADDRESS": ray_cluster.dashboard_url}
    instance = dg.DagsterInstance.from_config(str(postgres_dagster_home))
    watch = TrainingWatch(ray_cluster)
    watch.start()
    since, started = time.time(), time.monotonic()
    log = work / "cli.log"
    cli = launch(",".join(ASSETS), profile, postgres_dagster_home, log, env, cwd=work)
    # launch() copies this process's environment, which holds no S3 credentials: only the nodes have them.
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"} & set(psutil.Process(cli.pid).environ())
    rc = finish(cli, 900)
    watch.stop.set()
    watch.join()
    [run] = runs_of(instance, since)
    return {"rc": rc, "log": log, "run": run, "instance": instance, "root": root, "profile": profile, "work": work,
            "training": list(watch.seen.values()), "seconds": time.monotonic() - started,
            "jobs": ray_jobs(ray_cluster, {run.run_id}), "nodes": ray_cluster.node_ids(),
            "caches": {node.name: Path(node.env["MEDCOT_ARTIFACT_CACHE"]) for node in ray_cluster.nodes}}


def test_the_demo_graph_runs_on_ray_with_each_step_where_its_request_fits(ray_demo):
    run, instance = ray_demo["run"], ray_demo["instance"]
    assert ray_demo["rc"] == 0 and run.status == dg.DagsterRunStatus.SUCCESS, ray_demo["log"].read_text()[-5000:]
    assert set(materialized(instance, run.run_id)) == set(ASSETS)
    checks = [e.dagster_event.event_specific_data for e in events(instance, run.run_id, "ASSET_CHECK_EVALUATION")]
    assert len(checks) == 6 and all(c.passed for c in checks)

    jobs, nodes = ray_demo["jobs"], ray_demo["nodes"]
    # Every step (six assets, six checks) was a Ray job, and Ray ran it where its request fits: the GPU steps on the
    # worker, the only node with a GPU (and no CPU), everything else on the head (no GPU).
    assert {op for (_, op) in jobs} >= set(ASSETS) and len(jobs) == 12
    for (_, op), job in jobs.items():
        assert job.status.value == "SUCCEEDED", (op, job.message)
        assert nodes[job.driver_node_id] == ("worker" if op in GPU_STEPS else "head"), (op, nodes[job.driver_node_id])
    print(f"\n[scale-out] demo graph on Ray (6 assets, 6 checks): {ray_demo['seconds']:.0f} s")


def test_the_pipes_training_process_runs_on_the_node_ray_chose_and_reports_to_dagster(ray_demo):
    run, instance = ray_demo["run"], ray_demo["instance"]
    # Seen while it ran: in the worker node's process tree, with the GPU Ray assigned it and that node's own disk.
    [training] = ray_demo["training"]
    assert training["node"] == training["MEDCOT_TEST_RAY_NODE"] == "worker", training
    assert training["CUDA_VISIBLE_DEVICES"] == "0", training
    assert training["MEDCOT_ARTIFACT_CACHE"] == str(ray_demo["caches"]["worker"]), training
    # Its Pipes messages reached the run's event log in PostgreSQL: log lines and the materialization it reported.
    logs = log_text(instance, run.run_id, "lora_adapter")
    assert re.search(r"training \S+ with transformers in 1 process\(es\)", logs), logs[-3000:]
    assert "checkpoint-2 committed to s3://" in logs
    metadata = materialized(instance, run.run_id)["lora_adapter"]
    assert metadata["global_step"] == 2 and metadata["train_rows"] > 0 and metadata["backend"] == "transformers"


def observe_s3(monkeypatch, s3_server) -> None:
    """The test's own look at S3 needs the credentials the nodes have (the launching process had none)."""
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)


def test_the_run_reads_and_writes_artifacts_only_through_s3(ray_demo, s3_server, monkeypatch):
    """Every version is committed in S3, each node's cache holds copies of what the other node made (the only way
    across is S3), and nothing was written to a local artifacts directory."""
    observe_s3(monkeypatch, s3_server)
    run, instance, root = ray_demo["run"], ray_demo["instance"], ray_demo["root"]
    recorded = materialized(instance, run.run_id)
    store = ArtifactRoot(root, cache_dir=str(ray_demo["work"] / "verifier"))
    for asset in ASSETS:
        assert recorded[asset]["artifact"].startswith(f"{root}/{asset}/{run.run_id}"), recorded[asset]
        assert read_manifest(store.location(asset, run.run_id)) is not None, asset
    assert not (ray_demo["work"] / "artifacts").exists() and not (REPO_ROOT / "artifacts" / "lora_adapter" / run.run_id).exists()

    caches = ray_demo["caches"]
    # Made on the head (CPU steps), read on the worker: the splits; made on the worker, read on the head: the model.
    for node, asset in (("worker", "formatted_splits"), ("head", "merged_model"), ("head", "rouge_report"), ("head", "lora_adapter")):
        copy = caches[node] / asset / run.run_id
        assert (copy / MANIFEST_FILE).read_text() == read_manifest(store.location(asset, run.run_id)).model_dump_json(indent=1), (node, asset)
    # The contracts name the artifacts by their place in S3, not by a node's copy.
    merge = MergeRecord.read(store.local_copy(recorded["merged_model"]["artifact"]))
    assert merge.adapter_dir == recorded["lora_adapter"]["artifact"]


def test_postgres_holds_the_run_and_its_events(ray_demo, postgres_server):
    instance, run = ray_demo["instance"], ray_demo["run"]
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
    assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
    rows = postgres_server.sql(f"select count(*) from event_logs where run_id = '{run.run_id}' and dagster_event_type = 'ASSET_MATERIALIZATION'")
    assert int(rows) == len(ASSETS)


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


def test_two_concurrent_runs_never_hold_the_one_gpu_at_once(ray_demo, ray_cluster, postgres_dagster_home, tiny_llama_dir):
    """Dagster's pool would let both runs' training go (limit 2); the cluster has one GPU, so Ray keeps one run's
    GPU step PENDING while the other's runs, and the two never hold the GPU at the same time."""
    work = ray_demo["work"]
    env = {**os.environ, "DAGSTER_HOME": str(postgres_dagster_home)}
    subprocess.run([str(BIN / "dagster"), "instance", "concurrency", "set", "gpu", "2"], env=env, check=True, capture_output=True)
    instance = ray_demo["instance"]
    known = {r.run_id for r in instance.get_runs()}
    watch = RayJobWatch(ray_cluster, GPU_STEPS)
    watch.start()
    started = time.monotonic()
    clis = []
    for seed in (1, 2):  # other seeds, other checkpoints: each run trains for real
        profile = write_profile(work / f"seed{seed}.yaml", tiny_profile(tiny_llama_dir, ray_demo["root"], lora_adapter={"seed": seed}))
        clis.append(launch("lora_adapter", profile, postgres_dagster_home, work / f"seed{seed}.log",
                           {"MEDCOT_EXECUTOR": "ray", "RAY_ADDRESS": ray_cluster.dashboard_url}, cwd=work))
    codes = [finish(cli, 900) for cli in clis]
    watch.stop.set()
    watch.join()
    seconds = time.monotonic() - started
    runs = [r for r in instance.get_runs() if r.run_id not in known]
    assert codes == [0, 0] and len(runs) == 2 and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs), \
        [(work / f"seed{s}.log").read_text()[-3000:] for s in (1, 2)]
    ours = {r.run_id for r in runs}
    samples = [{key: status for key, status in sample.items() if key[0] in ours} for sample in watch.samples]

    # Ray's view: never two GPU jobs running; and at some moment one run's waited, PENDING, while the other's ran.
    assert all(sum(status == "RUNNING" for status in sample.values()) <= 1 for sample in samples), samples
    assert any({s for s in sample.values()} >= {"RUNNING", "PENDING"} and len({run for run, _ in sample}) == 2 for sample in samples), samples
    # Dagster's view: from step start to step success, the two GPU steps do not overlap.
    windows = sorted((start, end, run.run_id) for run in runs for _, start, end in step_windows(instance, run.run_id, GPU_STEPS).values())
    assert len(windows) == 2 and windows[1][0] >= windows[0][1], windows
    print(f"\n[scale-out] two concurrent lora_adapter runs on one GPU: {seconds:.0f} s")
