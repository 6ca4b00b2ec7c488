"""Answer the validation questions with the fine-tuned (and the base) model and write samples.jsonl and report.json."""

from __future__ import annotations

import gc
import json
import logging
from pathlib import Path

import pandas as pd
import torch

from medcot_pipeline.configs import EvaluationConfig
from medcot_pipeline.generation import GenerationRun, generate_answers, load_for_inference
from medcot_pipeline.metrics import graded_response, score_answers, summarize

REQUIRED_COLUMNS = ("question", "response", "target")


def write_rouge_report(
    merged_model_path: str,
    base_model_ref: str | None,
    validation: pd.DataFrame,
    config: EvaluationConfig,
    out_dir: Path,
    log=logging,
) -> dict:
    """Grade the fine-tuned model (and the base model, when configured and given) on the same questions.

    Returns what report.json holds: per model its metrics and generation speed, plus n and the config.
    """
    missing = [column for column in REQUIRED_COLUMNS if column not in validation.columns]
    if missing:
        raise ValueError(f"validation split lacks column(s) {missing}; columns found: {list(validation.columns)}")
    if validation.empty:
        raise ValueError("validation split has no rows to answer")
    rows = validation.head(config.num_questions).reset_index(drop=True) if config.num_questions else validation.reset_index(drop=True)
    questions = rows["question"].tolist()

    models = {"fine_tuned": merged_model_path}
    if config.compare_with_base and base_model_ref:
        models["base"] = base_model_ref
    elif config.compare_with_base:
        log.warning("compare_with_base is set but no base model was given; grading the fine-tuned model alone")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict = {"n": len(rows), "models": models, "config": config.model_dump()}
    with open(out_dir / "samples.jsonl", "w", encoding="utf-8") as samples:
        for label, reference in models.items():
            log.info(f"{label}: answering {len(rows)} validation question(s) with {reference}")
            run = _answer(reference, questions, config)
            report[label] = summarize(run.answers, rows) | {
                "tokens_per_second": run.tokens_per_second,
                "wall_seconds": run.wall_seconds,
                "total_new_tokens": run.total_new_tokens,
            }
            for record in _sample_records(label, run, rows):
                samples.write(json.dumps(record, ensure_ascii=False) + "\n")
            metrics = report[label]
            log.info(
                f"{label}: ROUGE-L (response) {metrics['rouge_l_response']:.4f}, format compliance "
                f"{metrics['format_compliance']:.2%}, truncated {metrics['truncation_rate']:.2%}, "
                f"{run.tokens_per_second:.1f} generated tokens/s"
            )
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    return report


def _answer(reference: str, questions: list[str], config: EvaluationConfig) -> GenerationRun:
    """Load, answer, free: only one model is ever in memory."""
    model, tokenizer = load_for_inference(reference, backend=config.inference_backend, attention=config.attention)
    cache = {"cache_implementation": "static"} if config.kv_cache == "static" else {}
    try:
        return generate_answers(model, tokenizer, questions, config, **cache)
    finally:
        del model, tokenizer
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _sample_records(label: str, run: GenerationRun, rows: pd.DataFrame) -> list[dict]:
    scores = score_answers(run.answers, rows)
    records = []
    for i, answer in enumerate(run.answers):
        record = {
            "model": label,
            "question": answer.question,
            "reference": rows["response"].iloc[i],
            "output": answer.text,
            "think": answer.parsed.think,
            "response": answer.parsed.response,
            "scored_response": graded_response(answer),
            "truncated": answer.truncated,
            "continued": answer.continued,
            "prompt_truncated": answer.prompt_truncated,
            "compliant": answer.parsed.compliant,
            "problems": list(answer.parsed.problems),
            "new_tokens": answer.new_tokens,
            "rouge_l_response": float(scores["rouge_l_response"].iloc[i]),
            "rouge_l_full": float(scores["rouge_l_full"].iloc[i]),
        }
        if "chosen_option" in scores.columns:
            # pandas stores a missing letter as NaN, which json.dumps would write as invalid JSON.
            record["chosen_option"] = _letter_or_none(scores["chosen_option"].iloc[i])
            record["answer_idx"] = _letter_or_none(rows["answer_idx"].iloc[i])
        records.append(record)
    return records


def _letter_or_none(value) -> str | None:
    return value if isinstance(value, str) else None
