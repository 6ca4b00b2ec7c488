"""benchmarks/quality_on_gpu.py --tiny: the quality benchmark's whole path (profile building, Dagster, the JSON) on the CPU."""

import json
import subprocess
import sys
from pathlib import Path

from medcot_pipeline_tests.conftest import REPO_ROOT


def test_tiny_quality_run_over_two_split_seeds_writes_every_number(real_records_path, tmp_path):
    out, seeds_out = tmp_path / "quality.json", tmp_path / "quality_seeds.json"
    run = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "quality_on_gpu.py"), "--tiny", "--records", str(real_records_path),
         "--work", str(tmp_path / "work"), "--out", str(out), "--seeds", "1,2", "--seeds-out", str(seeds_out),
         "--profile-setting", "tiny"],
        capture_output=True, text=True, timeout=1500,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(out.read_text())
    row, other = report["settings"]
    assert [row["split_seed"], other["split_seed"]] == [1, 2]
    assert row["setting"] == "tiny@seed1" and row["success"] is True and row["run_success"] is True and row["errors"] == []
    # The five assets ran as Dagster steps, the training process trained and evaluated, the report graded both models.
    assert {"raw_dataset", "formatted_splits", "lora_adapter", "merged_model", "rouge_report"} <= set(row["step_seconds"])
    assert [entry["step"] for entry in row["eval_loss_per_step"]] == [2]
    # Graded during training at the same step, which is the one kept.
    assert [entry["step"] for entry in row["graded_per_step"]] == [2] and row["kept_step"] == 2
    assert row["training_values"]["learning_rate"] == 1e-3 and row["train_records"] > 0
    assert row["n_questions"] == 2 and row["base_from"] == "this run"
    for scores in (row["fine_tuned"], row["base"]):
        assert 0.0 <= scores["format_compliance"] <= 1.0 and 0.0 <= scores["rouge_l_response"] <= 1.0
        assert scores["truncation_rate"] == 1.0  # random weights never close </response> in 8 + 4 tokens
    assert row["meets_target"] is False and row["rouge_l_response_over_base"] is not None
    assert "seed: 2" in Path(tmp_path / "work" / "tiny@seed2" / "profile.yaml").read_text()
    # Each split compared with its own base answers, with the paired interval of the ROUGE-L gain.
    assert set(row["intervals"]["rouge_l_response"]) == {"difference", "low", "high", "verdict"}

    summary = json.loads(seeds_out.read_text())
    assert summary["profile"] == "tiny" and summary["seeds"] == [1, 2] and len(summary["runs"]) == 2
    assert set(summary["mean"]) == {"format_compliance", "rouge_l_response_over_base", "truncation_rate"}
    assert summary["mean"]["truncation_rate"] == 1.0 and summary["meets_target_on_mean"] is False
    assert summary["spread"]["rouge_l_response_over_base"]["min"] <= summary["mean"]["rouge_l_response_over_base"]
