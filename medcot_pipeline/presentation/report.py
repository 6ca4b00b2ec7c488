"""The pages that judge a model, rouge_report's and hub_release's: they open with the verdict (the gate's
decision and the key differences from the base), the full loss curve with each evaluation's grade, and the best
and the worst answer, before the tables a reader checks them against."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medcot_pipeline.contracts import BenchmarkReport, EvaluationReport, GateDecision, TrainingSummary
from medcot_pipeline.presentation.answers import answer_card, answers_side_by_side, answers_table, best_and_worst, read_samples
from medcot_pipeline.presentation.charts import loss_chart_markdown
from medcot_pipeline.presentation.entries import Entry, Markdown, Table, text_table, without_empty
from medcot_pipeline.presentation.text import key_value_table, rounded
from medcot_pipeline.presentation.training import loss_series
from medcot_pipeline.presentation.verdict import verdict_markdown


def answer_limit_text(report: EvaluationReport) -> str:
    """The real limit on an answer: `120 new tokens, + 40 for an answer still open (160 in all)`."""
    settings = report.settings
    if not settings.continuation_tokens:
        return f"{settings.max_new_tokens} new tokens"
    return (
        f"{settings.max_new_tokens} new tokens, + {settings.continuation_tokens} for an answer still open "
        f"({settings.max_new_tokens + settings.continuation_tokens} in all)"
    )


def verdict_entries(
    decision: GateDecision,
    report: EvaluationReport,
    samples_path: Path | None,
    training: TrainingSummary | None,
    benchmarks: BenchmarkReport | None = None,
    note: str = "",
) -> dict[str, Entry]:
    """What both pages open with, each entry short enough to show inline."""
    entries: dict[str, Any] = {"verdict": Markdown(verdict_markdown(decision, report, benchmarks, note=note))}
    if training is not None:
        entries["loss_curve"] = Markdown(loss_chart_markdown(loss_series(training)))
    if samples_path is not None and Path(samples_path).exists():
        best, worst = best_and_worst(samples_path)
        total = len(read_samples(samples_path))
        if best is not None:
            entries["best_answer"] = answer_card(best, "Best answer", total)
        if worst is not None and worst is not best:
            entries["worst_answer"] = answer_card(worst, "Worst answer", total)
    return without_empty(entries)


def comparison_table(report: EvaluationReport) -> Table:
    """Base against fine-tuned, a metric a row, with which way is better and the change with its interval: plain
    text, which wraps in the page's narrow value column where a markdown table would run off its edge."""
    from medcot_pipeline.evaluation.scores import comparison_rows

    # Three columns, each of words that wrap: a table's every column costs its padding and its widest word, and
    # six of them (metric, better, base, fine-tuned, change, verdict) would push the page past its pane.
    rows = []
    for row in comparison_rows(report):
        change = row.get("change (95% interval)", "")
        verdict = row.get("verdict", "")
        rows.append(
            {
                # "<think>/<response>" is one unbreakable word, as wide as a column: spaced, it wraps.
                "metric": f"{row['metric'].replace('`/`', '` / `')} ({row['better']} is better)",
                "base → fine-tuned": f"{row['base']} → {row['fine-tuned']}",
                "change (95% interval)": f"{change}: {verdict}" if change and verdict else change or verdict,
            }
        )
    return text_table(rows)


def rouge_report_page(
    report: EvaluationReport, decision: GateDecision, samples_path: Path, training: TrainingSummary | None
) -> dict[str, Entry]:
    """rouge_report's metadata: the verdict first, then the comparison and every answer, then the numbers worth a
    chart across runs (the Plots tab draws every number) and how the answers were generated."""
    settings, tuned, base = report.settings, report.fine_tuned, report.base
    # rouge_report does not read benchmark_report: its verdict covers the held-out criteria, and says so.
    note = (
        "held-out criteria; benchmark accuracy is judged by the release_gate check"
        if settings.gate_accuracy_lower_bound is not None
        else ""
    )
    entries: dict[str, Any] = {
        **verdict_entries(decision, report, samples_path, training, note=note),
        "comparison": comparison_table(report),
        "answers": answers_table(samples_path),
        "answers_side_by_side": answers_side_by_side(samples_path),
        "rouge_l_response": rounded(tuned.rouge_l_response),
        "format_compliance": rounded(tuned.format_compliance),
        "generation_tokens_per_second": rounded(tuned.tokens_per_second),
        "base_rouge_l_response": rounded(base.rouge_l_response) if base is not None else None,
        "evaluation": Markdown(
            key_value_table(
                {
                    "questions": report.n,
                    "decoding": "sampled" if settings.do_sample else "greedy",
                    "answer limit": answer_limit_text(report),
                    "batch size": settings.batch_size,
                    "attention, KV cache": f"{settings.attention}, {settings.kv_cache}",
                    "fine-tuned: generation seconds": tuned.wall_seconds,
                    **({"base: generation seconds": base.wall_seconds} if base is not None else {}),
                }
            )
        ),
    }
    return without_empty(entries)
