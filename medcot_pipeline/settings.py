"""The settings of each stage and of each shared resource, as plain pydantic models: what a profile in
profiles/*.yaml may turn, and the table of stages (`StageSettings`, the one place a stage is registered).

Defaults are the seed's real-run settings; `profiles/demo.yaml` shrinks them for a CPU. Nothing here
imports Dagster: the training process, generation and `medcot ask` read these same models, and the
Dagster edge subclasses them (`defs/stages.py`'s `dg.Config` classes, `defs/resources.py`'s resources).
Declarations only: fields and validators. What a stage computes lives in the modules that compute it,
which each asset's code version hashes (defs/code_versions.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from medcot_pipeline.artifact_store import CACHE_ENV
from medcot_pipeline.base_models import EMBEDDED_SMOLLM2

HUB_DATASET = "FreedomIntelligence/medical-o1-reasoning-SFT"
# Not pinned: this machine cannot reach the Hub to read the dataset's current commit. Set `hub_revision` to a
# commit in your profile so a rerun reads the same bytes; the `hub_dataset_revision` sensor reports new ones.
HUB_DATASET_REVISION = "main"


class Settings(BaseModel):
    """Unknown keys are errors, so a typo in a profile fails instead of being ignored."""

    model_config = ConfigDict(extra="forbid")


class RawDatasetSettings(Settings):
    source: Literal["sample", "file", "hub"] = Field(
        default="sample", description="sample: the records bundled in the package; file: `path`; hub: `hub_dataset`."
    )
    path: str | None = Field(default=None, description="JSON, JSONL, Parquet or CSV file, for source=file.")
    hub_dataset: str = HUB_DATASET
    hub_config: str = "en"
    hub_split: str = "train"
    hub_revision: str = Field(default=HUB_DATASET_REVISION, description="Dataset commit or tag to load.")
    max_records: int | None = Field(default=None, ge=1, description="Keep only the first N records.")


class FormattingSettings(Settings):
    validation_size: int = Field(default=100, ge=1, description="Records held out for evaluation.")
    seed: int = 3407
    overlength_policy: Literal["drop", "truncate"] = Field(
        default="drop", description="Records longer than max_seq_length: drop them, or keep them and let the trainer truncate."
    )
    max_dropped_share: float = Field(default=0.2, ge=0.0, le=1.0, description="Above this, the drop-rate check warns.")


class TrainingSettings(Settings):
    backend: Literal["auto", "transformers", "unsloth"] = Field(
        default="auto", description="auto: Unsloth on CUDA when installed (one GPU or data-parallel), else transformers + PEFT."
    )
    load_in_4bit: bool = True
    lora_r: int = Field(default=16, ge=1)
    lora_alpha: int = Field(default=32, ge=1)
    lora_dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    lora_target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    max_steps: int = Field(default=200, ge=1)
    per_device_train_batch_size: int = Field(
        default=1, ge=1, description="Rows a micro-batch on one GPU; on several, they share the same rows a step (see num_gpus)."
    )
    gradient_accumulation_steps: int = Field(default=8, ge=1)
    learning_rate: float = Field(default=1e-5, gt=0)
    lr_scheduler_type: str = "linear"
    warmup_steps: int = Field(default=5, ge=0)
    weight_decay: float = Field(default=0.01, ge=0)
    optim: str = "adamw_8bit"
    packing: bool = False
    padding_free: bool = False
    gradient_checkpointing: bool = True
    packed_attention: Literal["varlen", "per_record"] = Field(
        default="varlen",
        description="Unsloth, packed rows: one flash-varlen call per layer, or one SDPA call per record (Unsloth's own "
        "choice on torch 2.11). Both attend within each record only (benchmarks/train_throughput.py --check-varlen).",
    )
    eval_steps: int | None = Field(default=50, ge=1, description="Evaluate on the validation split every N steps; null turns it off.")
    logging_steps: int = Field(default=1, ge=1)
    save_steps: int = Field(default=50, ge=1, description="Checkpoint every N steps; a rerun resumes from the last one.")
    save_total_limit: int = Field(default=2, ge=1)
    num_gpus: int = Field(
        default=1,
        ge=0,
        description="Data-parallel processes; 0 means every visible GPU. per_device_train_batch_size x "
        "gradient_accumulation_steps is the global batch on any number of GPUs: the processes share it.",
    )
    seed: int = 3407
    report_to_wandb: bool = True
    # Grading during training (training/grading.py): the checkpoint that answers best is kept, not the last one.
    grade_questions: int = Field(
        default=16,
        ge=0,
        description="Validation questions answered at each evaluation; format compliance and ROUGE-L choose the "
        "checkpoint that is kept. 0 grades nothing and keeps the last step. Needs eval_steps.",
    )
    grade_max_new_tokens: int = Field(
        default=1024,
        ge=1,
        description="New tokens per graded answer; an answer not closed by then counts as not compliant, so keep it "
        "above the length of a whole answer (medical-o1 answers run to several hundred tokens).",
    )
    grade_attention: Literal["grouped_sdpa", "grouped_triton", "sdpa"] = Field(
        default="grouped_sdpa",
        description="Attention of the copy that answers the graded questions (16-bit base weights): as rouge_report's.",
    )
    grade_kv_cache: Literal["dynamic", "static"] = Field(
        default="dynamic",
        description="static: the grading copy's decode step is compiled once, at the first evaluation, and reused at every later one.",
    )

    @model_validator(mode="after")
    def _checkpoints_at_graded_steps(self):
        # The Trainer can only keep a graded step it saved (load_best_model_at_end refuses other layouts).
        if self.grade_questions and self.eval_steps is not None and self.save_steps % self.eval_steps:
            raise ValueError(
                f"save_steps ({self.save_steps}) must be a multiple of eval_steps ({self.eval_steps}) so that the "
                "best-graded checkpoint can be kept; set them equal, or grade_questions: 0"
            )
        return self

    @field_validator("num_gpus")
    @classmethod
    def _num_gpus_share_the_batch(cls, num_gpus: int, info: ValidationInfo) -> int:
        """A GPU count that cannot share the global batch evenly fails at launch, not after the data steps."""
        from medcot_pipeline.data_parallel import split_global_batch

        batch, accumulation = info.data.get("per_device_train_batch_size"), info.data.get("gradient_accumulation_steps")
        if num_gpus > 1 and batch and accumulation:
            split_global_batch(batch, accumulation, num_gpus)  # raises BatchSplitError (a ValueError) naming the numbers
        return num_gpus


class MergeSettings(Settings):
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    max_shard_size: str = "5GB"


class GenerationSettings(Settings):
    """How answers are generated: shared by `rouge_report` and `medcot ask`."""

    batch_size: int = Field(default=8, ge=1)
    max_new_tokens: int = Field(default=1024, ge=1)
    continuation_tokens: int = Field(
        default=512, ge=0, description="Extra tokens granted to an answer that has not closed </response> yet."
    )
    inference_backend: Literal["auto", "transformers", "unsloth"] = Field(
        default="auto",
        description="auto is transformers: it generated 5.5x faster than Unsloth's inference mode on an H100 (benchmarks/README.md).",
    )
    attention: Literal["grouped_sdpa", "grouped_triton", "sdpa"] = Field(
        default="grouped_sdpa",
        description="grouped_sdpa: sdpa without copying K/V to every query head while decoding; 2.4x faster on an H100 at batch 100. "
        "grouped_triton: a Triton decode kernel that also skips the masked (padding, unwritten) part of a static cache.",
    )
    kv_cache: Literal["dynamic", "static"] = Field(
        default="dynamic", description="static: preallocated KV cache, 1.7x faster than dynamic on an H100 at batch 100."
    )
    do_sample: bool = False
    temperature: float = Field(default=0.7, gt=0)
    top_p: float = Field(default=0.95, gt=0, le=1)
    repetition_penalty: float | None = Field(
        default=None, gt=0, description="Above 1 discourages repeating tokens (transformers' repetition_penalty); unset: none."
    )
    no_repeat_ngram_size: int | None = Field(
        default=None, ge=1, description="Never repeat an n-gram of this many tokens (transformers' no_repeat_ngram_size); unset: off."
    )


class EvaluationSettings(GenerationSettings):
    num_questions: int | None = Field(default=None, ge=1, description="Validation questions to answer; null means all.")
    compare_with_base: bool = True
    # The release gate (evaluation/release_gate.py) reads the 95% paired intervals of fine-tuned minus base;
    # a criterion set to null is not checked. Its decision is shown on rouge_report, hub_release and the card.
    gate_enabled: bool = Field(default=True, description="false: the gate records its numbers but blocks nothing.")
    gate_rouge_l_lower_bound: float | None = Field(
        default=0.0,
        ge=-1,
        le=1,
        description="The lower end of the 95% interval of fine-tuned minus base ROUGE-L (response) must be at least "
        "this: 0 asks for a detectable improvement.",
    )
    gate_accuracy_lower_bound: float | None = Field(
        default=-0.05,
        ge=-1,
        le=1,
        description="For each benchmark in benchmark_report, the lower end of the 95% interval of the accuracy "
        "difference must be at least this: -0.05 refuses a model that may have lost more than 5 points.",
    )
    gate_format_compliance_floor: float | None = Field(
        default=0.9, ge=0, le=1, description="The fine-tuned model's share of well-formed <think>/<response> answers must be at least this."
    )
    gate_truncation_rate_ceiling: float | None = Field(
        default=0.1, ge=0, le=1, description="The fine-tuned model's share of answers cut off at the token limit must be at most this."
    )


BENCHMARK_NAMES = ("medqa", "medmcqa", "pubmedqa")


class BenchmarkQuestionsSettings(Settings):
    source: Literal["sample", "hub"] = Field(
        default="sample",
        description="hub: the standard benchmarks' test questions; sample: 10 questions written for this project "
        "(offline), which stand in for them and are never reported as a benchmark.",
    )
    benchmarks: list[str] = Field(default=list(BENCHMARK_NAMES), description=f"Which to load (source=hub): {', '.join(BENCHMARK_NAMES)}.")
    # Each revision is resolved to its commit when loaded, and the commit is recorded; pin a commit here to
    # evaluate the same questions every time (this machine could not read the Hub to pin one).
    medqa_revision: str = "main"
    medmcqa_revision: str = "main"
    pubmedqa_revision: str = "main"

    @field_validator("benchmarks")
    @classmethod
    def _known_benchmarks(cls, names: list[str]) -> list[str]:
        unknown = [name for name in names if name not in BENCHMARK_NAMES]
        if unknown:
            raise ValueError(f"unknown benchmark(s) {unknown}; known: {', '.join(BENCHMARK_NAMES)}")
        return names


class BenchmarkEvaluationSettings(GenerationSettings):
    """How benchmark_report answers: in the model's own format, with room to reason; a cut-off answer counts as wrong."""

    max_questions: int | None = Field(
        default=None, ge=1, description="Questions per benchmark (a seeded sample, the same for both models); null: all."
    )
    seed: int = 3407
    compare_with_base: bool = True
    continuation_tokens: int = Field(default=0, ge=0, description="Extra tokens for an answer still open at max_new_tokens.")


