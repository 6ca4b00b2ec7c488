"""Text as a person reads it: escaped markdown, cells on one line, text cut at a word, numbers rounded one way.

One rule per kind of number, used by every page, the card and the terminal:
- scores and losses (`score_text`): three decimals, 0.263, 2.194 (the same value never reads 2.19381 in one
  place and 2.194 in another);
- shares (`percent_text`): one decimal, 66.7%;
- counts (`number_text` of an int): thousands separated, 4,884,480;
- other measured floats (`number_text`): four significant digits, small ones in scientific notation;
- configured values (`setting_text`): as written in the profile, 0.001 stays 0.001.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

ELLIPSIS = "…"


def escape_markdown(text: Any) -> str:
    """Text shown as written in rendered markdown: tags such as <think> stay visible instead of vanishing."""
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
    """A measured number: thousands separated, 4 significant digits, small rates in scientific notation."""
    if value is None:
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if value != 0 and abs(value) < 1e-3:
        return f"{value:.2e}"
    return f"{rounded(value):,}"


def score_text(value: float | None) -> str:
    """A score or a loss: three decimals (0.263, 2.194); larger values such as a mean length to one."""
    if value is None:
        return "n/a"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:,.1f}"


def percent_text(share: float | None) -> str:
    """A share in [0, 1] as a percentage with one decimal: 0.6667 -> 66.7%."""
    return "n/a" if share is None else f"{share:.1%}"


def signed_points(delta: float) -> str:
    """A difference of shares in percentage points: +66.7 pts."""
    return f"{delta * 100:+.1f} pts"


def setting_text(value: Any) -> str:
    """A configured value as the profile writes it: lists joined, floats in their shortest form (1e-05, 0.001)."""
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    return "n/a" if value is None else str(value)


def clock(seconds: float) -> str:
    """1:05:09, 4:07 or 0:09."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def duration_text(seconds: float | None) -> str:
    """1 h 02 min, 2 min 11 s or 45 s."""
    if seconds is None:
        return "not recorded"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def size_text(size_bytes: int | None) -> str:
    """Bytes in the unit a person uses: 78.4 MB, 1.2 GB, 5.0 kB (decimal units, as the Hub shows sizes)."""
    if size_bytes is None:
        return "size not recorded"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size_bytes >= scale:
            return f"{size_bytes / scale:,.1f} {unit}"
    return f"{size_bytes} bytes"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A markdown table; every cell escaped and on one line."""
    lines = ["| " + " | ".join(table_cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(table_cell(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def key_value_table(rows: dict[str, Any]) -> str:
    """Facts as a two-column markdown table with no header words: narrow enough for a page's value column.
    Values are written with `number_text` unless they are text already."""
    lines = ["| | |", "|---|---|"]
    lines += [f"| {table_cell(label)} | {table_cell(number_text(value))} |" for label, value in rows.items()]
    return "\n".join(lines)
