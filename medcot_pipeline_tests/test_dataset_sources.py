"""Loading raw records: the bundled sample, local files of every supported format, and the Hub call."""

import json
import re

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


# ---------------------------------------------------------------- text encodings, JSON shapes, CSV text


def test_latin1_jsonl_names_the_file_line_and_byte(tmp_path):
    """A JSON Lines file saved as latin-1: one line naming the file, the byte, its offset and line; no UnicodeDecodeError."""
    path = tmp_path / "ward_notes.jsonl"
    good = json.dumps({"Question": "Which nerve is at risk?", "Complex_CoT": "The ulnar.", "Response": "Ulnar nerve."})
    bad = '{"Question": "Sjögren syndrome antibodies?", "Complex_CoT": "Anti-Ro.", "Response": "Anti-Ro/SSA."}'
    before = good + "\n" + good.replace("ulnar", "median") + "\n"
    path.write_bytes((before + bad + "\n").encode("latin-1"))
    offset = len(before) + bad.index("ö")  # all ASCII before the umlaut: characters are bytes

    with pytest.raises(DatasetError) as err:
        from_file(path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{path} is not UTF-8: byte 0xf6 at offset {offset} (line 3, byte {bad.index('ö') + 1} of the line)")
    assert err.value.__cause__ is None and err.value.__suppress_context__  # the decoder's traceback is not the message


def test_latin1_csv_names_the_file_line_and_byte(tmp_path):
    path = tmp_path / "export.csv"
    header, first, second = "Question,Complex_CoT,Response\n", "What is a café coronary?,Choking on food.,Bolus obstruction.\n", "Normal?,Yes.,Yes.\n"
    path.write_bytes((header + second + first).encode("latin-1"))
    with pytest.raises(DatasetError) as err:
        from_file(path)
    offset = len(header) + len(second) + first.index("é")
    assert str(err.value).startswith(f"{path} is not UTF-8: byte 0xe9 at offset {offset} (line 3, byte {first.index('é') + 1} of the line)")


def test_bad_byte_after_the_first_megabyte_is_located(tmp_path):
    """The file is read in 1 MiB chunks: a multi-byte character across the chunk edge is fine, the offset stays exact."""
    path = tmp_path / "big.jsonl"
    line = json.dumps({"Question": "Dose of naloxone?", "Complex_CoT": "Opioid reversal … titrate.", "Response": "0.4 mg."}, ensure_ascii=False)
    body = ((line + "\n") * (2 * 2**20 // len(line.encode()) + 1)).encode()
    path.write_bytes(body + b'{"Question": "\xff"}\n')
    lines_before = body.count(b"\n")
    with pytest.raises(DatasetError, match=rf"byte 0xff at offset {len(body) + 14} \(line {lines_before + 1}, byte 15 of the line\)"):
        from_file(path)


def test_utf8_with_a_byte_order_mark_loads(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(RECORDS).encode())
    df, _ = from_file(path)
    assert df["Question"].tolist() == [record["Question"] for record in RECORDS]


@pytest.mark.parametrize("answer", ["None", "N/A", "NA", "null", "NaN", "n/a", "#N/A", "-"])
def test_csv_text_that_looks_like_a_missing_value_is_kept(tmp_path, answer):
    """An answer that reads "None" or "N/A" is an answer: CSV text is read as text, and cleaning keeps it."""
    path = tmp_path / "answers.csv"
    pd.DataFrame([
        {"Question": "Which vaccine is contraindicated?", "Complex_CoT": "Checking the list.", "Response": answer},
        {"Question": answer, "Complex_CoT": "Hmm.", "Response": "Something."},
    ]).to_csv(path, index=False)
    df, _ = from_file(path)
    assert df["Response"].tolist()[0] == answer and df["Question"].tolist()[1] == answer

    from medcot_pipeline.data.cleaning import clean_records

    cleaned, counts = clean_records(df)
    assert cleaned["Response"].tolist()[0] == answer
    assert counts["output_rows"] == 2 and counts["dropped_null_Response"] == counts["dropped_null_Question"] == 0


def test_empty_csv_cell_is_still_missing(tmp_path):
    path = tmp_path / "gaps.csv"
    path.write_text('Question,Complex_CoT,Response\nFirst?,Reasoning.,\nSecond?,"",Answer.\nThird?,Yes.,Yes.\n')
    df, _ = from_file(path)

    from medcot_pipeline.data.cleaning import clean_records

    cleaned, counts = clean_records(df)
    assert cleaned["Question"].tolist() == ["Third?"]
    assert (counts["dropped_null_Response"], counts["dropped_null_Complex_CoT"]) == (1, 1)


def test_csv_numbers_in_text_columns_stay_text_and_other_columns_keep_their_type(tmp_path):
    path = tmp_path / "numbers.csv"
    path.write_text("Question,Complex_CoT,Response,score\n0042,Leading zeros matter.,007,3\n")
    df, _ = from_file(path)
    assert df.loc[0, "Question"] == "0042" and df.loc[0, "Response"] == "007"
    assert df.loc[0, "score"] == 3


@pytest.mark.parametrize(
    "content, says",
    [
        # pandas' default orient='columns': each column a {row: value} object.
        (json.dumps({"Question": {"0": "Q one?", "1": "Q two?"}, "Complex_CoT": {"0": "a", "1": "b"}, "Response": {"0": "c", "1": "d"}}, indent=2),
         "It looks column-oriented; export it with pandas' orient='records'"),
        (json.dumps({"Question": ["Q one?"], "Complex_CoT": ["a"], "Response": ["c"]}), "It looks column-oriented"),
        # One record on its own is an object too: not a dataset until it is in an array (or a .jsonl file).
        (json.dumps({"Question": "Lone?", "Complex_CoT": "a", "Response": "b"}), "holds one JSON object (keys Question, Complex_CoT, Response)"),
        (json.dumps({"data": [{"Question": "Nested?"}], "version": 2}, indent=1), "holds one JSON object (keys data, version)"),
        ('"just a string"', "holds a JSON str, not records"),
    ],
)
def test_json_file_with_another_shape_says_what_was_expected(tmp_path, content, says):
    path = tmp_path / "export.json"
    path.write_text(content)
    with pytest.raises(DatasetError) as err:
        from_file(path)
    message = str(err.value)
    assert message.startswith(f"{path} ") and says in message
    assert "expected an array of records" in message and "JSON Lines (one such object per line)" in message
    assert "\n" not in message


def test_pretty_printed_jsonl_says_it_is_not_json_lines(tmp_path):
    path = tmp_path / "pretty.jsonl"
    path.write_text(json.dumps(RECORDS[0], indent=2))
    with pytest.raises(DatasetError, match=r"pretty\.jsonl holds one JSON object over several lines, not JSON Lines"):
        from_file(path)
    path.write_text(json.dumps(RECORDS, indent=2))
    with pytest.raises(DatasetError, match=r"pretty\.jsonl holds one JSON array over several lines, not JSON Lines: name the file \.json"):
        from_file(path)


def test_unreadable_file_is_a_dataset_error(tmp_path, monkeypatch):
    """An OSError while reading (permissions, a vanished mount) is a DatasetError naming the file, so it is never retried."""
    from pathlib import Path

    path = tmp_path / "locked.jsonl"
    path.write_text(json.dumps(RECORDS[0]) + "\n")

    def refuse(self, *args, **kwargs):  # chmod 000 does not stop root, who runs CI here
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", refuse)
    with pytest.raises(DatasetError, match=r"locked\.jsonl cannot be read: Permission denied"):
        from_file(path)


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_json_lines_split_at_newlines_only(tmp_path, suffix):
    """U+2028, U+2029 and NEL are valid unescaped inside a JSON string; JSON Lines separates records at \\n only."""
    records = [{"Question": "Dose\u2028of aspirin?", "Complex_CoT": "Para one.\u2029Para two.", "Response": "Low\x85dose."},
               {"Question": "Second?", "Complex_CoT": "c", "Response": "r"}]
    path = tmp_path / f"records{suffix}"
    path.write_text("\r\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n", encoding="utf-8")
    df, _ = load_records(RawDatasetSettings(source="file", path=str(path)))
    assert df.to_dict("records") == records


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_deeply_nested_json_is_a_dataset_error(tmp_path, suffix):
    """A record nested 100,000 levels deep: a DatasetError naming the file (and line), not a RecursionError."""
    path = tmp_path / f"deep{suffix}"
    path.write_text('{"Question": ' + "[" * 100_000 + "]" * 100_000 + ', "Complex_CoT": "c", "Response": "r"}\n')
    where = f"{path}: line 1" if suffix == ".jsonl" else str(path)
    with pytest.raises(DatasetError, match=re.escape(f"{where}: JSON nested deeper than the parser can follow")):
        load_records(RawDatasetSettings(source="file", path=str(path)))
