"""The standard medical benchmarks' test questions, as one table: MedQA, MedMCQA and PubMedQA from the Hub,
or, offline, a small multiple-choice sample written for this project that stands in for them.

Every benchmark becomes the same rows: `benchmark`, `id`, `question`, `context` (PubMedQA's abstract, else
null), `options` (a JSON object of letter -> text) and `answer_idx` (the correct letter). PubMedQA's
yes / no / maybe becomes options A / B / C, so one parser reads every benchmark's answers.

The Hub loaders resolve the requested revision to its commit before loading and record that commit, so a
report names exactly what was evaluated; pin a commit in the profile to evaluate the same bytes every time.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import pandas as pd

from medcot_pipeline.data.schema import DatasetError, SourceUnreachableError

BENCHMARK_COLUMNS = ("benchmark", "id", "question", "context", "options", "answer_idx")
SAMPLE = "sample"
SAMPLE_FILE = "benchmark_sample.jsonl"
SAMPLE_TITLE = "medcot benchmark sample (10 questions written for this project; not MedQA, MedMCQA or PubMedQA)"
LETTERS = "ABCDE"
PUBMEDQA_OPTIONS = {"A": "yes", "B": "no", "C": "maybe"}


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str
    hub_id: str
    config: str | None
    split: str
    to_row: Callable[[dict], dict]  # one Hub record -> id, question, context, options, answer_idx


def _medqa_row(record: dict) -> dict:
    options = record["options"]
    return {
        "id": None,  # the Hub copy has no id; its position is used
        "question": record["question"],
        "context": None,
        "options": {letter: options[letter] for letter in LETTERS if options.get(letter) is not None},
        "answer_idx": record["answer_idx"],
    }


def _medmcqa_row(record: dict) -> dict:
    options = {
        letter: record[key] for letter, key in zip(LETTERS, ("opa", "opb", "opc", "opd"), strict=False)
    }  # MedMCQA has four of the five
    correct = record["cop"]
    return {
        "id": record.get("id"),
        "question": record["question"],
        "context": None,
        "options": options,
        "answer_idx": LETTERS[correct] if isinstance(correct, int) and 0 <= correct < len(options) else None,
    }


def _pubmedqa_row(record: dict) -> dict:
    contexts = record["context"]["contexts"] if isinstance(record.get("context"), dict) else []
    decision = str(record["final_decision"]).strip().lower()
    letter = next((key for key, value in PUBMEDQA_OPTIONS.items() if value == decision), None)
    return {
        "id": str(record.get("pubid")),
        "question": record["question"],
        "context": " ".join(str(part) for part in contexts) or None,
        "options": dict(PUBMEDQA_OPTIONS),
        "answer_idx": letter,
    }


BENCHMARKS = {
    benchmark.name: benchmark
    for benchmark in (
        # The USMLE questions with four options, test split (1,273), as lm-eval and most papers report MedQA.
        Benchmark("medqa", "MedQA (USMLE, 4 options), test", "GBaker/MedQA-USMLE-4-options", None, "test", _medqa_row),
        # The test split has no answers; the validation split (4,183) is what everyone reports.
        Benchmark("medmcqa", "MedMCQA, validation", "openlifescienceai/medmcqa", None, "validation", _medmcqa_row),
        # The 1,000 expert-labelled questions (yes / no / maybe), each with its abstract as context.
        Benchmark("pubmedqa", "PubMedQA (labelled), yes / no / maybe", "qiaojin/PubMedQA", "pqa_labeled", "train", _pubmedqa_row),
    )
}


@dataclass(frozen=True)
class LoadedBenchmark:
    name: str
    title: str
    rows: pd.DataFrame
    location: str
    revision: str | None = None  # as requested
    commit: str | None = None  # what the requested revision resolved to when it was loaded
    stand_in: bool = False
    skipped: int = 0  # records without a question, two options or a correct letter among them


def load_sample() -> LoadedBenchmark:
    """The bundled stand-in: the same shape as a real benchmark, and never mistaken for one."""
    path = Path(str(files("medcot_pipeline") / "sample_data" / SAMPLE_FILE))
    with open(path, encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    rows, skipped = to_frame(SAMPLE, records, str(path))
    return LoadedBenchmark(SAMPLE, SAMPLE_TITLE, rows, str(path), stand_in=True, skipped=skipped)


def load_from_hub(name: str, revision: str) -> LoadedBenchmark:
    """One benchmark's questions from the Hub, at `revision` (resolved to a commit first and loaded at it)."""
    import datasets
    from huggingface_hub import HfApi

    benchmark = BENCHMARKS[name]
    where = f"{benchmark.hub_id}{f' ({benchmark.config})' if benchmark.config else ''}, split {benchmark.split}"
    try:
        commit = HfApi().dataset_info(benchmark.hub_id, revision=revision).sha
        dataset = datasets.load_dataset(benchmark.hub_id, benchmark.config, split=benchmark.split, revision=commit)
    except Exception as err:  # offline, auth, unknown revision or split: the step cannot go on either way
        raise SourceUnreachableError(
            f"cannot load benchmark {name} ({where}, revision {revision}) from the Hugging Face Hub: {type(err).__name__}: {err}"
        ) from err
    location = f"{where} at {commit}"
    rows, skipped = to_frame(name, (benchmark.to_row(record) for record in dataset), location)
    return LoadedBenchmark(name, benchmark.title, rows, location, revision=revision, commit=commit, skipped=skipped)


