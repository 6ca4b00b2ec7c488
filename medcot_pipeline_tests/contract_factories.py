"""Contracts as the stages write them, for tests of their readers: built through the same pydantic models,
so a renamed field breaks these too instead of leaving a reader silently tested against keys nobody writes."""

from __future__ import annotations

from medcot_pipeline.contracts import (
    BaseModelRef,
    BenchmarkReport,
    BenchmarkScores,
    DatasetProvenance,
    EvaluationReport,
    GenerationTotals,
    ModelScores,
    SplitsSummary,
    TrainingSummary,
    WandbRun,
)
from medcot_pipeline.settings import BenchmarkEvaluationSettings, EvaluationSettings, FormattingSettings, TrainingSettings

HUB_DATASET = "FreedomIntelligence/medical-o1-reasoning-SFT"


def hub_dataset(**overrides) -> DatasetProvenance:
    values = dict(
        source="hub", hub_id=HUB_DATASET, hub_config="en", hub_split="train",
        revision="fc2c9e8f37b5d1a8c8f3d5a0e7e1c3b2a9d4f6e7", location=f"{HUB_DATASET} (en, split train)",
        format="hub", records=19704, content_sha256="a" * 64, code_version="raw000000001",
    )
    return DatasetProvenance(**{**values, **overrides})


def training_summary(**overrides) -> TrainingSummary:
    values = dict(
        backend="unsloth",
        base_weights="4-bit NF4 (QLoRA)",
        processes=1,
        hardware="NVIDIA H100 80GB HBM3",
        base_model=BaseModelRef(name="meta-llama/Llama-3.2-3B-Instruct", reference="meta-llama/Llama-3.2-3B-Instruct"),
        dataset=hub_dataset(),
        splits_sha256="b" * 64,
        settings=TrainingSettings(max_steps=200, learning_rate=1e-5, lora_target_modules=["q_proj", "v_proj"]),
        max_seq_length=2048,
        profile="t4",
        code_version="a1b2c3d4e5f6",
        lineage={"raw_dataset": "raw000000001", "formatted_splits": "spl000000001"},
        global_step=200,
        train_rows=19604,
        validation_rows=100,
        train_loss_final=1.21,
        eval_loss_final=1.34,
        learning_rate_final=0.0,
        loss_per_step=[{"step": 1, "loss": 2.1}, {"step": 200, "loss": 1.21}],
        eval_losses=[{"step": 200, "eval_loss": 1.34}],
        tokens_seen=1_100_000,
        tokens_this_run=1_100_000,
        tokens_per_second=1448.0,
        training_seconds=3700.0,
        wall_time_seconds=3725.0,
        peak_gpu_memory_gib=3.1,
        versions={"python": "3.12.0", "torch": "2.11.0"},
        wandb=WandbRun(run_path="clinic-ml/medcot/abc123", url="https://wandb.ai/clinic-ml/medcot/runs/abc123", dir="/tmp/wandb/run-abc123"),
    )
    return TrainingSummary(**{**values, **overrides})


def scores(**overrides) -> ModelScores:
    values = dict(
        rouge_l_response=0.31876, rouge_l_full=0.27412, format_compliance=0.96, truncation_rate=0.03,
        continuation_rate=0.05, mean_output_tokens=412.0, n=100, mc_accuracy=0.58, mc_n=60,
        tokens_per_second=6100.0, wall_seconds=70.0, total_new_tokens=41200,
    )
    return ModelScores(**{**values, **overrides})


def evaluation_report(**overrides) -> EvaluationReport:
    values = dict(
        n=100,
        models={"fine_tuned": "/artifacts/merged_model/r1/model", "base": "meta-llama/Llama-3.2-3B-Instruct"},
        merged_model_dir="/artifacts/merged_model/r1/model",
        settings=EvaluationSettings(max_new_tokens=1024),
        fine_tuned=scores(),
        base=scores(rouge_l_response=0.18234, rouge_l_full=0.16001, format_compliance=0.0, truncation_rate=0.11, mc_accuracy=0.55),
        code_version="e5e5e5e5e5e5",
    )
    return EvaluationReport(**{**values, **overrides})


def benchmark_report(accuracy: tuple[float, float] = (0.6, 0.55), n: int = 20, **overrides) -> BenchmarkReport:
    """benchmark_report.json for one benchmark, fine-tuned and base at these accuracies."""
    by_model = [
        BenchmarkScores(benchmark="medqa", n=n, accuracy=value, correct=round(value * n), no_choice={}, cut_off_rate=0.0,
                        mean_output_tokens=300.0)
        for value in accuracy
    ]
    totals = GenerationTotals(wall_seconds=1.0, total_new_tokens=n * 300, tokens_per_second=300.0 * n)
    values = dict(
        models={"fine_tuned": "/artifacts/merged_model/r1/model", "base": "meta-llama/Llama-3.2-3B-Instruct"},
        merged_model_dir="/artifacts/merged_model/r1/model", settings=BenchmarkEvaluationSettings(), sources=[], questions=n,
        fine_tuned=[by_model[0]], base=[by_model[1]], comparisons=[], generation={"fine_tuned": totals, "base": totals},
        wall_seconds=2.0,
    )
    return BenchmarkReport(**{**values, **overrides})


def splits_summary(**overrides) -> SplitsSummary:
    """formatted_splits' summary.json with its counts."""
    values = dict(
        dataset=hub_dataset(), settings=FormattingSettings(), tokenizer="meta-llama/Llama-3.2-3B-Instruct", max_seq_length=2048,
        cleaning={}, token_lengths={"max": 900.0}, over_max_seq_length=0, split={"seed": 3407}, input_rows=198,
        train_rows=154, validation_rows=38, dropped_rows=6, dropped_share=0.03, content_sha256="c" * 64,
    )
    return SplitsSummary(**{**values, **overrides})
