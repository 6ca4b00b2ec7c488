"""The presentation module's pages as Dagster metadata: each entry wrapped in its `dg.MetadataValue`.

What a page says, and how numbers, answers and verdicts are worded, lives in `medcot_pipeline.presentation`
(plain functions the training process and the model card call too); this module only turns those entries into
Dagster's types. Dagster renders markdown metadata as HTML without raw HTML (`<think>` would vanish, hence the
escaping there), shows it inline under 1,000 characters and behind "[Show Markdown]" above, and draws every
numeric entry in the Plots tab.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from medcot_pipeline.presentation.entries import Entry, FilePath, Json, Link, Markdown, Table, text_table
from medcot_pipeline.presentation.text import key_value_table, shorten


def metadata_value(entry: Entry) -> Any:
    """One entry as Dagster metadata (numbers, text and booleans stay themselves: Dagster types them)."""
    if isinstance(entry, Markdown):
        return dg.MetadataValue.md(entry.text)
    if isinstance(entry, Table):
        schema = dg.TableSchema(
            columns=[dg.TableColumn(name, kind, description=entry.descriptions.get(name)) for name, kind in entry.columns]
        )
        return dg.MetadataValue.table([dg.TableRecord(record) for record in entry.records], schema=schema)
    if isinstance(entry, Json):
        return dg.MetadataValue.json(entry.value)
    if isinstance(entry, FilePath):
        return dg.MetadataValue.path(entry.path)
    if isinstance(entry, Link):
        return dg.MetadataValue.url(entry.url)
    return entry


def metadata_values(entries: dict[str, Entry]) -> dict[str, Any]:
    return {key: metadata_value(entry) for key, entry in entries.items()}


def summary_table(rows: dict[str, Any]) -> dg.MetadataValue:
    """Facts that belong on the page but not in the Plots tab, as a two-column markdown table."""
    return dg.MetadataValue.md(key_value_table(rows))


def records_preview(frame, columns: list[str], rows: int = 3, width: int = 160) -> dg.MetadataValue:
    """The first rows as a plain-text table: cells show <think> as written and end at a word with an ellipsis."""
    shown = frame[columns].head(rows)
    records = [dg.TableRecord({column: shorten(str(row[column]), width) for column in columns}) for _, row in shown.iterrows()]
    schema = dg.TableSchema(columns=[dg.TableColumn(column, "string") for column in columns])
    return dg.MetadataValue.table(records, schema=schema)


def string_table(rows: list[dict[str, str]]) -> dg.MetadataValue:
    """Rows of equal keys as a table of text columns (wraps in the page's value column)."""
    return metadata_value(text_table(rows))


def benchmark_sources_table(sources) -> dg.MetadataValue:
    """What benchmark_questions holds: each benchmark, its questions, and the commit it was read at."""
    return string_table(
        [
            {
                "benchmark": source.title,
                "questions": str(source.questions),
                "skipped": str(source.skipped),
                "read from": source.location,
                "commit": source.commit or ("bundled with medcot" if source.stand_in else "not recorded"),
            }
            for source in sources
        ]
    )


def model_card_markdown(card) -> dg.MetadataValue:
    """A huggingface_hub ModelCard as the page should show it: the Hub metadata as YAML in a code block
    (markdown would run it into one paragraph), then the card's body, whole."""
    front_matter = card.data.to_yaml() if card.data is not None else ""
    parts = [f"```yaml\n{front_matter.strip()}\n```"] if front_matter.strip() else []
    parts.append(card.text.strip())
    return dg.MetadataValue.md("\n\n".join(parts))