def usable(row: dict) -> bool:
    """A question with text, at least two non-empty options, and a correct letter among them."""
    question, options = row.get("question"), row.get("options")
    return (
        isinstance(question, str)
        and bool(question.strip())
        and isinstance(options, dict)
        and len(options) >= 2
        and all(isinstance(text, str) and text.strip() for text in options.values())
        and row.get("answer_idx") in options
    )


def to_frame(name: str, rows: Iterable[dict], where: str) -> tuple[pd.DataFrame, int]:
    """(the usable rows as a table, how many were skipped); none usable fails naming `where`."""
    out, skipped = [], 0
    for position, row in enumerate(rows):
        if not usable(row):
            skipped += 1
            continue
        question, options, letter = row["question"], row["options"], row["answer_idx"]
        context = row.get("context")
        out.append(
            {
                "benchmark": name,
                "id": str(row["id"]) if row.get("id") not in (None, "") else f"{name}-{position}",
                "question": question.strip(),
                "context": context.strip() if isinstance(context, str) and context.strip() else None,
                "options": json.dumps(options, ensure_ascii=False),
                "answer_idx": letter,
            }
        )
    if not out:
        raise DatasetError(f"{where}: no usable questions ({skipped} without a question, two options or a correct letter)")
    return pd.DataFrame(out, columns=list(BENCHMARK_COLUMNS)), skipped


QUESTIONS_FILE = "questions.parquet"


def load_benchmarks(source: str, names: Iterable[str], revisions: dict[str, str]) -> list[LoadedBenchmark]:
    """The stand-in sample (source=sample), or each named benchmark from the Hub at its revision."""
    if source == SAMPLE:
        return [load_sample()]
    names = list(dict.fromkeys(names))
    if not names:
        raise DatasetError("benchmark_questions: `benchmarks` names no benchmark to load (medqa, medmcqa, pubmedqa)")
    return [load_from_hub(name, revisions.get(name, "main")) for name in names]


def read_questions(directory: str | Path) -> pd.DataFrame:
    """benchmark_questions' table; fails naming the file when it is missing or lacks a column."""
    from medcot_pipeline.data.schema import require_columns

    path = Path(directory) / QUESTIONS_FILE
    if not path.exists():
        raise DatasetError(f"benchmark questions file {path} does not exist: materialize benchmark_questions again")
    frame = pd.read_parquet(path)
    require_columns(frame, BENCHMARK_COLUMNS, str(path))
    return frame