class ReleaseSettings(Settings):
    repo_id: str = Field(default="your-org/medcot-llama-3.2-3b", description="Hub repository for the merged model.")
    private: bool = True
    adapter: Literal["subfolder", "separate_repo", "none"] = Field(
        default="subfolder", description="Where the LoRA adapter goes: `adapter/` in the model repo, `<repo_id>-lora`, or nowhere."
    )
    license: str | None = Field(
        default=None,
        description="The release's license; unset: the base model's, read from its model card (or medcot's table of known base models).",
    )
    commit_message: str = "medcot release"


class ArtifactsSettings(Settings):
    """Where artifacts live (the `artifacts` resource)."""

    root: str = Field(default="artifacts", description="A directory, or s3://bucket/prefix for object storage.")
    cache_dir: str | None = Field(
        default=None,
        description=f"Object-storage roots: this node's copies (default ${CACHE_ENV}, else ~/.cache/medcot/artifacts/<root hash>).",
    )


class BaseModelSettings(Settings):
    """The model being fine-tuned (the `base_model` resource)."""

    name: str = Field(default=EMBEDDED_SMOLLM2, description="Hub id, local directory, or embedded:smollm2-135m-instruct.")
    revision: str | None = Field(default=None, description="Hub revision of the base model.")
    max_seq_length: int = Field(default=1024, ge=16, description="Longest training sequence in tokens.")


