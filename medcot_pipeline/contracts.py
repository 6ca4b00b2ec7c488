"""What crosses a boundary between stages or processes, as pydantic models dumped by the writer and
validated by the reader: a renamed or missing key fails loudly instead of silently emptying a model card.

Provenance travels inside the artifacts: the splits name the dataset they came from, the training
summary names the splits, base model, settings and hardware, the merge names the adapter, the report
names the merged model. A later stage follows that chain from its own inputs, never "the latest".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from medcot_pipeline.artifact_io import write_text_atomic
from medcot_pipeline.settings import (
    BenchmarkEvaluationSettings,
    BenchmarkQuestionsSettings,
    EvaluationSettings,
    FormattingSettings,
    TrainingSettings,
)

C = TypeVar("C", bound="Contract")


class ContractError(ValueError):
    """A contract file that is missing or does not hold what its reader expects; the message names the file."""


class Contract(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The file a contract is stored in, inside its artifact directory ("" for one that only travels).
    FILE: ClassVar[str] = ""

    def write(self, directory: Path | str) -> Path:
        path = Path(directory) / self.FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, self.model_dump_json(indent=2) + "\n")
        return path

    @classmethod
    def read(cls: type[C], directory: Path | str) -> C:
        path = Path(directory) / cls.FILE
        if not path.exists():
            raise ContractError(f"{path} does not exist: the artifact is incomplete or from an older medcot")
        try:
            return cls.model_validate_json(path.read_text(encoding="utf-8"))
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "(top level)"
            raise ContractError(f"{path}: {where}: {first['msg']}") from err

    @classmethod
    def parse(cls: type[C], data: Any, where: str) -> C:
        """Validate a mapping that arrived another way (Pipes extras); errors name `where` and the key."""
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            first = err.errors()[0]
            key = ".".join(str(part) for part in first["loc"]) or "(top level)"
            raise ContractError(f"{where}: {key}: {first['msg']}") from err


# ------------------------------------------------------------------------------------------------ data


class DatasetProvenance(Contract):
    """Where the raw records came from (raw_dataset's source.json)."""

    FILE: ClassVar[str] = "source.json"

    source: Literal["sample", "file", "hub"]
    hub_id: str | None = None  # owner/name on the Hub, for source=hub
    hub_config: str | None = None
    hub_split: str | None = None
    revision: str | None = None  # the Hub revision as requested (a commit where pinned)
    location: str  # the file read, or a description of the Hub dataset
    format: str
    records: int
    content_sha256: str
    code_version: str | None = None


class DecontaminationSummary(Contract):
    """What formatted_splits removed from the training split by n-gram overlap (data/decontamination.py)."""

    ngram_words: int
    min_words: int
    boilerplate_documents: int
    references: dict[str, int]  # reference set -> texts compared ("validation", "benchmark:medqa", ...)
    removed_by_source: dict[str, int]  # a record overlapping two sets counts under both
    removed_rows: int
    boilerplate_ngrams: int


class SplitsSummary(Contract):
    """formatted_splits' summary.json: what went in, what was dropped and why, how it was split."""

    FILE: ClassVar[str] = "summary.json"

    dataset: DatasetProvenance
    settings: FormattingSettings
    tokenizer: str
    max_seq_length: int
    cleaning: dict[str, int]
    token_lengths: dict[str, float | None]
    over_max_seq_length: int
    split: dict[str, Any]
    input_rows: int
    train_rows: int
    validation_rows: int
    dropped_rows: int
    dropped_share: float
    decontamination: DecontaminationSummary | None = None
    benchmark_questions_code_version: str | None = None  # of the benchmark_questions it was decontaminated against
    content_sha256: str
    code_version: str | None = None


# ------------------------------------------------------------------------------------------------ training


class BaseModelRef(Contract):
    name: str  # as configured: a Hub id, a local directory, or embedded:...
    reference: str  # what from_pretrained was given (the embedded model's converted directory)
    revision: str | None = None


class WandbTarget(Contract):
    enabled: bool
    mode: Literal["offline", "online"] = "offline"
    project: str = "medcot"
    entity: str | None = None
    dir: str = ""
    run_name: str = ""


class TrainingJob(Contract):
    """The Pipes extras of the training process: everything `lora_adapter` hands it, and nothing secret."""

    base_model: BaseModelRef
    splits_dir: str
    output_dir: str
    checkpoint_dir: str
    checkpoint_location: str | None = None  # object storage: where each checkpoint is committed for other nodes
    max_seq_length: int
    settings: TrainingSettings
    wandb: WandbTarget
    dataset: DatasetProvenance
    splits_sha256: str
    profile: str | None = None
    code_version: str | None = None
    # asset -> code version of the upstream materializations this training read (raw_dataset, formatted_splits)
    lineage: dict[str, str | None] = {}


class WandbRun(Contract):
    run_path: str
    url: str | None = None
    dir: str


class TrainingSummary(Contract):
    """training_summary.json, written beside the adapter by the process that trained it."""

    FILE: ClassVar[str] = "training_summary.json"

    backend: str
    base_weights: str  # how the base was held while training: "4-bit NF4 (QLoRA)", "bfloat16", "float32"
    processes: int
    # Rows per optimizer step over all processes, and how each process made them (data_parallel.py).
    global_batch_rows: int | None = None
    per_process_batch: int | None = None
    per_process_accumulation: int | None = None
    hardware: str  # the accelerator's name, e.g. "NVIDIA H100 80GB HBM3", or "CPU (x86_64)"
    base_model: BaseModelRef
    dataset: DatasetProvenance
    splits_sha256: str
    settings: TrainingSettings  # as configured (the global batch); per-process values are derived
    max_seq_length: int
    profile: str | None = None
    code_version: str | None = None
    lineage: dict[str, str | None] = {}
    global_step: int
    resumed_from: str | None = None
    train_rows: int
    validation_rows: int
    train_loss_final: float | None = None
    eval_loss_final: float | None = None
    learning_rate_final: float | None = None
    loss_per_step: list[dict[str, Any]]
    eval_losses: list[dict[str, Any]]
    # Grading during training (training/grading.py): per graded step, eval_loss, format_compliance,
    # rouge_l_response, truncation_rate and grade; the adapter is the checkpoint of kept_step.
    graded_steps: list[dict[str, Any]] = []
    graded_questions: int = 0
    kept_step: int | None = None
    kept_by: str = "last step"
    tokens_seen: int
    tokens_this_run: int
    tokens_per_second: float | None = None
    training_seconds: float
    wall_time_seconds: float
    peak_gpu_memory_gib: float | None = None
    versions: dict[str, str]
    wandb: WandbRun | None = None


# ------------------------------------------------------------------------------------------------ merge


class MergeRecord(Contract):
    """merge.json beside the merged weights: which adapter went into them."""

    FILE: ClassVar[str] = "merge.json"

    adapter_dir: str
    adapter_sha256: str
    base_model: BaseModelRef
    dtype: str
    parameters: int
    weights_sha256: str
    size_bytes: int
    code_version: str | None = None


# ------------------------------------------------------------------------------------------------ evaluation


class ModelScores(Contract):
    rouge_l_response: float
    rouge_l_full: float
    format_compliance: float
    truncation_rate: float
    continuation_rate: float
    mean_output_tokens: float
    n: int
    mc_accuracy: float | None = None
    mc_n: int = 0
    tokens_per_second: float
    wall_seconds: float
    total_new_tokens: int


# One JSON object a line per answered question (model, question, reference, output, scores), beside report.json.
SAMPLES_FILE = "samples.jsonl"
LOSS_CURVE_FILE = "loss_curve.png"  # beside the adapter: the training loss and eval loss per step, as a PNG


class PairedComparison(Contract):
    """Fine-tuned minus base on one metric over the same questions, with its paired bootstrap interval
    (evaluation/paired_stats.py) and the verdict that interval gives."""

    metric: str  # e.g. "rouge_l_response", "accuracy:medqa"
    label: str
    higher_is_better: bool
    n: int
    base: float
    fine_tuned: float
    difference: float  # fine_tuned - base
    low: float  # the interval of the difference
    high: float
    confidence: float
    verdict: Literal["better", "no detectable change", "worse"]
    # Right/wrong outcomes (accuracy): McNemar's exact test on the questions only one model got right.
    mcnemar_p: float | None = None
    fine_tuned_only: int | None = None
    base_only: int | None = None


class EvaluationReport(Contract):
    """rouge_report's report.json: the scores, the settings that produced them, and what was graded."""

    FILE: ClassVar[str] = "report.json"

    n: int
    models: dict[str, str]  # label -> the model directory or id that answered
    merged_model_dir: str
    settings: EvaluationSettings
    fine_tuned: ModelScores
    base: ModelScores | None = None
    # Fine-tuned minus base per metric, with intervals; empty without the base model.
    comparisons: list[PairedComparison] = []
    code_version: str | None = None


# ------------------------------------------------------------------------------------------------ benchmarks


class BenchmarkSource(Contract):
    name: str  # "medqa", "medmcqa", "pubmedqa", or "sample" (the stand-in written for this project)
    title: str
    questions: int
    skipped: int = 0  # records without a question, two options or a correct letter
    location: str
    revision: str | None = None  # as requested
    commit: str | None = None  # what it resolved to
    stand_in: bool = False


class BenchmarkQuestions(Contract):
    """benchmark_questions' benchmarks.json: which benchmark questions the table holds and where they came from."""

    FILE: ClassVar[str] = "benchmarks.json"

    settings: BenchmarkQuestionsSettings
    sources: list[BenchmarkSource]
    content_sha256: str
    code_version: str | None = None

    @property
    def stand_in(self) -> bool:
        return any(source.stand_in for source in self.sources)


class BenchmarkScores(Contract):
    """One model on one benchmark."""

    benchmark: str
    n: int
    accuracy: float  # the choice read from the generated answer; an answer with no choice counts as wrong
    correct: int
    no_choice: dict[str, int]  # answers with no choice, by reason: cut off, no readable choice, several options named
    cut_off_rate: float
    loglikelihood_accuracy: float | None = None  # option log-likelihood (lm-eval's way): the second number
    mean_output_tokens: float


class GenerationTotals(Contract):
    wall_seconds: float  # inside model.generate
    total_new_tokens: int
    tokens_per_second: float


# One JSON object a line per benchmark question and model (question, options, output, the choice read and how).
BENCHMARK_ANSWERS_FILE = "answers.jsonl"


class BenchmarkReport(Contract):
    """benchmark_report's benchmark_report.json: accuracy per benchmark for each model, and fine-tuned minus base."""

    FILE: ClassVar[str] = "benchmark_report.json"

    models: dict[str, str]
    merged_model_dir: str
    settings: BenchmarkEvaluationSettings
    sources: list[BenchmarkSource]
    questions: int  # per model, over every benchmark
    fine_tuned: list[BenchmarkScores]
    base: list[BenchmarkScores] = []
    comparisons: list[PairedComparison] = []
    generation: dict[str, GenerationTotals]  # model label -> its generation over all benchmarks
    wall_seconds: float  # the whole evaluation: loading, compiling, generating and scoring both models
    code_version: str | None = None

    @property
    def stand_in(self) -> bool:
        return any(source.stand_in for source in self.sources)


class GateCriterion(Contract):
    name: str  # e.g. "ROUGE-L (response), lower end of the 95% interval of the gain"
    threshold: float
    direction: Literal[">=", "<="]
    value: float | None  # None: not measured (and then not passed)
    passed: bool
    note: str = ""


class GateDecision(Contract):
    """The release gate's decision: what blocks (or would block) hub_release, criterion by criterion."""

    status: Literal["passed", "failed", "disabled"]
    criteria: list[GateCriterion]
    reasons: list[str]  # one line per failed criterion; for a disabled gate, what it would have said


# ------------------------------------------------------------------------------------------------ release


class ReleaseManifest(Contract):
    """manifest.json of a staged release: every file that will be pushed, with its sha256; never pushed itself."""

    FILE: ClassVar[str] = "manifest.json"

    repo_id: str
    adapter_mode: Literal["subfolder", "separate_repo", "none"]
    files: dict[str, str]
    total_bytes: int


def read_json(path: Path | str) -> Any:
    """A JSON file that is not a contract (e.g. a library's own config), failing with the path named."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ContractError(f"{path}: {err}") from err
