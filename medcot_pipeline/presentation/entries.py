"""What one metadata entry of an asset page is, without Dagster: defs/metadata.py turns each into Dagster's
typed value.

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
