"""Answer standard benchmark questions with the fine-tuned and the base model, and grade them as a reasoning
model is graded: the model writes its answer in its own format, the choice is read out of it
(`choice_reading`), and a cut-off or unreadable answer is wrong. Option log-likelihood (lm-eval's way) is kept
as a second number. Fine-tuned minus base per benchmark comes with a paired interval and McNemar's p.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pandas as pd

from medcot_pipeline.contracts import (
    BENCHMARK_ANSWERS_FILE,
    BenchmarkReport,
    BenchmarkScores,
    BenchmarkSource,
    GenerationTotals,
    PairedComparison,
)
from medcot_pipeline.data.benchmarks import BENCHMARK_COLUMNS
from medcot_pipeline.data.schema import require_columns
from medcot_pipeline.evaluation.answering import answer_with_each
from medcot_pipeline.evaluation.choice_reading import NO_CHOICE_RULES, ChoiceReading, benchmark_prompt, read_choice
from medcot_pipeline.evaluation.generation import GenerationRun, cache_kwargs, generate_answers
from medcot_pipeline.evaluation.metrics import graded_response
from medcot_pipeline.evaluation.multiple_choice import MultipleChoiceScores, score_multiple_choice
from medcot_pipeline.evaluation.paired_stats import compare
from medcot_pipeline.settings import BenchmarkEvaluationSettings


def select_questions(questions: pd.DataFrame, max_questions: int | None, seed: int) -> pd.DataFrame:
    """Up to `max_questions` of each benchmark: a seeded sample, kept in the table's order, the same for both models."""
    require_columns(questions, BENCHMARK_COLUMNS, "benchmark questions")
    if max_questions is None:
        return questions.reset_index(drop=True)
    picked = [
        group.sample(n=min(max_questions, len(group)), random_state=seed).sort_index()
        for _, group in questions.groupby("benchmark", sort=False)
    ]
    return pd.concat(picked).reset_index(drop=True) if picked else questions.iloc[:0]


def write_benchmark_report(
    merged_model_path: str,
    base_model_ref: str | None,
    questions: pd.DataFrame,
    sources: list[BenchmarkSource],
    config: BenchmarkEvaluationSettings,
    out_dir: Path,
    log=logging,
    code_version: str | None = None,
    merged_model_location: str | None = None,
) -> BenchmarkReport:
    """Answer the selected questions with each model, read and grade the choices, compare; write
    benchmark_report.json and answers.jsonl into `out_dir`."""
    started = time.perf_counter()
    rows = select_questions(questions, config.max_questions, config.seed)
    if rows.empty:
        raise ValueError("no benchmark questions to answer")
    options = [json.loads(text) for text in rows["options"]]
    prompts = [benchmark_prompt(q, o, c) for q, o, c in zip(rows["question"], options, rows["context"], strict=True)]
    # The option log-likelihood prompt (lm-eval's) carries PubMedQA's abstract before its question.
    likelihood_rows = pd.DataFrame(
        {
            "question": [f"{c}\n{q}" if isinstance(c, str) else q for q, c in zip(rows["question"], rows["context"], strict=True)],
            "options": rows["options"],
            "answer_idx": rows["answer_idx"],
        }
    )

    models = {"fine_tuned": merged_model_path}
    if config.compare_with_base and base_model_ref:
        models["base"] = base_model_ref
    counts = rows["benchmark"].value_counts(sort=False).to_dict()
    log.info(f"answering {len(rows)} benchmark question(s) ({', '.join(f'{k} {v}' for k, v in counts.items())}) with {', '.join(models)}")

    def answer(label: str, model, tokenizer) -> tuple[GenerationRun, MultipleChoiceScores]:
        run = generate_answers(model, tokenizer, prompts, config, progress=_progress(label, log), **cache_kwargs(config))
        log.info(f"{label}: {run.total_new_tokens:,} tokens in {run.wall_seconds:.1f} s ({run.tokens_per_second:,.0f} tokens/s)")
        return run, score_multiple_choice(model, tokenizer, likelihood_rows, batch_size=config.batch_size)

    answered = answer_with_each(models, config, answer, log)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scores: dict[str, list[BenchmarkScores]] = {}
    correct: dict[str, list[float]] = {}
    likelihood_correct: dict[str, list[float]] = {}
    cut_off: dict[str, list[float]] = {}
    with open(out_dir / BENCHMARK_ANSWERS_FILE, "w", encoding="utf-8") as answers_file:
        for label, (run, likelihood) in answered.items():
            readings = [read_choice(graded_response(a), o, cut_off=a.truncated) for a, o in zip(run.answers, options, strict=True)]
            correct[label] = [float(r.choice == letter) for r, letter in zip(readings, rows["answer_idx"], strict=True)]
            likelihood_correct[label] = [float(c == letter) for c, letter in zip(likelihood.chosen, rows["answer_idx"], strict=True)]
            cut_off[label] = [float(a.truncated) for a in run.answers]
            scores[label] = _scores_by_benchmark(rows, run, readings, correct[label], likelihood_correct[label])
            for i, (a, reading) in enumerate(zip(run.answers, readings, strict=True)):
                answers_file.write(
                    json.dumps(_answer_record(label, rows.iloc[i], a, reading, likelihood.chosen[i]), ensure_ascii=False) + "\n"
                )
            for benchmark in scores[label]:
                log.info(
                    f"{label}, {benchmark.benchmark}: accuracy {benchmark.accuracy:.1%} (n={benchmark.n}; no choice "
                    f"{sum(benchmark.no_choice.values())}: {benchmark.no_choice}), option log-likelihood "
                    f"{benchmark.loglikelihood_accuracy:.1%}"
                )

    comparisons: list[PairedComparison] = []
    if "base" in answered:
        comparisons = benchmark_comparisons(rows, correct, likelihood_correct, cut_off)
        for comparison in comparisons:
            log.info(
                f"fine-tuned minus base, {comparison.label}: {comparison.difference:+.3f} (95% interval "
                f"{comparison.low:+.3f} to {comparison.high:+.3f}, McNemar p {comparison.mcnemar_p:.3g}): {comparison.verdict}"
            )
    report = BenchmarkReport(
        models=models,
        merged_model_dir=merged_model_location or str(merged_model_path),
        settings=config,
        sources=sources,
        questions=len(rows),
        fine_tuned=scores["fine_tuned"],
        base=scores.get("base", []),
        comparisons=comparisons,
        generation={
            label: GenerationTotals(
                wall_seconds=run.wall_seconds, total_new_tokens=run.total_new_tokens, tokens_per_second=run.tokens_per_second
            )
            for label, (run, _) in answered.items()
        },
        wall_seconds=time.perf_counter() - started,
        code_version=code_version,
    )
    report.write(out_dir)
    return report


