"""Answer the validation questions with the fine-tuned (and the base) model and write samples.jsonl and report.json."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pandas as pd

from medcot_pipeline.contracts import SAMPLES_FILE, EvaluationReport, ModelScores, PairedComparison
from medcot_pipeline.data.schema import EVALUATION_COLUMNS, require_columns
from medcot_pipeline.evaluation.answering import answer_with_each
from medcot_pipeline.evaluation.generation import GenerationRun, cache_kwargs, generate_answers
from medcot_pipeline.evaluation.metrics import graded_response, score_answers, summarize
from medcot_pipeline.evaluation.multiple_choice import MultipleChoiceScores, score_multiple_choice
from medcot_pipeline.evaluation.paired_stats import compare
from medcot_pipeline.evaluation.scores import METRICS, RIGHT_OR_WRONG
from medcot_pipeline.settings import EvaluationSettings


def write_rouge_report(
    merged_model_path: str,
    base_model_ref: str | None,
    validation: pd.DataFrame,
    config: EvaluationSettings,
    out_dir: Path,
    log=logging,
    code_version: str | None = None,
    merged_model_location: str | None = None,
) -> EvaluationReport:
    """Grade the fine-tuned model (and the base model, when configured and given) on the same questions,
    and write samples.jsonl and report.json (the `EvaluationReport`, settings included) into `out_dir`.

    Generation answers the first `num_questions` validation rows. Multiple-choice accuracy (option
    log-likelihood, multiple_choice.py) costs one forward a question, so it covers every validation row
    that has options; `mc_n` says how many, and `mc_accuracy` is None when none has. With the base model, every
    metric is also compared question by question (fine-tuned minus base, paired bootstrap interval). The report
    names the merged model by `merged_model_location` (its place in the artifacts root) when given, not by the
    local copy it loaded.
    """
    require_columns(validation, EVALUATION_COLUMNS, "validation split")
    if validation.empty:
        raise ValueError("validation split has no rows to answer")
    rows = validation.head(config.num_questions).reset_index(drop=True) if config.num_questions else validation.reset_index(drop=True)
    questions = rows["question"].tolist()

    models = {"fine_tuned": merged_model_path}
    if config.compare_with_base and base_model_ref:
        models["base"] = base_model_ref
    elif config.compare_with_base:
        log.warning("compare_with_base is set but no base model was given; grading the fine-tuned model alone")

    def answer(label: str, model, tokenizer) -> tuple[GenerationRun, MultipleChoiceScores]:
        progress = _progress_logger(label, config, log)
        progress("start", 0, len(questions))
        run = generate_answers(model, tokenizer, questions, config, progress=progress, **cache_kwargs(config))
        return run, score_multiple_choice(model, tokenizer, validation, batch_size=config.batch_size)

    answered = answer_with_each(models, config, answer, log)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scores: dict[str, ModelScores] = {}
    per_question: dict[str, pd.DataFrame] = {}
    mc_correct: dict[str, list[float]] = {}
    with open(out_dir / SAMPLES_FILE, "w", encoding="utf-8") as samples:
        for label, (run, choices) in answered.items():
            per_answer = score_answers(run.answers, rows)
            scores[label] = ModelScores(
                **summarize(run.answers, rows, per_answer),
                mc_accuracy=choices.accuracy,
                mc_n=choices.n,
                tokens_per_second=run.tokens_per_second,
                wall_seconds=run.wall_seconds,
                total_new_tokens=run.total_new_tokens,
            )
            per_question[label] = per_answer.assign(
                format_compliance=[float(a.parsed.compliant) for a in run.answers],
                truncation_rate=[float(a.truncated) for a in run.answers],
            )
            mc_correct[label] = choices.correct
            for record in _sample_records(label, run, rows, choices, per_answer):
                samples.write(json.dumps(record, ensure_ascii=False) + "\n")
            metrics = scores[label]
            log.info(
                f"{label}: ROUGE-L (response) {metrics.rouge_l_response:.4f}, format compliance "
                f"{metrics.format_compliance:.2%}, truncated {metrics.truncation_rate:.2%}, "
                f"{run.tokens_per_second:.1f} generated tokens/s, multiple-choice accuracy "
                f"{'n/a' if choices.accuracy is None else f'{choices.accuracy:.2%}'} (n={choices.n})"
            )
    comparisons = []
    if "base" in per_question:
        comparisons = paired_comparisons(per_question["fine_tuned"], per_question["base"], mc_correct["fine_tuned"], mc_correct["base"])
    for comparison in comparisons:
        log.info(
            f"fine-tuned minus base, {comparison.label}: {comparison.difference:+.4f} "
            f"(95% interval {comparison.low:+.4f} to {comparison.high:+.4f}): {comparison.verdict}"
        )
    report = EvaluationReport(
        n=len(rows),
        models=models,
        merged_model_dir=merged_model_location or str(merged_model_path),
        settings=config,
        fine_tuned=scores["fine_tuned"],
        base=scores.get("base"),
        comparisons=comparisons,
        code_version=code_version,
    )
    report.write(out_dir)
    return report


def paired_comparisons(tuned: pd.DataFrame, base: pd.DataFrame, tuned_mc: list[float], base_mc: list[float]) -> list[PairedComparison]:
    """Fine-tuned minus base for every per-answer metric, and for the option log-likelihood accuracy over the
    rows both models were scored on, each with its paired interval."""
    comparisons = []
    for metric in METRICS:
        if metric.key in tuned.columns:
            comparisons.append(
                compare(
                    metric.key,
                    metric.label,
                    tuned[metric.key].tolist(),
                    base[metric.key].tolist(),
                    higher_is_better=metric.higher_is_better,
                    right_or_wrong=metric.key in RIGHT_OR_WRONG,
                )
            )
    if tuned_mc and len(tuned_mc) == len(base_mc):
        metric = next(m for m in METRICS if m.key == "mc_accuracy")
        comparisons.append(compare(metric.key, metric.label, tuned_mc, base_mc, right_or_wrong=True))
    return comparisons


def _progress_logger(label: str, config: EvaluationSettings, log):
    """A `generate_answers` progress callback that logs each batch with the time elapsed and an estimate of what is
    left, and, during a long batch, how many tokens it has so far (a batch ends at its token limit at the latest)."""
    started = [time.perf_counter()]
    batch_started = [started[0]]
    answered = [0, 0]  # answers done, answers in all

    def report(phase: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if phase == "start":
            started[0] = batch_started[0] = now
            answered[:] = [0, total]
            batches = -(-total // config.batch_size)
            log.info(
                f"{label}: answering {total} question(s) in {batches} batch(es) of up to {config.batch_size}, "
                f"up to {config.max_new_tokens} new tokens each (+ {config.continuation_tokens} for an answer still open)"
            )
            return
        elapsed = now - started[0]
        if phase == "tokens":
            in_batch = now - batch_started[0]
            at_most = f", at most about {_clock(in_batch / done * (total - done))} left in this batch" if done else ""
            log.info(
                f"{label}: {answered[0]}/{answered[1]} answers; the batch is at {done} of up to {total} new tokens, "
                f"{_clock(elapsed)} elapsed{at_most}"
            )
            return
        answered[0] = done
        batch_started[0] = now
        left = f", about {_clock(elapsed / done * (total - done))} left" if done < total else ""
        log.info(f"{label}: {done}/{total} answers, {_clock(elapsed)} elapsed{left}")

    return report


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _sample_records(label: str, run: GenerationRun, rows: pd.DataFrame, choices: MultipleChoiceScores, scores: pd.DataFrame) -> list[dict]:
    records = []
    for i, answer in enumerate(run.answers):
        record = {
            "model": label,
            "index": i,  # the question's position, so the UI can put each model's answer to it side by side
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
        if "options" in rows.columns:
            # The letter the model finds most likely (rows carry the validation split's order, so row i is
            # choices' row i); None where the row has no options. pandas stores a missing letter as NaN,
            # which json.dumps would write as invalid JSON.
            record["chosen_option"] = choices.chosen[i]
            record["answer_idx"] = _letter_or_none(rows["answer_idx"].iloc[i]) if "answer_idx" in rows.columns else None
        records.append(record)
    return records


def _letter_or_none(value) -> str | None:
    return value if isinstance(value, str) else None
