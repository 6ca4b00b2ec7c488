"""The whole graph on real weights: SmolLM2-135M-Instruct, a few records, a few steps."""

import json
from pathlib import Path

import dagster as dg
import pytest
from huggingface_hub import ModelCard

from medcot_pipeline.contracts import EvaluationReport, TrainingSummary

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
    defs = load_defs(write_profile(tmp_path / "smollm2.yaml", profile))
    graph = defs.resolve_asset_graph()
    graph_versions = {key.to_user_string(): graph.get(key).code_version for key in graph.get_all_asset_keys()}
    result = materialize(defs, instance)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    assert materialized_in(result) == set(ASSETS)
    checks = {check.check_name: check for check in result.get_asset_check_evaluations()}
    # The profile turns the release gate off: a warning that blocks nothing, never a green pass; the rest pass.
    gate = checks.pop("release_gate")
    assert not gate.passed and gate.severity == dg.AssetCheckSeverity.WARN and gate.metadata["status"].value == "disabled"
    assert all(check.passed for check in checks.values()), {name: c.passed for name, c in checks.items()}
    assert {"training_data_is_decontaminated", "benchmark_revisions_pinned"} <= set(checks)

    adapter = Path(result.output_for_node("lora_adapter"))
    assert (adapter / "adapter_config.json").exists() and (adapter / "adapter_model.safetensors").exists()
    merged = Path(result.output_for_node("merged_model"))
    assert (merged / "config.json").exists() and list(merged.glob("*.safetensors"))
    report = EvaluationReport.read(result.output_for_node("rouge_report"))
    assert 0.0 <= report.fine_tuned.rouge_l_response <= 1.0 and report.base is not None
    staged = Path(result.output_for_node("hub_release"))
    assert list((artifacts / "wandb").rglob("*.wandb")), "W&B offline run files were not written"

    # The card states the facts of the run that made it, read back from the staged README.
    summary = TrainingSummary.read(adapter)
    card = ModelCard.load(staged / "model" / "README.md")
    assert summary.hardware.startswith("CPU") and f"Hardware: {summary.hardware}." in card.text
    assert summary.wall_time_seconds > 0 and "wall time: not recorded" not in card.text
    # The offline W&B run is on this machine: the card says so and publishes no path to it.
    assert summary.wandb is not None and summary.wandb.dir not in card.text and "logged to Weights & Biases offline" in card.text
    assert "float32 base weights, TRL and PEFT" in card.text  # CPU training: no 4-bit, no Unsloth
    for label, value in (("Optimizer steps", "3"), ("Learning rate", "0.0003"), ("Training backend", "transformers"),
                         ("Batch size per device", "2"), ("Max sequence length (tokens)", "384"), ("Steps trained", "3")):
        assert f"| {label} | {value} |" in card.text, label
    assert "medcot's bundled sample" in card.text
    for asset in ASSETS:
        assert f"| `{asset}` | `{graph_versions[asset]}` |" in card.text, asset

    release = [m for m in result.get_asset_materialization_events() if m.asset_key == dg.AssetKey("hub_release")][0]
    assert "staged, not pushed" in release.materialization.metadata["status"].value
    training = [m for m in result.get_asset_materialization_events() if m.asset_key == dg.AssetKey("lora_adapter")][0]
    assert "train_loss" in json.dumps(list(training.materialization.metadata))
