"""Which executor runs the steps (MEDCOT_EXECUTOR), and what each step asks a Ray cluster for (its op tags)."""

import json

import dagster as dg
import pytest

from medcot_pipeline_tests.pipeline_harness import ASSETS, load_defs, tiny_profile, write_profile

pytest.importorskip("dagster_ray", reason="dagster-ray is not installed (pip install -e '.[scale-out]')")


def ray_tags(defs) -> dict[str, dict]:
    graph = defs.resolve_asset_graph()
    return {asset: json.loads(graph.get(dg.AssetKey(asset)).assets_def.op.tags["dagster-ray/config"]) for asset in ASSETS}


def executor_config(defs) -> dict:
    executor = defs.resolve_implicit_global_asset_job_def().executor_def
    return executor.name, executor.config_schema.resolve_config({}).value["config"]


def test_gpu_steps_ask_ray_for_gpus_from_the_profile_and_cpu_steps_for_a_cpu(tmp_path):
    profile = tiny_profile(tmp_path / "model", tmp_path / "artifacts", lora_adapter={"num_gpus": 2})
    tags = ray_tags(load_defs(write_profile(tmp_path / "two_gpus.yaml", profile)))
    assert tags == {
        "raw_dataset": {"num_cpus": 1}, "benchmark_questions": {"num_cpus": 1}, "formatted_splits": {"num_cpus": 1},
        "hub_release": {"num_cpus": 1}, "lora_adapter": {"num_gpus": 2}, "merged_model": {"num_gpus": 1},
        "rouge_report": {"num_gpus": 1}, "benchmark_report": {"num_gpus": 1},
    }


def test_the_multiprocess_executor_is_the_default(tmp_path, monkeypatch):
    monkeypatch.delenv("MEDCOT_EXECUTOR", raising=False)
    defs = load_defs(write_profile(tmp_path / "tiny.yaml", tiny_profile(tmp_path / "model", tmp_path / "artifacts")))
    name, config = executor_config(defs)
    assert name == "multiprocess" and config["tag_concurrency_limits"][0]["key"] == "medcot/gpu"


def test_medcot_executor_ray_submits_to_ray_address_forwarding_no_secret(tmp_path, monkeypatch):
    profile = write_profile(tmp_path / "tiny.yaml", tiny_profile(tmp_path / "model", tmp_path / "artifacts"))
    monkeypatch.setenv("MEDCOT_EXECUTOR", "ray")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(ValueError, match="MEDCOT_EXECUTOR=ray needs RAY_ADDRESS"):
        load_defs(profile)

    monkeypatch.setenv("RAY_ADDRESS", "http://ray-head:8265")
    for secret in ("HF_TOKEN", "WANDB_API_KEY", "AWS_SECRET_ACCESS_KEY", "DAGSTER_PG_PASSWORD"):
        monkeypatch.setenv(secret, "SECRET-VALUE")
    name, config = executor_config(load_defs(profile))
    assert name == "ray" and config["ray"]["address"] == "http://ray-head:8265"
    # Executor-level requests would override every step's tag in dagster-ray: none are set.
    assert config["ray"]["num_gpus"] is None and config["ray"]["num_cpus"] is None
    forwarded = config["ray"]["env_vars"]
    assert f"MEDCOT_PROFILE={profile.resolve()}" in forwarded and "MEDCOT_EXECUTOR" in forwarded
    assert not [v for v in forwarded if "SECRET" in v or v.split("=")[0] in ("HF_TOKEN", "WANDB_API_KEY", "AWS_SECRET_ACCESS_KEY", "DAGSTER_PG_PASSWORD")]


def test_an_unknown_executor_name_fails_naming_the_choices(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDCOT_EXECUTOR", "kubernetes")
    with pytest.raises(ValueError, match="MEDCOT_EXECUTOR='kubernetes': expected multiprocess or ray"):
        load_defs(write_profile(tmp_path / "tiny.yaml", tiny_profile(tmp_path / "model", tmp_path / "artifacts")))
