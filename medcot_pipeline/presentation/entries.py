"""What one metadata entry of an asset page is, without Dagster: the writers (defs/metadata.py for steps,
training/run.py for the Pipes process) turn each into its own typed value.

Plain `int`, `float`, `str` and `bool` stand for themselves; `None` is never an entry (a page leaves out what
it does not know, and the Plots tab would draw a null as a series).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Markdown:
    """Rendered as HTML on the page: inline under 1,000 characters, behind "[Show Markdown]" above."""

    text: str


@dataclass(frozen=True)
class Table:
    """A plain-text table: cells show what they hold (tags included) and wrap in the page's value column."""

    columns: tuple[tuple[str, str], ...]  # (name, type): "string", "int", "float", "bool"
    records: list[dict[str, Any]] = field(default_factory=list)
    descriptions: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Json:
    value: Any


@dataclass(frozen=True)
class FilePath:
    path: str


@dataclass(frozen=True)
class Link:
    url: str


Entry = Markdown | Table | Json | FilePath | Link | int | float | str | bool
# What a page would show as a row of its own only to say "nothing": left out by `without_empty`.
EMPTY: tuple[Any, ...] = (None, "", [], {})


def text_table(rows: list[dict[str, Any]]) -> Table:
    """Rows of equal keys as a table of text columns (the keys are the columns; backticks of markdown labels dropped)."""
    columns = list(rows[0]) if rows else ["(none)"]
    return Table(
        columns=tuple((column, "string") for column in columns),
        records=[{column: str(row[column]).replace("`", "") for column in columns} for row in rows],
    )


def without_empty(entries: dict[str, Any]) -> dict[str, Entry]:
    """The entries that say something: None, empty text and empty tables are left out."""
    kept = {}
    for key, value in entries.items():
        if isinstance(value, Table) and not value.records:
            continue
        if not isinstance(value, (int, float, bool)) and value in EMPTY:
            continue
        kept[key] = value
    return kept


def as_pipes_metadata(entries: dict[str, Entry]) -> dict[str, dict]:
    """The entries as Dagster Pipes sends metadata (`{"raw_value": ..., "type": ...}`), for a process that reports
    through `dagster_pipes` and never imports Dagster."""

    def typed(value: Entry) -> dict:
        if isinstance(value, Markdown):
            return {"raw_value": value.text, "type": "md"}
        if isinstance(value, Table):
            schema = [
                {"name": name, "type": kind, **({"description": value.descriptions[name]} if name in value.descriptions else {})}
                for name, kind in value.columns
            ]
            return {"raw_value": {"records": value.records, "schema": schema}, "type": "table"}
        if isinstance(value, Json):
            return {"raw_value": value.value, "type": "json"}
        if isinstance(value, FilePath):
            return {"raw_value": value.path, "type": "path"}
        if isinstance(value, Link):
            return {"raw_value": value.url, "type": "url"}
        kind = "bool" if isinstance(value, bool) else "int" if isinstance(value, int) else "float" if isinstance(value, float) else "text"
        return {"raw_value": value, "type": kind}

    return {key: typed(value) for key, value in entries.items()}
