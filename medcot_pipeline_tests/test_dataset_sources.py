"""Loading raw records: the bundled sample, local files of every supported format, and the Hub call."""

import json

import datasets
import pandas as pd
import pytest

from medcot_pipeline.settings import HUB_DATASET, RawDatasetSettings
from medcot_pipeline.data.schema import RAW_COLUMNS as REQUIRED_COLUMNS
from medcot_pipeline.data.schema import DatasetError
from medcot_pipeline.data.sources import load_records, sample_path

RECORDS = [
    {"Question": "What causes scurvy?", "Complex_CoT": "Okay, vitamin C.", "Response": "Vitamin C deficiency.", "extra": 1},
    {"Question": "What causes rickets?", "Complex_CoT": "Hmm, vitamin D.", "Response": "Vitamin D deficiency.", "extra": 2},
    {"Question": "What causes beriberi?", "Complex_CoT": "Thiamine, I think.", "Response": "Thiamine deficiency.", "extra": 3},
]


def from_file(path, **kwargs):
    return load_records(RawDatasetSettings(source="file", path=str(path), **kwargs))


def test_sample_is_bundled_and_loads():
    assert sample_path().is_file()
    df, source = load_records(RawDatasetSettings())
    assert (source.source, source.location, source.revision, source.format) == ("sample", str(sample_path()), None, "jsonl")
    assert source.records == len(df) and len(source.content_sha256) == 64
    assert len(df) == 40
    assert set(REQUIRED_COLUMNS) <= set(df.columns)
    with_options = df["options"].notna().sum()
    assert 15 <= with_options <= 25
    assert df["Question"].is_unique


def test_max_records_keeps_the_first_n():
    df, _ = load_records(RawDatasetSettings(max_records=5))
    full, _ = load_records(RawDatasetSettings())
    assert df["Question"].tolist() == full["Question"].head(5).tolist()


@pytest.mark.parametrize("suffix", ["json", "jsonl", "parquet", "csv"])
def test_every_file_format_round_trips_and_keeps_extra_columns(tmp_path, suffix):
    path = tmp_path / f"records.{suffix}"
    frame = pd.DataFrame(RECORDS)
    if suffix == "json":
        path.write_text(json.dumps(RECORDS, indent=2))
    elif suffix == "jsonl":
        path.write_text("\n".join(json.dumps(record) for record in RECORDS) + "\n\n")
    elif suffix == "parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False)

    df, source = from_file(path, max_records=2)
    assert (source.source, source.location, source.revision, source.format) == ("file", str(path), None, suffix)
    assert df["Question"].tolist() == ["What causes scurvy?", "What causes rickets?"]
    assert df["extra"].tolist() == [1, 2]


def test_json_file_may_hold_json_lines(tmp_path):
    path = tmp_path / "records.json"
    path.write_text("\n".join(json.dumps(record) for record in RECORDS))
    df, source = from_file(path)
    assert len(df) == 3 and source.format == "json"


def test_missing_path_says_so(tmp_path):
    with pytest.raises(DatasetError, match=r"nowhere\.jsonl does not exist"):
        from_file(tmp_path / "nowhere.jsonl")


def test_file_source_needs_a_path():
    with pytest.raises(DatasetError, match="source=file needs `path`"):
        load_records(RawDatasetSettings(source="file"))


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "records.xlsx"
    path.write_text("x")
    with pytest.raises(DatasetError, match=r"unsupported file type '\.xlsx'"):
        from_file(path)


@pytest.mark.parametrize("name,content", [("a.jsonl", ""), ("b.csv", ""), ("c.json", "  \n\n "), ("d.parquet", "")])
def test_empty_file_is_a_clear_error(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DatasetError, match=f"{name} is empty"):
        from_file(path)


@pytest.mark.parametrize("name,content", [("a.json", "[]"), ("b.csv", "Question,Complex_CoT,Response\n")])
def test_file_without_records(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DatasetError, match=f"{name} has no records"):
        from_file(path)


