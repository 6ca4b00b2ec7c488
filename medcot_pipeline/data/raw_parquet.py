"""Parquet for raw records whose columns may mix types (a number where text belongs).

Cleaning must see the values exactly as the source had them, but Arrow cannot store a column
that mixes strings, numbers and dicts. Such columns are stored JSON-encoded, and the schema's
metadata says which, so reading gives back the original Python values.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

_JSON_COLUMNS_KEY = b"medcot.json_columns"
RECORDS_FILE = "records.parquet"


def records_path(raw_dataset_dir: Path | str) -> Path:
    return Path(raw_dataset_dir) / RECORDS_FILE


def _is_plain_text_column(series: pd.Series) -> bool:
    return all(value is None or isinstance(value, str) for value in series.tolist())


def _to_json(value):
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    return json.dumps(value, ensure_ascii=False, default=str)


def write_raw_parquet(df: pd.DataFrame, path: Path) -> None:
    encoded = df.copy()
    json_columns = []
    for column in encoded.columns:
        if encoded[column].dtype == object and not _is_plain_text_column(encoded[column]):
            encoded[column] = encoded[column].map(_to_json)
            json_columns.append(column)
    table = pa.Table.from_pandas(encoded, preserve_index=False)
    metadata = dict(table.schema.metadata or {})
    metadata[_JSON_COLUMNS_KEY] = json.dumps(json_columns).encode()
    pq.write_table(table.replace_schema_metadata(metadata), path)


def read_raw_parquet(path: Path | str) -> pd.DataFrame:
    table = pq.read_table(path)
    json_columns = json.loads((table.schema.metadata or {}).get(_JSON_COLUMNS_KEY, b"[]"))
    df = table.to_pandas()
    for column in json_columns:
        df[column] = pd.Series(
            [json.loads(v) if isinstance(v, str) else None for v in df[column].tolist()], index=df.index, dtype=object
        )
    return df


def frame_sha256(df: pd.DataFrame) -> str:
    """Content hash of records, independent of Parquet encoding details."""
    payload = df.to_json(orient="records", lines=True, force_ascii=False, default_handler=str)
    return hashlib.sha256(payload.encode()).hexdigest()
