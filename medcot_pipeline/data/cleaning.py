"""Clean raw records so every kept row can be formatted into a well-formed training target.

The rule, applied to Question, Complex_CoT and Response in that order:

- A value must end up a non-empty string. ints and finite floats become text (`coerced_<field>`;
  a whole float such as 42.0 becomes "42", because pandas turns int columns with a gap into floats).
  None/NaN drops the row (`dropped_null_<field>`); bools, bytes, lists, arrays, dicts and any other type
  drop it (`dropped_non_string_<field>`): a Parquet binary or list column is never turned into its repr.
- CRLF and lone CR become LF; leading and trailing whitespace is stripped. Nothing left drops the row
  (`dropped_empty_<field>`).
- Control characters other than newline and tab are removed, ANSI escape sequences whole (`\x1b[31m`), NUL
  and the rest one by one (`removed_control_characters` counts the fields changed): they carry no words, and a
  NUL or a colour code would otherwise become part of what the model learns to write.
- The strings <think>, </think>, <response> and </response> inside a text are escaped, not removed:
  `<think>` becomes `&lt;think&gt;` (`escaped_tags` counts the fields changed). The target then never holds
  nested or unbalanced tags, and a question about the tag still says what it said ("What does &lt;think&gt;
  mean?"), where removing it would leave "What does  mean?". A field of nothing but tags counts as empty.
- The base model's special tokens (`<|im_start|>`, `<|eot_id|>`, ... as the tokenizer that formats the data
  lists them) are neutralised the same way, `<|im_end|>` becoming `&lt;|im_end|&gt;`
  (`neutralised_special_tokens` counts the fields changed): the tokenizer would otherwise read them as the
  control token itself, and a record could close the user's turn or open a fake assistant turn inside the
  training target.
- A field that holds nothing visible (only zero-width, format or control characters and whitespace) drops the
  row (`dropped_invisible_<field>`).
- A row is counted under the first field that fails, so input_rows = output_rows + the dropped_* counts.
- Of rows whose Question has the same comparison key (data/text_comparison.py: case, whitespace, Unicode form
  and invisible characters ignored), the first is kept (`dropped_duplicate_question`).

Multiple-choice metadata, when present, never drops a row: `options` may be a dict, a JSON string or
a Python-repr string (the Hub data stores repr), and is stored as a JSON object string; a null letter
(Parquet fills letters other rows have) is left out; anything unreadable becomes null
(`nulled_bad_options`). `answer_idx` and `answer` become stripped strings, or null.
Other columns pass through untouched. No row left raises DatasetError with the counts.
"""

from __future__ import annotations

import ast
import json
import math
import re
import unicodedata
from collections.abc import Iterable
from numbers import Integral, Real

import pandas as pd

from medcot_pipeline.chat_format import TAGS
from medcot_pipeline.data.schema import RAW_COLUMNS, DatasetError, require_columns
from medcot_pipeline.data.text_comparison import comparison_key, is_invisible

_NULL, _NON_STRING = "null", "non_string"
_BAD = object()  # marks options that were present but unreadable, so they can be counted
# ANSI/VT100 escape sequences: CSI (ESC [ parameters intermediates final, e.g. colours), OSC (ESC ] ... BEL or ESC \)
# and the two-byte ones (ESC and one of @ to _); removed whole, so no "[31m" is left behind.
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]")
_KEPT_CONTROLS = {"\n", "\t"}


def special_token_strings(tokenizer) -> list[str]:
    """The strings a tokenizer reads as one control token: its special tokens and its added tokens that look like
    markup (`<|...|>`, `<...>`, `[...]`), never an added ordinary word."""
    tokens = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        content = getattr(token, "content", str(token))
        if getattr(token, "special", False) or re.fullmatch(r"<.+>|\[.+\]", content, flags=re.DOTALL):
            tokens.add(content)
    return sorted((token for token in tokens if token and token.strip()), key=lambda token: (-len(token), token))


def neutralise(token: str) -> str:
    """How a special token is written in the data: its brackets escaped, so it reads the same and tokenizes as text."""
    if "<" in token or ">" in token:
        return token.replace("<", "&lt;").replace(">", "&gt;")
    # No angle brackets ([INST]-style): a word joiner after the first character breaks the match and shows nothing.
    return token[0] + "\u2060" + token[1:]


