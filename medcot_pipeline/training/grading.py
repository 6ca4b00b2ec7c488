"""Grade the model while it trains: at each evaluation, answer a fixed set of validation questions, log format
compliance and ROUGE-L next to eval loss, and let the Trainer keep the checkpoint that answered best.

Eval loss alone picks the wrong checkpoint for this task: in a real-weights run it was lowest early, while
not one answer closed `</think>` yet (issue 15). What a user needs is an answer in the tagged format that says
what the reference says, so that is what chooses the checkpoint.

The criterion, `eval_grade`, is format compliance first and ROUGE-L second: compliance plus ROUGE-L / (n + 1)
over n graded questions. That term stays below 1/n, one more well-formed answer, so ROUGE-L only breaks ties
between checkpoints that format equally often. Compliance comes first because an answer that does not close
its tags has no usable response at all, and the release gate blocks a model below its compliance floor
whatever its ROUGE-L; among equally well-formed checkpoints the one closer to the references wins. The Trainer
compares it with `metric_for_best_model` (strictly greater wins, so of two equal grades the earlier step is
kept), protects that checkpoint from `save_total_limit`, and loads it back at the end
(`load_best_model_at_end`), so the adapter that is saved is the kept checkpoint's.

Order inside `Trainer.evaluate` (transformers 5.17): eval loss is logged, then `on_evaluate` runs, then the
returned metrics reach `_determine_best_metric`. The callback therefore writes its numbers into the `metrics`
dict it is handed (that is the dict the best-checkpoint choice reads) and logs them with `trainer.log`, which
puts them into `state.log_history` at the same step (checkpoints and the training summary keep them) and sends
them to W&B through the WandbCallback, as `eval/format_compliance` and friends.

Data-parallel runs: every rank evaluates, so every rank calls `on_evaluate` at the same point. The questions
are split between the ranks (`accelerator.split_between_processes`), each rank answers its share with its
own copy of the model (the unwrapped module: generating through DDP's wrapper would sync gradients), and
`gather_object` brings all answers to every rank. Every rank thus computes the same grade and makes the same
best-checkpoint choice, and no rank waits on a collective while another generates for longer than its share.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd
from transformers import PreTrainedModel, TrainerCallback

from medcot_pipeline.backends import TRANSFORMERS, Backend
from medcot_pipeline.data.schema import require_columns
from medcot_pipeline.evaluation.generation import GeneratedAnswer, GenerationRun, generate_answers
from medcot_pipeline.evaluation.metrics import format_compliance, graded_response, rouge_l_f1, truncation_rate
from medcot_pipeline.settings import GenerationSettings, TrainingSettings

logger = logging.getLogger(__name__)

# The Trainer's metric_for_best_model; it reads it from the evaluation metrics as eval_grade.
GRADE_METRIC = "grade"
# Logged at each graded step, under the Trainer's eval_ prefix (W&B shows them as eval/<name>).
GRADE_KEYS = ("format_compliance", "rouge_l_response", "truncation_rate", "grade", "grading_seconds")
KEPT_BY_GRADE = "grade: format compliance, then ROUGE-L (response), on {n} validation questions"
KEPT_BY_LAST_STEP = "last step (not graded during training)"

AnswerQuestions = Callable[..., GenerationRun]  # generate_answers' signature: (model, tokenizer, questions, config, **kw)


@dataclass(frozen=True)
class Grades:
    format_compliance: float
    rouge_l_response: float
    truncation_rate: float
    n: int
    seconds: float = 0.0  # what answering and scoring took (the training paused meanwhile)

    @property
    def grade(self) -> float:
        """Compliance, with ROUGE-L breaking ties: ROUGE-L / (n + 1) is less than one more compliant answer (1/n)."""
        return self.format_compliance + self.rouge_l_response / (self.n + 1)

    def as_metrics(self, prefix: str = "eval_") -> dict[str, float]:
        values = {
            "format_compliance": self.format_compliance,
            "rouge_l_response": self.rouge_l_response,
            "truncation_rate": self.truncation_rate,
            "grade": self.grade,
            "grading_seconds": self.seconds,
        }
        return {f"{prefix}{key}": round(float(value), 6) for key, value in values.items()}


def grades_training(settings: TrainingSettings, has_eval: bool) -> bool:
    """Whether a run grades its checkpoints and keeps the best: it evaluates and asks for questions."""
    return has_eval and settings.eval_steps is not None and settings.grade_questions > 0


def grading_questions(validation: pd.DataFrame, count: int, seed: int) -> pd.DataFrame:
    """A fixed, seeded sample of `count` validation rows (question and reference response), in split order.

    The same rows at every evaluation and on every rank, so that grades of different steps compare.
    """
    require_columns(validation, ("question", "response"), "validation split (grading during training)")
    if count < 1 or validation.empty:
        raise ValueError(f"grading needs at least one question; got {count} of {len(validation)} validation rows")
    sample = validation.sample(n=min(count, len(validation)), random_state=seed).sort_index()
    return sample[["question", "response"]].reset_index(drop=True)


def generation_settings(settings: TrainingSettings) -> GenerationSettings:
    """Greedy, all questions in one batch, no continuation: an answer that has not closed its tags within
    grade_max_new_tokens counts as not compliant, as it would in `rouge_report` after its continuation."""
    return GenerationSettings(
        batch_size=max(settings.grade_questions, 1),
        max_new_tokens=settings.grade_max_new_tokens,
        continuation_tokens=0,
        attention=settings.grade_attention,
        kv_cache=settings.grade_kv_cache,
    )


class MergedCopy:
    """Answers the graded questions with a plain copy of the model being trained, the LoRA deltas merged into its
    weights, on the fast generation path (`generate_answers` with the settings' attention and KV cache).

    Generating through the training model itself is slow: every decode step runs the unmerged LoRA matmuls and,
    under Unsloth, its training-mode patches (~20 steps/s on the 3B shape whatever the batch, ~50 s a grading).
    The copy is a stock transformers model: built at the first grading, refreshed at each later one by copying
    the frozen base weights plus PEFT's `get_delta_weight` into its tensors in place, so its compiled decode step
    (static cache) is compiled once and reused. It needs 16-bit base weights to copy: with a 4-bit (QLoRA) base,
    `supports` is False and the training model answers as before. It costs one more copy of the weights in memory.
    """

    def __init__(self, log: logging.Logger | None = None, backend: Backend = TRANSFORMERS):
        self.log = log or logger
        self.backend = backend
        self.copy: PreTrainedModel | None = None
        self.sources: dict[str, tuple] = {}  # copy's parameter name -> (base tensor, LoRA layer or None)
        self.failed: str | None = None  # why the copy could not answer; the training model answers from then on

    @staticmethod
    def supports(model) -> bool:
        from peft.tuners.lora import LoraLayer

        layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
        return bool(layers) and all(type(m.get_base_layer().weight).__name__ == "Parameter" for m in layers)

    def __call__(self, model, tokenizer, questions: list[str], config: GenerationSettings, **kwargs):
        if self.backend.patches_every_model:
            # Unsloth patches every Llama's forward in this process, the copy's too: it decodes with its own cache.
            config = config.model_copy(update={"kv_cache": "dynamic"})
        if self.failed is None:
            try:
                return self._answer_with_copy(model, tokenizer, questions, config, **kwargs)
            except (RuntimeError, ValueError, TypeError, AttributeError) as err:
                self.failed = f"{type(err).__name__}: {err}"
                self.log.warning(f"the merged grading copy could not answer ({self.failed}); the training model answers instead")
                self.copy, self.sources = None, {}
        return generate_answers(model, tokenizer, questions, config.model_copy(update={"kv_cache": "dynamic"}), **kwargs)

    def _answer_with_copy(self, model, tokenizer, questions: list[str], config: GenerationSettings, **kwargs):
        import torch

        from medcot_pipeline.evaluation.generation import cache_kwargs

        with torch.no_grad():
            merged = self.copy if self.copy is not None else self._build(model, config.attention)
            for name, (base, lora) in self.sources.items():
                target = merged.get_parameter(name)
                target.copy_(base)
                if lora is not None:
                    for adapter in lora.active_adapters:
                        target.add_(lora.get_delta_weight(adapter).to(target.dtype))
        return generate_answers(merged, tokenizer, questions, config, **cache_kwargs(config), **kwargs)

    def _build(self, model, attention: str) -> PreTrainedModel:
        import copy

        import torch
        from peft.tuners.lora import LoraLayer
        from transformers import AutoModelForCausalLM

        from medcot_pipeline.backends.hf_peft import register_attention

        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        lora_layers = {name: module for name, module in base.named_modules() if isinstance(module, LoraLayer)}
        register_attention(attention)
        weight = next(p for p in base.parameters() if p.is_floating_point())
        with torch.device(weight.device):
            merged = AutoModelForCausalLM.from_config(base.config, dtype=weight.dtype, attn_implementation=attention)
        merged.generation_config = copy.deepcopy(base.generation_config)
        merged.eval().requires_grad_(False)
        sources = {}
        for name, parameter in base.named_parameters():
            if ".lora_" in name:
                continue
            plain = name.replace(".base_layer.", ".")
            module = plain.rsplit(".", 1)[0]
            sources[plain] = (parameter, lora_layers.get(module) if plain.endswith(".weight") else None)
        missing = [name for name, _ in merged.named_parameters() if name not in sources]
        if missing:
            raise RuntimeError(f"the grading copy has parameters the trained model does not: {missing[:4]}")
        self.copy, self.sources = merged, sources
        self.log.info(
            f"grading answers with a merged copy of the model ({len(lora_layers)} LoRA layers merged at each grading; "
            f"attention {attention})"
        )
        return merged


def grade_answers(answers: Sequence[GeneratedAnswer], references: Sequence[str]) -> Grades:
    """Format compliance, mean ROUGE-L of the graded response against the reference, and truncation."""
    rouge = rouge_l_f1([graded_response(a) for a in answers], list(references))
    return Grades(
        format_compliance=format_compliance([a.parsed for a in answers]),
        rouge_l_response=sum(rouge) / len(rouge),
        truncation_rate=truncation_rate(answers),
        n=len(answers),
    )


class GradingCallback(TrainerCallback):
    """Answers `questions` with the model being trained at every evaluation and adds the grades to the metrics.

    `answer` is how the questions are answered (default generate_answers; a test passes scripted answers).
    `backend` matters for one thing: where its generate switches the model to inference mode and back by
    itself (Unsloth, whose inference patches a bare `model.train()` afterwards would not undo), the mode is
    left to it; otherwise (transformers + PEFT) the model is put in eval mode (no dropout) and back.
    """

    def __init__(
        self,
        trainer,
        questions: pd.DataFrame,
        generation: GenerationSettings,
        *,
        max_prompt_tokens: int | None = None,
        backend: Backend = TRANSFORMERS,
        answer: AnswerQuestions | None = None,
        log: logging.Logger | None = None,
    ):
        require_columns(questions, ("question", "response"), "grading questions")
        self.trainer = trainer
        self.questions = questions["question"].tolist()
        self.references = questions["response"].tolist()
        self.generation = generation
        self.max_prompt_tokens = max_prompt_tokens
        self.backend = backend
        self.answer = answer or generate_answers
        self.log = log or logger

    def on_evaluate(self, args, state, control, metrics=None, model=None, processing_class=None, **kwargs):
        import dataclasses
        import time

        started = time.perf_counter()
        grades = self.grade(model if model is not None else self.trainer.model, processing_class or self.trainer.processing_class)
        grades = dataclasses.replace(grades, seconds=time.perf_counter() - started)
        values = grades.as_metrics()
        if metrics is not None:
            # evaluate() returns this dict to _determine_best_metric: the grade must be in it to choose the checkpoint.
            metrics.update(values)
        # log_history (kept in every checkpoint) and W&B, at this step.
        self.trainer.log(dict(values))
        self.log.info(
            f"step {state.global_step}/{state.max_steps}: {grades.n} validation questions answered, format compliance "
            f"{grades.format_compliance:.1%}, ROUGE-L (response) {grades.rouge_l_response:.4f}, truncated "
            f"{grades.truncation_rate:.1%} (graded in {grades.seconds:.1f} s)"
        )

    def grade(self, model, tokenizer) -> Grades:
        from accelerate.utils import gather_object

        accelerator = self.trainer.accelerator
        model = accelerator.unwrap_model(model)
        positions = list(range(len(self.questions)))
        with accelerator.split_between_processes(positions) as share:
            answers = self._answer(model, tokenizer, [self.questions[i] for i in share])
        answers = gather_object(list(answers))
        if len(answers) != len(self.questions):
            raise RuntimeError(f"grading gathered {len(answers)} answers for {len(self.questions)} questions")
        return grade_answers(answers, self.references)

    def _answer(self, model, tokenizer, questions: list[str]) -> list[GeneratedAnswer]:
        if not questions:  # more ranks than questions
            return []
        manage_mode = not self.backend.generate_manages_train_mode
        was_training = model.training
        if manage_mode:
            model.eval()
        try:
            run = self.answer(model, tokenizer, questions, self.generation, max_prompt_tokens=self.max_prompt_tokens)
        finally:
            if manage_mode and was_training:
                model.train()
        return list(run.answers)


def agreed_kept_step(accelerator, kept_step: int) -> int:
    """`kept_step`, checked to be the one every data-parallel rank kept.

    Each rank loads the checkpoint it judged best at the end; rank 0 saves it. The ranks grade the same gathered
    answers, so they agree by construction; this makes a disagreement (a rank that graded other answers) an
    error instead of an adapter that differs from what the other ranks trained on.
    """
    if accelerator.num_processes <= 1:
        return kept_step
    from accelerate.utils import gather_object

    kept = gather_object([kept_step])
    if len(set(kept)) != 1:
        raise RuntimeError(f"data-parallel ranks kept different checkpoints: step by rank {dict(enumerate(kept))}")
    return kept_step


def graded_rows(log_history: list[dict]) -> list[dict]:
    """One row per graded step: eval loss and the grades side by side, from `trainer.state.log_history`."""
    rows: dict[int, dict] = {}
    for entry in log_history:
        step = entry.get("step")
        if step is None:  # the Trainer writes every entry with its step; anything else is not a step's record
            continue
        if "eval_loss" in entry:
            rows.setdefault(step, {"step": step})["eval_loss"] = entry["eval_loss"]
        if f"eval_{GRADE_METRIC}" in entry:
            rows.setdefault(step, {"step": step}).update({key: entry.get(f"eval_{key}") for key in GRADE_KEYS})
    return [rows[step] for step in sorted(rows) if "grade" in rows[step]]
