"""The whole graph on real weights: SmolLM2-135M-Instruct, a few records, a few steps."""

import json
from pathlib import Path

import dagster as dg
import pytest

from medcot_pipeline_tests.pipeline_harness import ASSETS, load_defs, materialize, materialized_in, tiny_profile, write_profile


@pytest.mark.slow
def test_whole_graph_on_smollm2(smollm2_dir, tmp_path):
    artifacts = tmp_path / "artifacts"
    profile = tiny_profile(
        smollm2_dir, artifacts,
        raw_dataset={"max_records": 14},
        lora_adapter={"max_steps": 3, "learning_rate": 3e-4, "report_to_wandb": True},
        rouge_report={"num_questions": 2, "max_new_tokens": 48, "continuation_tokens": 16},
    )
    (tmp_path / "home").mkdir()
    instance = dg.DagsterInstance.local_temp(str(tmp_path / "home"))
    result = materialize(load_defs(write_profile(tmp_path / "smollm2.yaml", profile)), instance)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    assert materialized_in(result) == set(ASSETS)
    assert all(check.passed for check in result.get_asset_check_evaluations())

    adapter = Path(result.output_for_node("lora_adapter"))
    assert (adapter / "adapter_config.json").exists() and (adapter / "adapter_model.safetensors").exists()
    merged = Path(result.output_for_node("merged_model"))
    assert (merged / "config.json").exists() and list(merged.glob("*.safetensors"))
    report = json.loads((Path(result.output_for_node("rouge_report")) / "report.json").read_text())
    assert 0.0 <= report["fine_tuned"]["rouge_l_response"] <= 1.0
    assert "base" in report
    staged = Path(result.output_for_node("hub_release"))
    assert (staged / "model" / "README.md").exists()
    assert list((artifacts / "wandb").rglob("*.wandb")), "W&B offline run files were not written"

    release = [m for m in result.get_asset_materialization_events() if m.asset_key == dg.AssetKey("hub_release")][0]
    assert "staged, not pushed" in release.materialization.metadata["status"].value
    training = [m for m in result.get_asset_materialization_events() if m.asset_key == dg.AssetKey("lora_adapter")][0]
    assert "train_loss" in json.dumps(list(training.materialization.metadata))
