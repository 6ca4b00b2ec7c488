"""Parquet for raw records whose columns may mix types (a number where text belongs).

Cleaning must see the values exactly as the source had them, so this file never turns a value into
text. Arrow cannot store a column that mixes strings, numbers and lists: such a column is stored
JSON-encoded (numpy arrays and scalars as the lists and numbers they hold), and the schema's metadata says
which, so reading gives back the original values. A column JSON cannot hold (bytes, from a Parquet binary
column) is stored as Arrow stores it natively; one that neither can hold (bytes mixed with text) fails
naming the column and the types in it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from medcot_pipeline.data.schema import DatasetError

_JSON_COLUMNS_KEY = b"medcot.json_columns"
RECORDS_FILE = "records.parquet"


def records_path(raw_dataset_dir: Path | str) -> Path:
    return Path(raw_dataset_dir) / RECORDS_FILE


class _NotJson(TypeError):
    """A value JSON has no lossless form for (bytes, a timestamp ...)."""


def _is_plain_text_column(series: pd.Series) -> bool:
    return all(value is None or isinstance(value, str) for value in series.tolist())


def _json_default(value):
    # Lossless forms only: json.dumps(default=str) would store a repr ("b'...'", "['a' 'b']") as if it were text.
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise _NotJson(type(value).__name__)


def _is_missing(value) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and pd.isna(value))


def _to_json(value):
    if _is_missing(value):
        return None
    return json.dumps(value, ensure_ascii=False, default=_json_default)


def write_raw_parquet(df: pd.DataFrame, path: Path) -> None:
    encoded = df.copy()
    json_columns = []
    for column in encoded.columns:
        if encoded[column].dtype != object or _is_plain_text_column(encoded[column]):
            continue
        try:
            encoded[column] = encoded[column].map(_to_json)
            json_columns.append(column)
        except _NotJson:
            # A column of one such type (bytes from a Parquet binary column) is stored natively and read back as it
            # was. Mixed with other values Arrow would convert them (text into bytes), so that fails instead.
            types = {type(value) for value in encoded[column].tolist() if not _is_missing(value)}
            if len(types) != 1:
                raise DatasetError(
                    f"column {column!r} mixes values that cannot be stored together without changing them "
                    f"({', '.join(sorted(t.__name__ for t in types))})"
                ) from None
    try:
        table = pa.Table.from_pandas(encoded, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as err:  # names the column
        raise DatasetError(f"cannot store the records as Parquet: {err}") from err
    metadata = dict(table.schema.metadata or {})
    metadata[_JSON_COLUMNS_KEY] = json.dumps(json_columns).encode()
    pq.write_table(table.replace_schema_metadata(metadata), path)


def read_raw_parquet(path: Path | str) -> pd.DataFrame:
    table = pq.read_table(path)
    json_columns = json.loads((table.schema.metadata or {}).get(_JSON_COLUMNS_KEY, b"[]"))
    df = table.to_pandas()
    for column in json_columns:
        df[column] = pd.Series([json.loads(v) if isinstance(v, str) else None for v in df[column].tolist()], index=df.index, dtype=object)
    return df


def frame_sha256(df: pd.DataFrame) -> str:
    """Content hash of records, independent of Parquet encoding details."""
    # pandas' JSON writer decodes bytes as UTF-8 (and fails on anything else); hash their hex instead.
    df = df.apply(
        lambda column: column.map(lambda v: f"bytes:{v.hex()}" if isinstance(v, bytes) else v) if column.dtype == object else column
    )
    payload = df.to_json(orient="records", lines=True, force_ascii=False, default_handler=str)
    return hashlib.sha256(payload.encode()).hexdigest()
