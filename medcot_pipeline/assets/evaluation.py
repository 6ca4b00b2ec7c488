"""Evaluation stage: answers from the fine-tuned and the base model, graded with ROUGE-L."""

import json
from pathlib import Path

import dagster as dg

from medcot_pipeline.assets.data import read_split
from medcot_pipeline.assets.model import GPU_POOL, GPU_TAG
from medcot_pipeline.profiles import Profile, code_version
from medcot_pipeline.resources import ArtifactStore, BaseModelResource

EVALUATION_GROUP = "evaluation"
METRICS = ("rouge_l_response", "rouge_l_full", "format_compliance", "truncation_rate", "mean_output_tokens", "mc_accuracy")


def comparison_table(report: dict) -> str:
    rows = ["| metric | base | fine-tuned |", "|---|---|---|"]
    for metric in METRICS:
        tuned = report.get("fine_tuned", {}).get(metric)
        base = report.get("base", {}).get(metric)
        if tuned is None and base is None:
            continue
        rows.append(f"| {metric} | {_fmt(base)} | {_fmt(tuned)} |")
    return "\n".join(rows)


def samples_table(samples_path: Path, limit: int = 3) -> str:
    rows = ["| model | question | response | ROUGE-L |", "|---|---|---|---|"]
    with open(samples_path) as handle:
        for line in list(handle)[: limit * 2]:
            sample = json.loads(line)
            cells = [sample.get("model", ""), sample.get("question", "")[:90], (sample.get("response") or "(none)")[:140]]
            cells = [str(c).replace("|", "/").replace("\n", " ") for c in cells]
            rows.append(f"| {' | '.join(cells)} | {_fmt(sample.get('rouge_l_response'))} |")
    return "\n".join(rows)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def build_evaluation_assets(profile: Profile) -> list[dg.AssetsDefinition]:
    EvaluationConfig = profile.config_class("rouge_report")
    base_settings = BaseModelResource(**profile.resource_values("base_model")).model_dump()

    def rouge_report(
        context: dg.AssetExecutionContext,
        config: EvaluationConfig,
        merged_model: str,
        formatted_splits: str,
        artifacts: ArtifactStore,
        base_model: BaseModelResource,
    ) -> dg.Output[str]:
        """ROUGE-L, format compliance and truncation for base vs fine-tuned on the validation split."""
        from medcot_pipeline.evaluation_report import write_rouge_report

        validation = read_split(formatted_splits, "validation")
        base_ref = base_model.resolve(artifacts) if config.compare_with_base else None
        with artifacts.new_version("rouge_report", context.run_id) as staging:
            report = write_rouge_report(merged_model, base_ref, validation, config, staging, log=context.log)
        out_dir = artifacts.path("rouge_report", context.run_id)
        tuned = report.get("fine_tuned", {})
        base = report.get("base", {})
        metadata = {
            "path": dg.MetadataValue.path(str(out_dir)),
            "questions": report.get("n"),
            "rouge_l_response": tuned.get("rouge_l_response"),
            "rouge_l_full": tuned.get("rouge_l_full"),
            "format_compliance": tuned.get("format_compliance"),
            "truncation_rate": tuned.get("truncation_rate"),
            "comparison": dg.MetadataValue.md(comparison_table(report)),
            "samples": dg.MetadataValue.md(samples_table(out_dir / "samples.jsonl")),
            "generation_tokens_per_second": tuned.get("tokens_per_second"),
        }
        if base:
            metadata["base_rouge_l_response"] = base.get("rouge_l_response")
            metadata["base_format_compliance"] = base.get("format_compliance")
        return dg.Output(str(out_dir), metadata={k: v for k, v in metadata.items() if v is not None})

    report_asset = dg.asset(
        name="rouge_report",
        group_name=EVALUATION_GROUP,
        kinds={"pytorch"},
        op_tags=GPU_TAG,
        pool=GPU_POOL,
        code_version=code_version(
            [rouge_report, comparison_table, samples_table],
            [
                "evaluation_report.py", "generation.py", "grouped_attention.py",
                "tagged_output.py", "metrics.py", "chat_format.py",
            ],
            {"config": profile.asset_config("rouge_report").model_dump(), "base_model": base_settings},
        ),
    )(rouge_report)
    return [report_asset]


def load_report(report_dir: str) -> dict:
    return json.loads((Path(report_dir) / "report.json").read_text())
