"""The benchmark loaders on tables in each Hub dataset's own schema, loaded through `datasets` as on the Hub,
the offline stand-in sample, and benchmark_report answering them with a real (tiny) model."""

import dataclasses
import json
from types import SimpleNamespace

import pandas as pd
import pytest

from medcot_pipeline.contracts import BENCHMARK_ANSWERS_FILE, BenchmarkReport, BenchmarkSource
from medcot_pipeline.data import benchmarks
from medcot_pipeline.data.schema import DatasetError, SourceUnreachableError
from medcot_pipeline.settings import BenchmarkEvaluationSettings, BenchmarkQuestionsSettings

COMMIT = "0123456789abcdef0123456789abcdef01234567"

# One record each, with every column the Hub dataset has (names and nesting as published).
HUB_RECORDS = {
    "medqa": [
        {"question": "A 23-year-old has dysuria at 22 weeks of pregnancy. Best treatment?", "answer": "Nitrofurantoin",
         "options": {"A": "Ampicillin", "B": "Ceftriaxone", "C": "Doxycycline", "D": "Nitrofurantoin"},
         "meta_info": "step2&3", "answer_idx": "D", "metamap_phrases": ["dysuria"]},
        # Broken upstream records are skipped and counted, not fatal.
        {"question": "", "answer": "x", "options": {"A": "x", "B": "y", "C": "z", "D": "w"}, "meta_info": "step1",
         "answer_idx": "A", "metamap_phrases": []},
    ],
    "medmcqa": [
        {"id": "e9ad821a", "question": "Which vitamin deficiency causes scurvy?", "opa": "Vitamin A", "opb": "Vitamin C",
         "opc": "Vitamin D", "opd": "Vitamin K", "cop": 1, "choice_type": "single", "exp": "Ascorbic acid.",
         "subject_name": "Biochemistry", "topic_name": "Vitamins"},
        {"id": "bad", "question": "No answer key", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": -1,
         "choice_type": "single", "exp": None, "subject_name": "x", "topic_name": None},
    ],
    "pubmedqa": [
        {"pubid": 21645374, "question": "Do mitochondria play a role in remodelling lace plant leaves?",
         "context": {"contexts": ["Programmed cell death (PCD) is ...", "Results show ..."], "labels": ["BACKGROUND", "RESULTS"],
                     "meshes": ["Mitochondria"], "reasoning_required_pred": ["yes"], "reasoning_free_pred": ["yes"]},
         "long_answer": "Results suggest they do.", "final_decision": "yes"},
    ],
}


@pytest.fixture
def hub_copies(tmp_path, monkeypatch):
    """Each benchmark as a local dataset in its Hub schema; the loader is pointed at it and HfApi resolves COMMIT."""
    from huggingface_hub import HfApi

    for name, records in HUB_RECORDS.items():
        spec = benchmarks.BENCHMARKS[name]
        folder = tmp_path / name / "data"
        folder.mkdir(parents=True)
        pd.DataFrame(records).to_parquet(folder / f"{spec.split}-00000-of-00001.parquet")
        monkeypatch.setitem(benchmarks.BENCHMARKS, name, dataclasses.replace(spec, hub_id=str(tmp_path / name), config=None))
    asked = []
    monkeypatch.setattr(HfApi, "dataset_info", lambda self, repo_id, revision=None, **kw: asked.append(revision) or SimpleNamespace(sha=COMMIT))
    return asked