class HubSettings(Settings):
    """The Hugging Face Hub (the `hub` resource). No token: it comes from HF_TOKEN where it is used."""

    endpoint: str | None = Field(default=None, description="Another Hub endpoint (HF_ENDPOINT), e.g. a mirror.")


class WandbSettings(Settings):
    """Weights & Biases (the `wandb` resource). No key: it comes from WANDB_API_KEY where it is used."""

    project: str = "medcot"
    entity: str | None = None


class ResourceSettings(Settings):
    """A profile's `resources:` section, one field per configurable resource."""

    artifacts: ArtifactsSettings = Field(default_factory=ArtifactsSettings)
    base_model: BaseModelSettings = Field(default_factory=BaseModelSettings)
    hub: HubSettings = Field(default_factory=HubSettings)
    wandb: WandbSettings = Field(default_factory=WandbSettings)


@dataclass(frozen=True)
class Placement:
    """Where a stage sits in the graph: its asset group, and whether its step holds GPUs."""

    group: str
    gpu: bool = False


class StageSettings(Settings):
    """A profile's `ops:` section: one field per asset, in graph order, with its settings and its placement.

    The one place a stage is registered: `STAGES` below, the profiles and the Dagster assets all read it.
    """

    raw_dataset: Annotated[RawDatasetSettings, Placement("data")] = Field(default_factory=RawDatasetSettings)
    benchmark_questions: Annotated[BenchmarkQuestionsSettings, Placement("data")] = Field(default_factory=BenchmarkQuestionsSettings)
    formatted_splits: Annotated[FormattingSettings, Placement("data")] = Field(default_factory=FormattingSettings)
    lora_adapter: Annotated[TrainingSettings, Placement("model", gpu=True)] = Field(default_factory=TrainingSettings)
    merged_model: Annotated[MergeSettings, Placement("model", gpu=True)] = Field(default_factory=MergeSettings)
    rouge_report: Annotated[EvaluationSettings, Placement("evaluation", gpu=True)] = Field(default_factory=EvaluationSettings)
    benchmark_report: Annotated[BenchmarkEvaluationSettings, Placement("evaluation", gpu=True)] = Field(
        default_factory=BenchmarkEvaluationSettings
    )
    hub_release: Annotated[ReleaseSettings, Placement("release")] = Field(default_factory=ReleaseSettings)


@dataclass(frozen=True)
class Stage:
    asset: str
    settings: type[Settings]
    group: str
    gpu: bool


def _stage_table() -> dict[str, Stage]:
    table = {}
    for asset, field in StageSettings.model_fields.items():
        placement = next((item for item in field.metadata if isinstance(item, Placement)), None)
        if placement is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, Settings)):
            raise TypeError(f"StageSettings.{asset} must be declared as Annotated[<a Settings class>, Placement(group)]")
        table[asset] = Stage(asset, field.annotation, placement.group, placement.gpu)
    return table


# asset name -> Stage, in graph order.
STAGES: dict[str, Stage] = _stage_table()