def benchmark_comparisons(
    rows: pd.DataFrame, correct: dict[str, list[float]], likelihood_correct: dict[str, list[float]], cut_off: dict[str, list[float]]
) -> list[PairedComparison]:
    """Per benchmark: accuracy (the gate reads these), option log-likelihood accuracy and cut-off rate, fine-tuned minus base."""
    comparisons = []
    for name, group in rows.groupby("benchmark", sort=False):
        where = group.index.tolist()

        def pick(values: dict[str, list[float]], label: str, where: list[int] = where) -> list[float]:
            return [values[label][i] for i in where]

        comparisons.append(
            compare(f"accuracy:{name}", f"{name} accuracy", pick(correct, "fine_tuned"), pick(correct, "base"), right_or_wrong=True)
        )
        comparisons.append(
            compare(
                f"loglikelihood_accuracy:{name}",
                f"{name} accuracy by option log-likelihood",
                pick(likelihood_correct, "fine_tuned"),
                pick(likelihood_correct, "base"),
                right_or_wrong=True,
            )
        )
        comparisons.append(
            compare(
                f"cut_off_rate:{name}",
                f"{name} answers cut off",
                pick(cut_off, "fine_tuned"),
                pick(cut_off, "base"),
                higher_is_better=False,
                right_or_wrong=True,
            )
        )
    return comparisons


def _scores_by_benchmark(
    rows: pd.DataFrame, run: GenerationRun, readings: list[ChoiceReading], correct: list[float], likelihood_correct: list[float]
) -> list[BenchmarkScores]:
    scores = []
    for name, group in rows.groupby("benchmark", sort=False):
        where = group.index.tolist()
        no_choice = {rule: sum(readings[i].rule == rule for i in where) for rule in NO_CHOICE_RULES}
        scores.append(
            BenchmarkScores(
                benchmark=str(name),
                n=len(where),
                accuracy=sum(correct[i] for i in where) / len(where),
                correct=int(sum(correct[i] for i in where)),
                no_choice=no_choice,
                cut_off_rate=no_choice["cut off"] / len(where),
                loglikelihood_accuracy=sum(likelihood_correct[i] for i in where) / len(where),
                mean_output_tokens=sum(run.answers[i].new_tokens for i in where) / len(where),
            )
        )
    return scores


def _answer_record(label: str, row: pd.Series, answer, reading: ChoiceReading, likelihood_choice: str | None) -> dict:
    return {
        "model": label,
        "benchmark": row["benchmark"],
        "id": row["id"],
        "question": row["question"],
        "context": row["context"] if isinstance(row["context"], str) else None,
        "options": json.loads(row["options"]),
        "answer_idx": row["answer_idx"],
        "output": answer.text,
        "scored_response": graded_response(answer),
        "choice": reading.choice,
        "read_by": reading.rule,
        "correct": reading.choice == row["answer_idx"],
        "loglikelihood_choice": likelihood_choice,
        "compliant": answer.parsed.compliant,
        "truncated": answer.truncated,
        "new_tokens": answer.new_tokens,
    }


def _progress(label: str, log):
    started = time.perf_counter()

    def report(phase: str, done: int, total: int) -> None:
        if phase == "answers":
            log.info(f"{label}: {done}/{total} benchmark answers, {time.perf_counter() - started:.0f} s")

    return report
