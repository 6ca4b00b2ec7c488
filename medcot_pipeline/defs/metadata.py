"""How artifacts read on the asset pages: escaped markdown, text cut at a word, rounded numbers, answers side by side.

Dagster renders markdown metadata and asset descriptions as HTML, where `<think>` is an unknown tag and
vanishes; table cells are plain text and show it as written. Markdown under 1,000 characters shows inline,
longer behind "[Show Markdown]"; numeric entries are what the Plots tab draws across materializations,
so only numbers worth a chart are top-level numbers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import dagster as dg

ELLIPSIS = "…"


def escape_markdown(text: str) -> str:
    """Text shown as written in Dagster's markdown: tags such as <think> stay visible."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def table_cell(text: Any) -> str:
    """One markdown table cell: escaped, on one line, no column breaks."""
    return escape_markdown(" ".join(str(text).split())).replace("|", "\\|")


def shorten(text: str | None, width: int) -> str:
    """`text` on one line, cut at the last word boundary before `width` with an ellipsis (never mid-word)."""
    flat = " ".join((text or "").split())
    if len(flat) <= width:
        return flat
    cut = flat[: width - 1]
    if " " in cut:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip(" ,;:.") + ELLIPSIS


def rounded(value: float | None, digits: int = 4) -> float | None:
    """A float to `digits` significant digits (1.2e-05 stays 1.2e-05, 0.10848 becomes 0.1085)."""
    if value is None or isinstance(value, bool) or not isinstance(value, float) or not math.isfinite(value) or value == 0:
        return value
    return round(value, digits - 1 - int(math.floor(math.log10(abs(value)))))


def number_text(value: Any) -> str:
    """A number as a person reads it: thousands separated, 4 significant digits, small rates in scientific notation."""
    if value is None:
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if value != 0 and abs(value) < 1e-3:
        return f"{value:.2e}"
    return f"{rounded(value):,}"


def summary_table(rows: dict[str, Any]) -> dg.MetadataValue:
    """Facts that belong on the page but not in the Plots tab, as a two-column markdown table."""
    lines = ["| | |", "|---|---|"]
    lines += [f"| {table_cell(label)} | {table_cell(number_text(value))} |" for label, value in rows.items()]
    return dg.MetadataValue.md("\n".join(lines))


def records_preview(frame, columns: list[str], rows: int = 3, width: int = 160) -> dg.MetadataValue:
    """The first rows as a plain-text table: cells show <think> as written and end at a word with an ellipsis."""
    shown = frame[columns].head(rows)
    records = [dg.TableRecord({column: shorten(str(row[column]), width) for column in columns}) for _, row in shown.iterrows()]
    schema = dg.TableSchema(columns=[dg.TableColumn(column, "string") for column in columns])
    return dg.MetadataValue.table(records, schema=schema)


# ----------------------------------------------------------------------------------------- rouge_report


def read_samples(samples_path: Path) -> dict[int, dict[str, dict]]:
    """samples.jsonl grouped by question: {question index: {model label: sample}}."""
    by_question: dict[int, dict[str, dict]] = {}
    seen: dict[str, int] = {}
    with open(samples_path, encoding="utf-8") as handle:
        for line in handle:
            sample = json.loads(line)
            label = sample.get("model", "")
            # Older files have no index; the lines of each model are in question order.
            index = sample.get("index", seen.get(label, 0))
            seen[label] = index + 1
            by_question.setdefault(index, {})[label] = sample
    return dict(sorted(by_question.items()))


def _answer_text(sample: dict | None) -> str:
    """What was graded (the <response>, or the whole output of a model without tags), or a note saying why not."""
    if sample is None:
        return "(not run)"
    text = sample.get("scored_response") or sample.get("output") or ""
    return text if text.strip() else "(empty answer)"


def _score(sample: dict | None) -> float | None:
    return None if sample is None else rounded(sample.get("rouge_l_response"), 3)


def comparison(report) -> dg.MetadataValue:
    """Base against fine-tuned, a metric a row, with which way is better: a plain-text table, which wraps in the
    page's narrow value column where a markdown table would run off its edge."""
    from medcot_pipeline.evaluation.scores import comparison_rows

    return string_table(comparison_rows(report))