def test_malformed_json_array_names_file_and_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"Question": "q1", "Complex_CoT": "c1", "Response": "r1"},\n  {"Question": "q2" "Complex_CoT": "c2"}\n]')
    with pytest.raises(DatasetError, match=r"broken\.json: malformed JSON at line 3, column 21: Expecting ','"):
        from_file(path)


def test_json_array_of_non_objects(tmp_path):
    path = tmp_path / "list.json"
    path.write_text(json.dumps([RECORDS[0], ["not", "an", "object"]]))
    with pytest.raises(DatasetError, match="record 1 is a list, expected a JSON object"):
        from_file(path)


def test_jsonl_bad_line_names_file_and_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    lines = [json.dumps(record) for record in RECORDS]
    lines.insert(2, '{"Question": "unterminated')
    path.write_text("\n".join(lines))
    with pytest.raises(DatasetError, match=r"broken\.jsonl: line 3 is not valid JSON"):
        from_file(path)


def test_jsonl_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "array_line.jsonl"
    path.write_text(json.dumps(RECORDS[0]) + "\n[1, 2]\n")
    with pytest.raises(DatasetError, match="line 2 is a JSON list, expected one object per line"):
        from_file(path)


@pytest.mark.parametrize("suffix", ["jsonl", "parquet", "csv"])
def test_wrong_columns_name_the_missing_ones_and_those_found(tmp_path, suffix):
    frame = pd.DataFrame(RECORDS).rename(columns={"Complex_CoT": "cot"}).drop(columns="Response")
    path = tmp_path / f"wrong.{suffix}"
    if suffix == "jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif suffix == "parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False)
    with pytest.raises(DatasetError) as err:
        from_file(path)
    message = str(err.value)
    assert f"wrong.{suffix}: column(s) Complex_CoT, Response missing" in message
    assert "columns found: Question, cot, extra" in message


def test_corrupt_parquet(tmp_path):
    path = tmp_path / "corrupt.parquet"
    path.write_bytes(b"this is not parquet")
    with pytest.raises(DatasetError, match=r"corrupt\.parquet is not a readable Parquet file"):
        from_file(path)


def test_hub_passes_the_configured_dataset_config_split_and_revision(monkeypatch):
    calls = []

    def fake_load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return datasets.Dataset.from_list([{k: v for k, v in r.items() if k != "extra"} for r in RECORDS])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    config = RawDatasetSettings(source="hub", hub_revision="0123abc", max_records=2)
    df, source = load_records(config)
    assert calls == [((HUB_DATASET, "en"), {"split": "train", "revision": "0123abc"})]
    # The Hub id stays a two-part id: the config travels in its own field (a three-part id broke the model card).
    assert (source.source, source.hub_id, source.hub_config, source.revision, source.format) == ("hub", HUB_DATASET, "en", "0123abc", "hub")
    assert df["Question"].tolist() == ["What causes scurvy?", "What causes rickets?"]


def test_hub_failure_names_dataset_config_and_revision(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DatasetError) as err:
        load_records(RawDatasetSettings(source="hub", hub_config="zh", hub_revision="v9"))
    message = str(err.value)
    assert HUB_DATASET in message and "config zh" in message and "revision v9" in message
    assert "ConnectionError: no route to host" in message
    assert isinstance(err.value.__cause__, ConnectionError)


def test_hub_data_without_required_columns(monkeypatch):
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.Dataset.from_list([{"text": "x"}]))
    with pytest.raises(DatasetError, match=r"revision main\): column\(s\) Question, Complex_CoT, Response missing"):
        load_records(RawDatasetSettings(source="hub"))


def test_real_records_load_from_file(real_records_path):
    df, source = from_file(real_records_path)
    assert source.format == "json" and source.location == str(real_records_path)
    assert len(df) == 198
    # The real export carries more columns than the three the pipeline needs; all are kept.
    assert {"Question", "Complex_CoT", "Response", "options", "answer_idx", "answer", "question"} <= set(df.columns)