def test_each_benchmark_becomes_the_same_rows(hub_copies):
    loaded = benchmarks.load_benchmarks("hub", ["medqa", "medmcqa", "pubmedqa"], {"medqa": "v1.0"})
    assert [b.name for b in loaded] == ["medqa", "medmcqa", "pubmedqa"]
    assert hub_copies == ["v1.0", "main", "main"]  # each requested revision was resolved before loading
    medqa, medmcqa, pubmedqa = (b.rows.iloc[0] for b in loaded)
    assert (medqa["answer_idx"], json.loads(medqa["options"])["D"]) == ("D", "Nitrofurantoin")
    assert (medmcqa["id"], medmcqa["answer_idx"], json.loads(medmcqa["options"])["B"]) == ("e9ad821a", "B", "Vitamin C")
    assert json.loads(pubmedqa["options"]) == {"A": "yes", "B": "no", "C": "maybe"} and pubmedqa["answer_idx"] == "A"
    assert pubmedqa["context"].startswith("Programmed cell death") and pubmedqa["id"] == "21645374"
    assert [(b.skipped, b.commit, b.stand_in) for b in loaded] == [(1, COMMIT, False), (1, COMMIT, False), (0, COMMIT, False)]
    assert all(list(b.rows.columns) == list(benchmarks.BENCHMARK_COLUMNS) for b in loaded)


def test_offline_the_hub_loader_names_the_benchmark():
    with pytest.raises(SourceUnreachableError, match=r"cannot load benchmark medqa \(GBaker/MedQA-USMLE-4-options, split test"):
        benchmarks.load_from_hub("medqa", "main")


def test_nothing_usable_fails_naming_the_source():
    with pytest.raises(DatasetError, match="somewhere: no usable questions"):
        benchmarks.to_frame("x", [{"question": "q", "options": {"A": "a"}, "answer_idx": "A"}], "somewhere")


def test_unknown_benchmarks_are_refused_in_the_settings():
    with pytest.raises(ValueError, match="unknown benchmark"):
        BenchmarkQuestionsSettings(benchmarks=["medqa", "usmle"])


def test_the_stand_in_sample_is_labelled_as_such():
    sample = benchmarks.load_sample()
    assert sample.stand_in and len(sample.rows) == 10 and "not MedQA" in sample.title
    assert set(sample.rows["answer_idx"]) <= {"A", "B", "C", "D"}


def test_benchmark_report_answers_and_compares_both_models(tiny_llama_dir, tmp_path):
    from medcot_pipeline.evaluation.benchmark_report import write_benchmark_report

    sample = benchmarks.load_sample()
    sources = [BenchmarkSource(name=sample.name, title=sample.title, questions=len(sample.rows), location=sample.location, stand_in=True)]
    config = BenchmarkEvaluationSettings(batch_size=4, max_new_tokens=6, max_questions=5)
    report = write_benchmark_report(str(tiny_llama_dir), str(tiny_llama_dir), sample.rows, sources, config, tmp_path)
    assert BenchmarkReport.read(tmp_path) == report and report.stand_in and report.questions == 5
    (tuned,), (base,) = report.fine_tuned, report.base
    # A random model never finishes in 6 tokens: every answer is cut off, counted, and wrong.
    assert tuned.n == 5 and tuned.accuracy == 0.0 and tuned.no_choice["cut off"] == 5 and tuned.cut_off_rate == 1.0
    assert tuned.loglikelihood_accuracy == base.loglikelihood_accuracy is not None
    accuracy = next(c for c in report.comparisons if c.metric == "accuracy:sample")
    assert (accuracy.difference, accuracy.low, accuracy.high, accuracy.verdict) == (0.0, 0.0, 0.0, "no detectable change")
    lines = [json.loads(line) for line in (tmp_path / BENCHMARK_ANSWERS_FILE).read_text().splitlines()]
    assert [line["model"] for line in lines] == ["fine_tuned"] * 5 + ["base"] * 5
    assert all(line["read_by"] == "cut off" and line["choice"] is None for line in lines)


def test_questions_per_benchmark_are_a_seeded_sample():
    from medcot_pipeline.evaluation.benchmark_report import select_questions

    rows = pd.concat([benchmarks.load_sample().rows.assign(benchmark=name) for name in ("a", "b")], ignore_index=True)
    picked = select_questions(rows, 3, seed=1)
    assert picked["benchmark"].value_counts().to_dict() == {"a": 3, "b": 3}
    assert picked.equals(select_questions(rows, 3, seed=1)) and not picked.equals(select_questions(rows, 3, seed=2))
