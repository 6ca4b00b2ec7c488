"""Load the raw medical-o1 records from the bundled sample, a local file or the Hugging Face Hub."""

from __future__ import annotations

import codecs
import json
from importlib.resources import files
from pathlib import Path

import pandas as pd

from medcot_pipeline.contracts import DatasetProvenance
from medcot_pipeline.data.raw_parquet import frame_sha256
from medcot_pipeline.data.schema import MULTIPLE_CHOICE_COLUMNS, RAW_COLUMNS, DatasetError, SourceUnreachableError, require_columns
from medcot_pipeline.settings import RawDatasetSettings

SAMPLE_FILE = "medical_cot_sample.jsonl"
FILE_FORMATS = {".json": "json", ".jsonl": "jsonl", ".parquet": "parquet", ".csv": "csv"}
# Read from CSV as text, whatever they look like (an answer "None" or "42" is text).
TEXT_COLUMNS = RAW_COLUMNS + MULTIPLE_CHOICE_COLUMNS


def sample_path() -> Path:
    """The records bundled with the package (the embedded default, no network needed)."""
    # The package is installed as a directory (not a zip), so the resource is a real file.
    return Path(str(files("medcot_pipeline") / "sample_data" / SAMPLE_FILE))


def load_records(config: RawDatasetSettings) -> tuple[pd.DataFrame, DatasetProvenance]:
    """The raw records as a DataFrame (extra columns kept) and where they came from."""
    if config.source == "hub":
        df = _load_hub(config)
        origin = f"{config.hub_dataset} ({config.hub_config}, split {config.hub_split}, revision {config.hub_revision})"
        where = {
            "hub_id": config.hub_dataset,
            "hub_config": config.hub_config,
            "hub_split": config.hub_split,
            "revision": config.hub_revision,
            "location": origin,
            "format": "hub",
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
        dataset = datasets.load_dataset(config.hub_dataset, config.hub_config, split=config.hub_split, revision=config.hub_revision)
    except Exception as err:  # network, auth, unknown revision/config/split: all end the run the same way
        raise SourceUnreachableError(
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
        return fmt, _read_csv(path)

    text = _read_utf8(path)
    if not text.strip():
        raise DatasetError(f"{path} is empty")
    if fmt == "json":
        return fmt, pd.DataFrame.from_records(_parse_json_file(path, text))
    return fmt, pd.DataFrame.from_records(_parse_json_lines(path, text))


def _read_csv(path: Path) -> pd.DataFrame:
    """Text columns as the text in the file: an answer that reads "None" or "N/A" is that answer, not a gap.

    pandas reads "None", "N/A", "NA", "null", "nan" ... as missing by default; here only an empty cell is.
    """
    try:
        return pd.read_csv(path, encoding="utf-8", dtype={column: str for column in TEXT_COLUMNS}, keep_default_na=False, na_values=[""])
    except UnicodeDecodeError:
        raise DatasetError(_not_utf8(path)) from None
    except OSError as err:
        raise DatasetError(f"{path} cannot be read: {err.strerror or err}") from err
    except pd.errors.EmptyDataError as err:
        raise DatasetError(f"{path} is empty") from err
    except pd.errors.ParserError as err:
        raise DatasetError(f"{path} is not valid CSV: {err}") from err


def _read_utf8(path: Path) -> str:
    try:
        # utf-8-sig: a byte-order mark, as some editors write one, is not part of the first record.
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DatasetError(_not_utf8(path)) from None
    except OSError as err:
        raise DatasetError(f"{path} cannot be read: {err.strerror or err}") from err


def _not_utf8(path: Path) -> str:
    """Where the first byte that is not UTF-8 sits, read in chunks so a large file is never held twice."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = newlines = 0
    last_newline = -1  # file offset of the last newline before the chunk being read
    with path.open("rb") as stream:
        while True:
            chunk = stream.read(1 << 20)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as err:
                # err.object is the decoder's held-back bytes (part of a character) followed by this chunk.
                start = offset - (len(err.object) - len(chunk))
                before = err.object[: err.start]
                bad = start + err.start
                if b"\n" in before:
                    last_newline = start + before.rindex(b"\n")
                line, column = newlines + before.count(b"\n") + 1, bad - last_newline
                return (
                    f"{path} is not UTF-8: byte 0x{err.object[err.start]:02x} at offset {bad} (line {line}, byte {column} "
                    f"of the line) cannot be decoded; convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8)"
                )
            if not chunk:
                return f"{path} is not UTF-8"  # the decoder disagreed with pandas; should not happen
            newlines += chunk.count(b"\n")
            if b"\n" in chunk:
                last_newline = offset + chunk.rindex(b"\n")
            offset += len(chunk)


_SHAPES = 'an array of records ([{"Question": ..., "Complex_CoT": ..., "Response": ...}, ...]) or JSON Lines (one such object per line)'


def _too_deep(path: Path, where: str = "") -> DatasetError:
    # Python's JSON parser recurses once per level of nesting; no record of medical-o1 nests more than a few.
    return DatasetError(f"{path}{where}: JSON nested deeper than the parser can follow (a record holds a few levels at most)")


def _parse_json_file(path: Path, text: str) -> list[dict]:
    """A .json file holds one array of records or, as many exports do, JSON Lines."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise _too_deep(path) from None
    except json.JSONDecodeError as err:
        if text.lstrip().startswith("["):
            raise DatasetError(f"{path}: malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}") from err
        return _parse_json_lines(path, text)  # more than one value: JSON Lines, or broken
    return _records(path, value)


def _records(path: Path, value) -> list[dict]:
    if isinstance(value, dict):
        keys = ", ".join(list(map(str, value))[:5]) + (", ..." if len(value) > 5 else "")
        by_column = value and all(isinstance(v, (dict, list)) for v in value.values())
        hint = " It looks column-oriented; export it with pandas' orient='records'." if by_column else ""
        raise DatasetError(f"{path} holds one JSON object (keys {keys}), not records: expected {_SHAPES}.{hint}")
    if not isinstance(value, list):
        raise DatasetError(f"{path} holds a JSON {type(value).__name__}, not records: expected {_SHAPES}")
    for index, record in enumerate(value):
        if not isinstance(record, dict):
            raise DatasetError(f"{path}: record {index} is a {type(record).__name__}, expected a JSON object")
    return value


def json_lines(text: str) -> list[str]:
    """The lines of a JSON Lines text: split at \\n only, an \\r before it dropped (jsonlines.org).

    Not str.splitlines, which also splits at U+2028, U+2029, \\x1c-\\x1e, \\x85, \\v and \\f, all of which valid JSON
    may hold unescaped inside a string.
    """
    return [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]


def _parse_json_lines(path: Path, text: str) -> list[dict]:
    records: list[dict] = []
    for line_number, line in enumerate(json_lines(text), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except RecursionError:
            raise _too_deep(path, f": line {line_number}") from None
        except json.JSONDecodeError as err:
            if not records and path.suffix.lower() == ".jsonl":
                _raise_if_one_value(path, text)
            expected = _SHAPES if path.suffix.lower() == ".json" else "one JSON object per line"
            raise DatasetError(
                f"{path}: line {line_number} is not valid JSON (column {err.colno}: {err.msg}); expected {expected}"
            ) from err
        if not isinstance(record, dict):
            raise DatasetError(f"{path}: line {line_number} is a JSON {type(record).__name__}, expected one object per line")
        records.append(record)
    return records


def _raise_if_one_value(path: Path, text: str) -> None:
    """A .jsonl file that is one JSON value spread over several lines (a pretty-printed export): say so."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return
    if isinstance(value, list):
        raise DatasetError(f"{path} holds one JSON array over several lines, not JSON Lines: name the file .json")
    kind = "object" if isinstance(value, dict) else type(value).__name__
    raise DatasetError(f"{path} holds one JSON {kind} over several lines, not JSON Lines: put each record on one line")