def string_table(rows: list[dict[str, str]]) -> dg.MetadataValue:
    """Rows of equal keys as a table of text columns (wraps in the page's value column)."""
    columns = list(rows[0]) if rows else ["(none)"]
    records = [dg.TableRecord({column: str(row[column]).replace("`", "") for column in columns}) for row in rows]
    return dg.MetadataValue.table(records, schema=dg.TableSchema(columns=[dg.TableColumn(c, "string") for c in columns]))


def benchmark_sources_table(sources) -> dg.MetadataValue:
    """What benchmark_questions holds: each benchmark, its questions, and the commit it was read at."""
    return string_table([
        {
            "benchmark": source.title,
            "questions": str(source.questions),
            "skipped": str(source.skipped),
            "read from": source.location,
            "commit": source.commit or ("bundled with medcot" if source.stand_in else "not recorded"),
        }
        for source in sources
    ])


def answers_table(samples_path: Path, limit: int = 3, width: int = 240) -> dg.MetadataValue:
    """The first `limit` questions, each as four rows (question, reference, base, fine-tuned answer), so the
    answers to one question sit together and stay readable in the page's value column; text ends at a word."""
    records = []
    for index, models in list(read_samples(samples_path).items())[:limit]:
        any_sample = next(iter(models.values()))
        rows = [("question", any_sample.get("question")), ("reference", any_sample.get("reference"))]
        for label, title in (("base", "base model"), ("fine_tuned", "fine-tuned")):
            if label in models:
                rows.append((f"{title}, ROUGE-L {number_text(_score(models[label]))}", _answer_text(models[label])))
        records += [dg.TableRecord({"#": index + 1, "from": who, "text": shorten(text, width)}) for who, text in rows]
    schema = dg.TableSchema(columns=[
        dg.TableColumn("#", "int", description="question number"),
        dg.TableColumn("from", "string", description="the question, the dataset's answer, or a model's graded answer"),
        dg.TableColumn("text", "string"),
    ])
    return dg.MetadataValue.table(records, schema=schema)


def answers_side_by_side(samples_path: Path, limit: int = 5) -> dg.MetadataValue:
    """The reference, base and fine-tuned answers in three columns, whole, a table per question (readable in the
    wide "[Show Markdown]" view); each model's column holds its full output, tags shown."""
    parts = []
    for index, models in list(read_samples(samples_path).items())[:limit]:
        any_sample = next(iter(models.values()))
        headers, cells = ["Reference"], [_cell_text(any_sample.get("reference"))]
        for label, title in (("base", "Base model"), ("fine_tuned", "Fine-tuned model")):
            sample = models.get(label)
            if sample is None:
                continue
            notes = [f"ROUGE-L {number_text(_score(sample))}"]
            if sample.get("truncated"):
                notes.append(f"cut off at {sample.get('new_tokens')} tokens")
            if not sample.get("compliant"):
                notes.append("not in the <think>/<response> format")
            headers.append(f"{title} ({', '.join(notes)})")
            cells.append(_cell_text(sample.get("output")))
        parts += [
            f"### Question {index + 1}",
            _paragraphs(any_sample.get("question")),
            "| " + " | ".join(table_cell(h) for h in headers) + " |\n|" + "---|" * len(headers) + "\n| " + " | ".join(cells) + " |",
        ]
    return dg.MetadataValue.md("\n\n".join(parts))


def _cell_text(text: str | None) -> str:
    # A markdown table cell holds one line: paragraphs run together, tags stay visible.
    return table_cell(text) if text and str(text).strip() else "_(empty)_"


def _paragraphs(text: str | None) -> str:
    """Text as markdown paragraphs with its line breaks kept and its tags visible."""
    if not text or not str(text).strip():
        return "_(empty)_"
    return "  \n".join(escape_markdown(line) for line in str(text).strip().splitlines())


# ----------------------------------------------------------------------------------------- model card


def model_card_markdown(card) -> dg.MetadataValue:
    """A huggingface_hub ModelCard as the page should show it: the Hub metadata as YAML in a code block
    (markdown would run it into one paragraph), then the card's body, whole."""
    front_matter = card.data.to_yaml() if card.data is not None else ""
    parts = [f"```yaml\n{front_matter.strip()}\n```"] if front_matter.strip() else []
    parts.append(card.text.strip())
    return dg.MetadataValue.md("\n\n".join(parts))
