"""The model card (README.md) of a release: Hub metadata, model-index scores and a body a clinic engineer can act on.

Every fact on it comes from the artifacts the release is made of (`ReleaseFacts.from_artifacts`): the training
summary, the merge record and the evaluation report, the adapter's own weights file for its size, and the base
model's own card for its license. Numbers are written by `medcot_pipeline.presentation`, as on the asset pages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from medcot_pipeline.backends import backend_named
from medcot_pipeline.base_models import EMBEDDED_HUB_IDS, base_model_license
from medcot_pipeline.contracts import (
    BenchmarkReport,
    DecontaminationSummary,
    EvaluationReport,
    GateDecision,
    SplitsSummary,
    TrainingSummary,
)
from medcot_pipeline.data.benchmarks import BENCHMARKS
from medcot_pipeline.evaluation.release_gate import decide
from medcot_pipeline.evaluation.scores import METRICS, benchmark_rows, comparison_table, markdown_table
from medcot_pipeline.presentation.report import answer_limit_text
from medcot_pipeline.presentation.text import duration_text, score_text, setting_text, size_text
from medcot_pipeline.presentation.training import graded_steps_markdown, kept_weights_text
from medcot_pipeline.presentation.verdict import gate_markdown

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# PEFT's weights file: its size is the adapter's download.
ADAPTER_WEIGHTS = "adapter_model.safetensors"

# Tags every release carries; the training stack's own (the backend's card_tags: "unsloth") only when it trained.
TAGS = ["medical", "reasoning", "chain-of-thought", "lora", "trl", "text-generation"]

NOT_A_MEDICAL_DEVICE = (
    "**This model is not a medical device and is not for clinical decisions.** It has not been cleared or "
    "approved by any regulator, has not been clinically validated, and must not be used to diagnose, treat, "
    "triage or prescribe for any patient. Its answers can be wrong while sounding confident."
)

TRAINING_LABELS = {
    "profile": "Profile",
    "backend": "Training backend",
    "base_weights": "Base weights while training",
    "processes": "Data-parallel processes",
    "max_steps": "Optimizer steps",
    "learning_rate": "Learning rate",
    "per_device_train_batch_size": "Batch size per device",
    "gradient_accumulation_steps": "Gradient accumulation steps",
    "max_seq_length": "Max sequence length (tokens)",
    "packing": "Packed sequences",
    "lora_r": "LoRA rank r",
    "lora_alpha": "LoRA alpha",
    "lora_dropout": "LoRA dropout",
    "lora_target_modules": "LoRA target modules",
    "global_step": "Steps trained",
    "kept_step": "Step kept",
    "eval_loss_final": "Final validation loss",
}
# The dataset as the card names it when it came from the package's own sample rather than the Hub or a file.
BUNDLED_SAMPLE = "medcot's bundled sample"


class ReleaseFactsError(ValueError):
    """A fact the card must state cannot be established; the message names the setting that would settle it."""


@dataclass
class ReleaseFacts:
    """Everything the card states, read from the artifacts that made the release; nothing typed in by hand."""

    repo_id: str
    license: str
    training: TrainingSummary
    evaluation: EvaluationReport
    code_version: dict[str, str]  # asset -> code version of the materialization in this release's lineage
    adapter_location: str | None = None  # "adapter/" (subfolder of this repo), another repo id, or None
    adapter_bytes: int | None = None  # the adapter's weights file, as published
    benchmarks: BenchmarkReport | None = None
    gate: GateDecision | None = None  # the release gate's decision; decided from the reports when None
    decontamination: DecontaminationSummary | None = None
    language: str = "en"

    @classmethod
    def from_artifacts(
        cls,
        repo_id: str,
        lora_adapter: Path | str,
        rouge_report: Path | str,
        code_version: dict[str, str],
        adapter_location: str | None,
        license: str | None = None,
        benchmark_report: Path | str | None = None,
        formatted_splits: Path | str | None = None,
    ) -> ReleaseFacts:
        """The facts of a release from its artifact directories: the contracts beside them, the adapter's weights
        file, the base model's card. `license` overrides the base model's (hub_release's `license` setting)."""
        summary = TrainingSummary.read(lora_adapter)
        report = EvaluationReport.read(rouge_report)
        benchmarks = BenchmarkReport.read(benchmark_report) if benchmark_report is not None else None
        # The decontamination the card reports is that of the splits this adapter was trained on, or none.
        splits = SplitsSummary.read(formatted_splits) if formatted_splits is not None else None
        decontaminated = splits.decontamination if splits is not None and splits.content_sha256 == summary.splits_sha256 else None
        weights = Path(lora_adapter) / ADAPTER_WEIGHTS
        found = license or base_model_license(summary.base_model.name, summary.base_model.reference)
        if not found:
            raise ReleaseFactsError(
                f"hub_release.license: the license of the base model {summary.base_model.name} is in neither its model "
                "card (README.md) nor medcot's table of known base models (base_models.py); set `license` in the "
                "profile's hub_release config to the base model's license"
            )
        return cls(
            repo_id=repo_id,
            license=found,
            training=summary,
            evaluation=report,
            code_version=code_version,
            adapter_location=adapter_location,
            adapter_bytes=weights.stat().st_size if weights.exists() else None,
            benchmarks=benchmarks,
            gate=decide(report, benchmarks),
            decontamination=decontaminated,
        )

    @property
    def decision(self) -> GateDecision:
        return self.gate or decide(self.evaluation, self.benchmarks)

    @property
    def tags(self) -> list[str]:
        return TAGS + list(backend_named(self.training.backend).card_tags)

    @property
    def base_model(self) -> str:
        return self.training.base_model.name

    @property
    def local_base_name(self) -> str:
        """A base model that is no Hub id, by its directory's name: the rest is a path on the machine that trained."""
        return Path(self.base_model).name or self.base_model

    @property
    def dataset_id(self) -> str:
        """The Hub id, or a name for a dataset without one (never a path on the machine that trained)."""
        dataset = self.training.dataset
        if dataset.source == "sample":
            return BUNDLED_SAMPLE
        if dataset.source == "file":
            return f"{Path(dataset.location).name} (a local file, sha256 {dataset.content_sha256[:12]})"
        return dataset.hub_id or dataset.location

    @property
    def dataset_config(self) -> str | None:
        return self.training.dataset.hub_config

    @property
    def dataset_revision(self) -> str | None:
        return self.training.dataset.revision

    @property
    def wandb_url(self) -> str | None:
        """The W&B run's address, for an online run only: an offline run's directory is a path on the machine
        that trained, nothing a reader of the card can open."""
        run = self.training.wandb
        return run.url if run is not None and run.url and run.url.startswith(("http://", "https://")) else None

    def training_rows(self) -> dict[str, Any]:
        summary = self.training
        rows = {
            # The settings as configured, then what actually ran (the backend "auto" resolved to, for one).
            **summary.settings.model_dump(),
            "profile": summary.profile,
            "backend": summary.backend,
            "base_weights": summary.base_weights,
            "processes": summary.processes,
            "max_seq_length": summary.max_seq_length,
            "global_step": summary.global_step,
            "kept_step": summary.kept_step,
            # Measured, not configured: three decimals, as every loss and score on the card.
            "eval_loss_final": None if summary.eval_loss_final is None else score_text(summary.eval_loss_final),
        }
        return {key: rows[key] for key in TRAINING_LABELS if rows.get(key) is not None}


def hub_model_id(name: str) -> str | None:
    """The Hub id of a base model reference, or None for a local checkpoint the Hub cannot link to."""
    if name in EMBEDDED_HUB_IDS:
        return EMBEDDED_HUB_IDS[name]
    if HUB_ID.match(name) and not Path(name).exists():
        return name
    return None


def hub_dataset_id(name: str) -> str | None:
    return name if HUB_ID.match(name) and not Path(name).exists() else None


def adapter_is_subfolder(location: str | None) -> bool:
    return location is not None and location.endswith("/")


def eval_results(facts: ReleaseFacts) -> list[EvalResult]:
    """The fine-tuned model's scores as model-index entries (the base model's scores stay in the table).

    Only for a dataset on the Hub: the model-index names its dataset by Hub id (`type`), which a local file or
    the bundled sample does not have; their scores are in the card's table alone. No split is named: the questions
    were held out of the dataset's train split, so `split: train` would say the model was scored on its training data.
    """
    report = facts.evaluation
    dataset_id = hub_dataset_id(facts.dataset_id)
    if dataset_id is None:
        return []
    short_name = dataset_id.split("/")[-1]
    results = []
    for metric in METRICS:
        value = getattr(report.fine_tuned, metric.key)
        if value is None or metric.model_index_type is None:
            continue
        multiple_choice = metric.key == "mc_accuracy"
        results.append(
            EvalResult(
                task_type="multiple-choice" if multiple_choice else "text-generation",
                task_name=(
                    "Medical multiple-choice questions (option log-likelihood)"
                    if multiple_choice
                    else "Medical question answering with reasoning"
                ),
                dataset_type=dataset_id,
                dataset_name=(
                    f"{short_name}, {report.fine_tuned.mc_n} multiple-choice questions held out of training"
                    if multiple_choice
                    else f"{short_name}, {report.n} questions held out of training"
                ),
                dataset_config=facts.dataset_config,
                dataset_revision=facts.dataset_revision,
                metric_type=metric.model_index_type,
                metric_name=metric.model_index_name,
                metric_config="rougeL" if metric.model_index_type == "rouge" else None,
                metric_value=round(float(value), 4),
            )
        )
    benchmarks = facts.benchmarks
    if benchmarks is not None and not benchmarks.stand_in:
        sources = {source.name: source for source in benchmarks.sources}
        for scores in benchmarks.fine_tuned:
            source = sources.get(scores.benchmark)
            if source is None:
                continue
            spec = BENCHMARKS.get(scores.benchmark)
            results.append(
                EvalResult(
                    task_type="multiple-choice",
                    task_name="Medical multiple-choice questions, answered with reasoning (the choice read from the answer)",
                    dataset_type=spec.hub_id if spec else source.name,
                    dataset_name=f"{source.title} ({scores.n} questions)",
                    dataset_config=spec.config if spec else None,
                    dataset_split=spec.split if spec else None,
                    dataset_revision=source.commit,
                    metric_type="accuracy",
                    metric_name="Accuracy",
                    metric_value=round(scores.accuracy, 4),
                )
            )
    return results


def training_table(training: dict[str, Any]) -> str:
    keys = [k for k in TRAINING_LABELS if k in training] + sorted(k for k in training if k not in TRAINING_LABELS)
    rows = ["| Setting | Value |", "|---|---|"]
    rows += [f"| {TRAINING_LABELS.get(k, k)} | {setting_text(training[k]).replace('|', '/')} |" for k in keys]
    return "\n".join(rows)


def code_versions_text(code_version: dict[str, str]) -> str:
    rows = ["| Asset | Code version |", "|---|---|"]
    rows += [f"| `{asset}` | `{version}` |" for asset, version in code_version.items()]
    return "\n".join(rows)


def wandb_text(url: str | None, logged: bool, graded: bool = False) -> str:
    """Where the training curves are: a public W&B address for an online run; never a local path."""
    if not logged:
        return "Training was not logged to Weights & Biases."
    if not url:
        return "Training was logged to Weights & Biases offline; that run was not synced, so it has no public page."
    curves = " (format compliance and ROUGE-L per evaluation: `eval/format_compliance`, `eval/rouge_l_response`)" if graded else ""
    return f"Training curves{curves}: [{url}]({url})"


def kept_checkpoint_text(summary: TrainingSummary) -> str:
    """Which training step's weights these are and why, with every evaluation's grades where there were any."""
    text = kept_weights_text(summary)
    return f"{text}\n\n{graded_steps_markdown(summary)}" if summary.graded_steps else text


def sample_sizes_text(report: EvaluationReport) -> str:
    """The n behind each row of the results table."""
    text = f"n = {report.n} answers per model for ROUGE-L, well-formed output and cut-off"
    if report.fine_tuned.mc_accuracy is not None:
        text += f"; n = {report.fine_tuned.mc_n} questions with answer options for multiple-choice accuracy"
    return text + "."


# Other models' MedQA accuracies, quoted as context beside ours (HuatuoGPT-o1 paper, Chen et al. 2024, arXiv:2412.18925).
MEDQA_CONTEXT = (("Llama-3.1-8B-Instruct", 58.7), ("HuatuoGPT-o1-8B", 72.6))


def multiple_choice_text(report: EvaluationReport) -> str:
    """The bullet that says what the multiple-choice row measures, on how many questions, and what to compare it with."""
    n = report.fine_tuned.mc_n
    if report.fine_tuned.mc_accuracy is None or n == 0:
        return "- Multiple-choice accuracy was not measured: none of the held-out questions carries answer options."
    others = ", ".join(f"{name} {value}%" for name, value in MEDQA_CONTEXT)
    return (
        f"- Multiple-choice accuracy: {n} of the held-out questions are MedQA-style multiple choice (a question, "
        "lettered options, one right letter). Each option letter is scored by its log-likelihood after a plain "
        "`Question: … A. … Answer:` prompt (not the chat template), as lm-eval-harness's `medqa_4options` task "
        "scores it, and the accuracy is the share of questions whose most likely letter is the right one. It "
        "measures what the model knows whether or not it writes the tagged format; chance is 20-25% with four "
        f"or five options, and with n={n} one question moves it by {100 / n:.1f} points.\n"
        f"- For context only, other models on the MedQA test set as reported in the HuatuoGPT-o1 paper: {others}. "
        "These are not this model's scores, and the paper measured them by generating a reasoned answer and "
        "reading its letter, not by option log-likelihood."
    )


HOW_TO_READ_AN_INTERVAL = (
    "Each change is fine-tuned minus base on the same questions, with a 95% paired bootstrap interval in brackets "
    '(the questions resampled 10,000 times, each with both models\' scores). "better" or "worse" means the '
    'whole interval lies on one side of zero; "no detectable change" means it straddles zero: at this number of '
    "questions the data cannot tell the two models apart, whatever the point estimate says."
)


def benchmarks_text(report: BenchmarkReport | None) -> str:
    """The benchmarks section: what was answered and how it was graded, the table, and the stand-in warning."""
    if report is None or not report.fine_tuned:
        return "No standard benchmark was measured for this release."
    settings = report.settings
    lines = []
    if report.stand_in:
        lines.append(
            "**These are not benchmark results.** The questions are medcot's stand-in sample, written for the project "
            "to exercise the evaluation offline; they are not MedQA, MedMCQA or PubMedQA, and the numbers say nothing "
            "about how the model does on those."
        )
    lines.append(
        f"Each model answered every question in its own format (greedy, up to {settings.max_new_tokens} new tokens"
        f"{f' + {settings.continuation_tokens}' if settings.continuation_tokens else ''}); the chosen option was read "
        "from the answer's `<response>` (for a model without the tags, from its whole answer) by medcot's documented "
        "parser. An answer cut off at the limit, or naming no option or several, counts as wrong and is counted under "
        '"no choice". The option log-likelihood accuracy (lm-eval-harness\'s way: the likeliest option letter after '
        "a plain prompt) is shown beside it as a second number."
    )
    lines.append(markdown_table(benchmark_rows(report)))
    read = [f"{s.title}: `{s.commit}`" for s in report.sources if s.commit]
    if read:
        lines.append("Read from the Hub at: " + "; ".join(read) + ".")
    return "\n\n".join(lines)


def decontamination_text(summary: DecontaminationSummary | None) -> str:
    if summary is None:
        return "The training split was not checked for overlap with the evaluation questions."
    compared = ", ".join(f"{name} ({count} texts)" for name, count in summary.references.items())
    removed = ", ".join(f"{name}: {count}" for name, count in summary.removed_by_source.items() if count) or "none"
    return (
        f"Before training, every training record was compared with {compared}: a record sharing a run of "
        f"{summary.ngram_words} words with any of them (after normalising case, Unicode and spacing; shorter texts "
        f"as a whole) was left out, as in the GPT-3 and OLMo decontamination. Records left out: "
        f"{summary.removed_rows} ({removed}). The `training_data_is_decontaminated` check found none left."
    )


def _decoding(report: EvaluationReport) -> str:
    """How the evaluation generated, e.g. ' with greedy decoding, up to 120 new tokens, + 40 for an answer still open (160 in all)'."""
    settings = report.settings
    if settings.do_sample:
        text = f" with sampling (temperature {settings.temperature:g}, top-p {settings.top_p:g})"
    else:
        text = " with greedy decoding"
    return text + f", up to {answer_limit_text(report)}"


def _link(hub_id: str | None, fallback: str) -> str:
    return f"[{hub_id}](https://huggingface.co/{hub_id})" if hub_id else f"`{fallback}` (a local checkpoint)"


def _dataset_link(hub_id: str | None, fallback: str) -> str:
    return f"[{hub_id}](https://huggingface.co/datasets/{hub_id})" if hub_id else f"`{fallback}`"


MODEL_CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

A fine-tune of {{ base_link }} that answers medical questions by writing out its reasoning first and then a
short answer. It was trained with LoRA ({{ quantization }}, {{ stack }}) on {{ dataset_link }}, whose
answers pair a question with a step-by-step clinical reasoning trace and a final response. The weights in this
repository have the adapter merged in, so they load like any `transformers` causal language model.

Users in mind: ML engineers at clinics who evaluate or build on language models, not clinicians at the bedside.

{{ not_a_medical_device }}

## Output format

Every answer has two tagged parts, reasoning and response:

```text
<think>the reasoning, step by step</think><response>the final answer</response>
```

Show the `<response>` part to readers; keep the `<think>` part for reviewing how the answer was reached.

## Usage

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model_id = "{{ repo_id }}"
tokenizer = AutoTokenizer.from_pretrained(model_id)
model = AutoModelForCausalLM.from_pretrained(model_id, dtype="auto", device_map="auto")

question = "Which electrolyte disturbance most often causes peaked T waves on an ECG?"
messages = [{"role": "user", "content": question}]
inputs = tokenizer.apply_chat_template(
    messages, add_generation_prompt=True, return_dict=True, return_tensors="pt"
).to(model.device)
output = model.generate(**inputs, max_new_tokens=1024, do_sample=False)
text = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

reasoning = text.split("<think>", 1)[-1].split("</think>", 1)[0].strip()
answer = text.split("<response>", 1)[-1].split("</response>", 1)[0].strip()
print("Reasoning:", reasoning)
print("Answer:", answer)
```

The prompt is the plain chat template with one user turn and no system prompt, as in training. Long
reasoning needs a generous `max_new_tokens`; an answer cut off before `</response>` has no usable response.

{{ adapter_section }}

## Evaluation

{{ n_text }}, answered by {{ answered_by }}{{ decoding }}; each answer is graded against the reference
answer of the dataset.

### Release gate

{{ gate }}

### Held-out questions

{{ results_table }}

{{ sample_sizes }} {{ how_to_read }}

- ROUGE-L F1 measures word overlap with the reference (longest common subsequence). It rewards answers phrased
  like the references, not medical correctness: a correct answer in other words scores low, and a fluent wrong
  one can score well.
- Well-formed output: the share of answers with one `<think>` part followed by one `<response>` part.
- Cut off: the share of answers that hit the token limit before closing `</response>`.
{{ multiple_choice }}

### Benchmarks

{{ benchmarks }}

### Decontamination

{{ decontamination }}

## Training

| Data | Value |
|---|---|
| Dataset | {{ dataset_link }} |
| Config | `{{ dataset_config }}` |
| Revision | `{{ dataset_revision }}` |

{{ training_table }}

Hardware: {{ hardware }}. Training wall time: {{ wall_time }}.

{{ kept_checkpoint }}

## Intended use

- Research and engineering on medical question answering: comparing models, studying reasoning traces,
  building evaluation sets, prototyping tools whose every output a qualified person reviews.
- Teaching and demonstrations of fine-tuning with visible reasoning.

## Limitations

- Trained on a single synthetic-reasoning dataset in {{ language }}; questions far from it (other languages,
  local guidelines, rare conditions, recent drugs) get less reliable answers.
- The reasoning trace is generated text, not an explanation of how the model computed its answer; a plausible
  trace can precede a wrong answer.
- It may state outdated or wrong dosages, contraindications or facts, and it does not know the patient.
- Scores above come from a small held-out sample and an overlap metric; they are not evidence of clinical
  accuracy or safety.
- It inherits the biases and the license terms of {{ base_link }}.

## Not a medical device

{{ not_a_medical_device }} Any use that could affect a patient needs its own clinical validation, regulatory
review and human oversight by qualified professionals.

## Lineage

{{ code_versions }}

- Dataset: {{ dataset_link }}, config `{{ dataset_config }}`, revision `{{ dataset_revision }}`
- Base model: {{ base_link }}
- {{ wandb }}
"""

ADAPTER_CARD_TEMPLATE = """---
{{ card_data }}
---

# LoRA adapter of {{ merged_repo_id }}

The LoRA adapter that produced [{{ merged_repo_id }}](https://huggingface.co/{{ merged_repo_id }}), to be
applied on top of {{ base_link }}. Its answers follow the format
`<think>reasoning</think><response>answer</response>`. The full model card, with evaluation results and
training settings, is in [{{ merged_repo_id }}](https://huggingface.co/{{ merged_repo_id }}).

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

base = AutoModelForCausalLM.from_pretrained("{{ base_model }}", dtype="auto", device_map="auto")
model = PeftModel.from_pretrained(base, "{{ adapter_repo }}"{{ subfolder_arg }})
tokenizer = AutoTokenizer.from_pretrained("{{ merged_repo_id }}")
```

{{ not_a_medical_device }}
"""


def _adapter_section(facts: ReleaseFacts, base_id: str | None) -> str:
    location = facts.adapter_location
    if not location:
        return "## LoRA adapter\n\nOnly the merged weights are published; the LoRA adapter is not."
    if adapter_is_subfolder(location):
        where = f"in the `{location}` folder of this repository"
        load = f'PeftModel.from_pretrained(base, "{facts.repo_id}", subfolder="{location.rstrip("/")}")'
    else:
        where = f"in its own repository, [{location}](https://huggingface.co/{location})"
        load = f'PeftModel.from_pretrained(base, "{location}")'
    base_ref = base_id or f"path/to/{facts.local_base_name}"
    return (
        "## LoRA adapter\n\n"
        f"The adapter alone ({size_text(facts.adapter_bytes)}) is {where}. Apply it to the base model with PEFT:\n\n"
        "```python\n"
        "from peft import PeftModel\n"
        "from transformers import AutoModelForCausalLM\n\n"
        f'base = AutoModelForCausalLM.from_pretrained("{base_ref}", dtype="auto", device_map="auto")\n'
        f"model = {load}\n"
        "```"
    )


def build_model_card(facts: ReleaseFacts) -> ModelCard:
    """The release's README.md: metadata the Hub indexes and the body described in the module docstring."""
    base_id = hub_model_id(facts.base_model)
    dataset_id = hub_dataset_id(facts.dataset_id)
    card_data = ModelCardData(
        base_model=base_id,
        datasets=[dataset_id] if dataset_id else None,
        license=facts.license,
        language=facts.language,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=list(facts.tags),
        model_name=facts.repo_id,
        eval_results=eval_results(facts) or None,
    )
    report, summary = facts.evaluation, facts.training
    return ModelCard.from_template(
        card_data,
        template_str=MODEL_CARD_TEMPLATE,
        title=facts.repo_id.split("/")[-1],
        repo_id=facts.repo_id,
        base_link=_link(base_id, facts.local_base_name),
        dataset_link=_dataset_link(dataset_id, facts.dataset_id),
        dataset_config=facts.dataset_config or "default",
        dataset_revision=facts.dataset_revision or "not recorded",
        quantization=f"{summary.base_weights} base weights",
        stack=backend_named(summary.backend).card_stack,
        answered_by="the base model and by this model" if report.base is not None else "this model",
        decoding=_decoding(report),
        not_a_medical_device=NOT_A_MEDICAL_DEVICE,
        adapter_section=_adapter_section(facts, base_id),
        n_text=f"{report.n} questions held out of training",
        results_table=comparison_table(report),
        gate=gate_markdown(facts.decision),
        how_to_read=HOW_TO_READ_AN_INTERVAL,
        benchmarks=benchmarks_text(facts.benchmarks),
        decontamination=decontamination_text(facts.decontamination),
        multiple_choice=multiple_choice_text(report),
        sample_sizes=sample_sizes_text(report),
        kept_checkpoint=kept_checkpoint_text(summary),
        training_table=training_table(facts.training_rows()),
        hardware=summary.hardware,
        wall_time=duration_text(summary.wall_time_seconds),
        language={"en": "English"}.get(facts.language, facts.language),
        code_versions=code_versions_text(facts.code_version),
        wandb=wandb_text(facts.wandb_url, logged=summary.wandb is not None, graded=bool(summary.graded_steps)),
    )


def build_adapter_card(model_card: ModelCard, adapter_repo: str, subfolder: str | None = None) -> ModelCard:
    """A short README for the adapter, pointing at the base model and at the merged repository."""
    data = model_card.data
    assert isinstance(data, ModelCardData), "build_model_card makes model cards"  # huggingface_hub types it as CardData
    merged_repo_id = data.model_name
    base_model = data.base_model
    card_data = ModelCardData(
        base_model=base_model,
        datasets=data.datasets,
        license=data.license,
        language=data.language,
        library_name="peft",
        pipeline_tag="text-generation",
        tags=list(dict.fromkeys([*(data.tags or []), "peft"])),
    )
    return ModelCard.from_template(
        card_data,
        template_str=ADAPTER_CARD_TEMPLATE,
        merged_repo_id=merged_repo_id,
        base_model=base_model or "path/to/base-model",
        base_link=f"[{base_model}](https://huggingface.co/{base_model})" if base_model else "its base model",
        adapter_repo=adapter_repo,
        subfolder_arg=f', subfolder="{subfolder}"' if subfolder else "",
        not_a_medical_device=NOT_A_MEDICAL_DEVICE,
    )
