"""13-gram decontamination on the real medical-o1 records: copies are found however they were re-typed, and
records that are merely on the same topic are not."""

import json

import pandas as pd
import pytest

from medcot_pipeline.data.decontamination import (
    BOILERPLATE_DOCUMENTS,
    OverlapIndex,
    decontaminate,
    split_references,
    training_fields,
)
from medcot_pipeline.data.text_comparison import comparison_key, is_invisible, words


@pytest.fixture(scope="module")
def records(real_records_path):
    return json.loads(real_records_path.read_text())


def fields(record):
    return [record["Question"], record["Complex_CoT"], record["Response"]]


def test_the_comparison_key_ignores_case_unicode_spacing_and_invisible_characters():
    assert comparison_key("Ｃｈｅｓｔ\u200b  PAIN\n\tand\u00a0fever ") == "chest pain and fever"
    assert is_invisible("\u200b\u200d \x00\x1b") and not is_invisible("\u200bx")
    assert words("Patient's BP: 120/80.") == ["patient", "s", "bp", "120", "80"]


def test_disjoint_real_records_are_not_flagged(records):
    """158 real records against 40 others held out (question + answer): on-topic, not copies; nothing is removed."""
    held_out, train = records[:40], records[40:]
    references = {"validation": [f"{r['Question']}\n{r['Response']}" for r in held_out]}
    result = decontaminate([fields(r) for r in train], references)
    assert result.removed_rows == 0 and len(result.kept_positions) == 158


def test_a_retyped_copy_of_a_held_out_question_is_found(records):
    held_out = records[0]
    copy = dict(records[1])
    # The held-out question, upper-cased, full-width digits, doubled spaces and a zero-width space inside.
    retyped = held_out["Question"].upper().replace(" ", "  ").replace("6", "\uff16").replace("the", "t\u200bhe", 1)
    copy["Question"] = "Consider this case. " + retyped
    references = {"validation": [f"{held_out['Question']}\n{held_out['Response']}"]}
    result = decontaminate([fields(copy), fields(records[2])], references)
    assert result.kept_positions == [1] and result.removed_by_source == {"validation": 1}


def test_the_medqa_items_medical_o1_was_built_from_are_found_in_some_records(records):
    """medical-o1 rewrote MedQA/MedMCQA training items into open questions; some rewrites keep 13 words in a row of
    the original. Checked against the originals they came from, those records are found (17 of 198 when measured)."""
    originals = {"benchmark:medqa-train-originals": [r["question"] for r in records]}
    result = decontaminate([fields(r) for r in records], originals)
    assert 10 <= result.removed_rows <= 40


def test_phrasing_shared_by_many_references_is_boilerplate_not_a_copy():
    stem = "which of the following is the most likely cause of this patient s symptoms today"
    references = {"benchmark:x": [f"case {i} with finding number {i} then {stem}" for i in range(BOILERPLATE_DOCUMENTS + 1)]}
    index = OverlapIndex.build(references)
    assert index.boilerplate > 0
    assert not index.sources_in([f"An unrelated vignette ends: {stem}."])
    assert index.sources_in(["Seen before: case 3 with finding number 3 then which of the following is the most"])


def test_short_references_are_matched_whole_and_very_short_ones_exactly():
    references = {"validation": ["What causes peaked T waves on an ECG?", "Define sepsis"]}
    index = OverlapIndex.build(references)
    assert index.sources_in(["Students often ask: what causes peaked T waves on an ECG? Hyperkalaemia."]) == {"validation"}
    assert not index.sources_in(["What causes peaked T waves?"])  # part of a short reference is not a copy
    assert index.sources_in(["define  SEPSIS"]) == {"validation"} and not index.sources_in(["Define sepsis in children"])


def test_split_references_name_each_benchmark(records):
    validation = pd.DataFrame({"question": ["q1"], "response": ["r1"]})
    questions = pd.DataFrame({"benchmark": ["medqa", "medqa", "pubmedqa"], "question": ["a", "b", "c"]})
    assert split_references(validation, questions) == {
        "validation": ["q1\nr1"], "benchmark:medqa": ["a", "b"], "benchmark:pubmedqa": ["c"],
    }
    train = pd.DataFrame([{"question": r["Question"], "reasoning": r["Complex_CoT"], "response": r["Response"]} for r in records[:2]])
    assert training_fields(train) == [fields(r) for r in records[:2]]
