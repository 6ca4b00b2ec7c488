"""Load the raw medical-o1 records from the bundled sample, a local file or the Hugging Face Hub."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

import pandas as pd

from medcot_pipeline.contracts import DatasetProvenance
from medcot_pipeline.data.raw_parquet import frame_sha256
from medcot_pipeline.data.schema import RAW_COLUMNS, DatasetError, require_columns
from medcot_pipeline.settings import RawDatasetSettings

SAMPLE_FILE = "medical_cot_sample.jsonl"
FILE_FORMATS = {".json": "json", ".jsonl": "jsonl", ".parquet": "parquet", ".csv": "csv"}


def sample_path() -> Path:
    """The records bundled with the package (the embedded default, no network needed)."""
    # The package is installed as a directory (not a zip), so the resource is a real file.
    return Path(str(files("medcot_pipeline").joinpath("sample_data", SAMPLE_FILE)))


def load_records(config: RawDatasetSettings) -> tuple[pd.DataFrame, DatasetProvenance]:
    """The raw records as a DataFrame (extra columns kept) and where they came from."""
    if config.source == "hub":
        df = _load_hub(config)
        origin = f"{config.hub_dataset} ({config.hub_config}, split {config.hub_split}, revision {config.hub_revision})"
        where = {
            "hub_id": config.hub_dataset, "hub_config": config.hub_config, "hub_split": config.hub_split,
            "revision": config.hub_revision, "location": origin, "format": "hub",
        }
    else:
        if config.source == "sample":
            path = sample_path()
        elif config.path:
            path = Path(config.path).expanduser()
        else:
            raise DatasetError("source=file needs `path` (a .json, .jsonl, .parquet or .csv file)")
        fmt, df = _load_file(path)
        origin = str(path)
        where = {"location": origin, "format": fmt}

    if len(df) == 0:
        raise DatasetError(f"{origin} has no records")
    require_columns(df, RAW_COLUMNS, origin)
    if config.max_records is not None:
        df = df.head(config.max_records)
    df = df.reset_index(drop=True)
    provenance = DatasetProvenance(source=config.source, records=len(df), content_sha256=frame_sha256(df), **where)
    return df, provenance


def _load_hub(config: RawDatasetSettings) -> pd.DataFrame:
    # Imported here so that the sample and file paths never pay for importing datasets.
    import datasets

    try:
        dataset = datasets.load_dataset(
            config.hub_dataset, config.hub_config, split=config.hub_split, revision=config.hub_revision
        )
    except Exception as err:  # network, auth, unknown revision/config/split: all end the run the same way
        raise DatasetError(
            f"cannot load {config.hub_dataset} (config {config.hub_config}, split {config.hub_split}, "
            f"revision {config.hub_revision}) from the Hugging Face Hub: {type(err).__name__}: {err}"
        ) from err
    return dataset.to_pandas()


def _load_file(path: Path) -> tuple[str, pd.DataFrame]:
    if not path.exists():
        raise DatasetError(f"dataset file {path} does not exist")
    if not path.is_file():
        raise DatasetError(f"dataset path {path} is not a file")
    fmt = FILE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DatasetError(f"{path}: unsupported file type {path.suffix!r}; use one of {sorted(FILE_FORMATS)}")
    if path.stat().st_size == 0:
        raise DatasetError(f"{path} is empty")

    if fmt == "parquet":
        try:
            return fmt, pd.read_parquet(path)
        except Exception as err:  # pyarrow raises several unrelated types for a corrupt file
            raise DatasetError(f"{path} is not a readable Parquet file: {err}") from err
    if fmt == "csv":
        try:
            return fmt, pd.read_csv(path)
        except pd.errors.EmptyDataError as err:
            raise DatasetError(f"{path} is empty") from err
        except pd.errors.ParserError as err:
            raise DatasetError(f"{path} is not valid CSV: {err}") from err

    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise DatasetError(f"{path} is empty")
    # A .json file may hold one array of records or, as many exports do, JSON Lines.
    if fmt == "json" and text.lstrip().startswith("["):
        records = _parse_json_array(path, text)
    else:
        records = _parse_json_lines(path, text)
    return fmt, pd.DataFrame.from_records(records)


def _parse_json_array(path: Path, text: str) -> list[dict]:
    try:
        records = json.loads(text)
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}: malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}") from err
    if not isinstance(records, list):
        raise DatasetError(f"{path}: expected a JSON array of records, got {type(records).__name__}")
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise DatasetError(f"{path}: record {index} is a {type(record).__name__}, expected a JSON object")
    return records


def _parse_json_lines(path: Path, text: str) -> list[dict]:
    records = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DatasetError(
                f"{path}: line {line_number} is not valid JSON (column {err.colno}: {err.msg})"
            ) from err
        if not isinstance(record, dict):
            raise DatasetError(
                f"{path}: line {line_number} is a JSON {type(record).__name__}, expected one object per line"
            )
        records.append(record)
    return records