def clean_records(df: pd.DataFrame, special_tokens: Iterable[str] = ()) -> tuple[pd.DataFrame, dict[str, int]]:
    """The rows that pass the rule above, re-indexed, and how many rows each part of it touched.

    `special_tokens`: the strings the base model's tokenizer reads as control tokens (special_token_strings).
    """
    require_columns(df, RAW_COLUMNS, "cannot clean records")
    tokens = sorted({token for token in special_tokens if token and token not in TAGS}, key=lambda token: (-len(token), token))
    # Longest first, so a token that contains another is replaced whole.
    token_pattern = re.compile("|".join(map(re.escape, tokens))) if tokens else None

    counts = {"input_rows": len(df)}
    for field in RAW_COLUMNS:
        for reason in ("null", "non_string", "empty", "invisible"):
            counts[f"dropped_{reason}_{field}"] = 0
    counts |= {f"coerced_{field}": 0 for field in RAW_COLUMNS}
    counts |= {
        "removed_control_characters": 0,
        "escaped_tags": 0,
        "neutralised_special_tokens": 0,
        "dropped_duplicate_question": 0,
        "nulled_bad_options": 0,
    }

    kept_positions: list[int] = []
    cleaned: dict[str, list[str]] = {field: [] for field in RAW_COLUMNS}
    seen_questions: set[str] = set()
    columns = {field: df[field].tolist() for field in RAW_COLUMNS}
    for position in range(len(df)):
        row: dict[str, str] = {}
        for field in RAW_COLUMNS:
            text, problem = _as_text(columns[field][position])
            if problem is not None:
                counts[f"dropped_{problem}_{field}"] += 1
                break
            if not isinstance(columns[field][position], str):
                counts[f"coerced_{field}"] += 1
            text, changes = _normalise(text, token_pattern)
            for change in changes:
                counts[change] += 1
            if not text:
                counts[f"dropped_empty_{field}"] += 1
                break
            if is_invisible(text):
                counts[f"dropped_invisible_{field}"] += 1
                break
            row[field] = text
        else:
            key = comparison_key(row["Question"])
            if key in seen_questions:
                counts["dropped_duplicate_question"] += 1
                continue
            seen_questions.add(key)
            kept_positions.append(position)
            for field in RAW_COLUMNS:
                cleaned[field].append(row[field])

    counts["output_rows"] = len(kept_positions)
    if not kept_positions:
        reasons = {key: value for key, value in counts.items() if value and key != "input_rows"}
        raise DatasetError(f"no record survived cleaning: {counts['input_rows']} rows in, dropped {reasons}")

    out = df.iloc[kept_positions].reset_index(drop=True)
    for field in RAW_COLUMNS:
        out[field] = cleaned[field]
    if "options" in out.columns:
        options = [_options_json(value) for value in out["options"].tolist()]
        counts["nulled_bad_options"] = sum(1 for value in options if value is _BAD)
        out["options"] = [None if value is _BAD else value for value in options]
    for field in ("answer_idx", "answer"):
        if field in out.columns:
            out[field] = [_optional_text(value) for value in out[field].tolist()]
    return out, counts


def _is_null(value) -> bool:
    return value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and math.isnan(value))


def _as_text(value) -> tuple[str, str | None]:
    """(text, None) for a usable value, ("", reason) otherwise."""
    if _is_null(value):
        return "", _NULL
    if isinstance(value, str):
        return value, None
    if isinstance(value, bool):  # a bool is an Integral, but True is not a question
        return "", _NON_STRING
    if isinstance(value, Integral):
        return str(int(value)), None
    if isinstance(value, Real) and math.isfinite(value):
        number = float(value)
        return (str(int(number)) if number.is_integer() else str(number)), None
    return "", _NON_STRING


def escape_tags(text: str) -> str:
    """`<think>` -> `&lt;think&gt;` for each of the four tags; everything else as it was."""
    for tag in TAGS:
        text = text.replace(tag, tag.replace("<", "&lt;").replace(">", "&gt;"))
    return text


def remove_control_characters(text: str) -> str:
    """Without ANSI escape sequences and control characters (category Cc) other than newline and tab."""
    text = _ANSI_ESCAPE.sub("", text)
    return "".join(ch for ch in text if ch in _KEPT_CONTROLS or unicodedata.category(ch) != "Cc")


def _normalise(text: str, token_pattern: re.Pattern | None) -> tuple[str, list[str]]:
    """(cleaned text, the counters of what changed it); "" when nothing but tags and whitespace is left."""
    changes = []
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    visible = remove_control_characters(text)
    if visible != text:
        changes.append("removed_control_characters")
    escaped = escape_tags(visible)
    if escaped != visible:
        changes.append("escaped_tags")
    bare = visible
    for tag in TAGS:
        bare = bare.replace(tag, "")
    if token_pattern is not None:
        neutralised = token_pattern.sub(lambda match: neutralise(match[0]), escaped)
        if neutralised != escaped:
            changes.append("neutralised_special_tokens")
        escaped = neutralised
        bare = token_pattern.sub("", bare)
    # A field of nothing but tags (or control tokens) says nothing: it counts as empty.
    return (escaped.strip() if bare.strip() else ""), changes


def _optional_text(value) -> str | None:
    text, problem = _as_text(value)
    text = text.strip() if problem is None else ""
    return text or None


def _options_json(value):
    """A JSON object string of letter -> option text, None when absent, _BAD when unreadable."""
    if _is_null(value):
        return None
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                return _BAD
    if not isinstance(value, dict):
        return _BAD
    options = {}
    for letter, text in value.items():
        if _is_null(text):
            continue  # Parquet stores options as a struct: letters other rows have come back as null
        if not isinstance(letter, str) or not isinstance(text, str) or not text.strip():
            return _BAD
        options[letter.strip()] = text.strip()
    return json.dumps(options, ensure_ascii=False) if options else _BAD
