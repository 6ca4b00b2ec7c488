"""Multiple-choice accuracy by option log-likelihood, scored as lm-eval-harness's `medqa_4options` task scores it.

The task (lm_eval/tasks/medqa/medqa.yaml and preprocess_medqa.py in EleutherAI/lm-evaluation-harness) is an
`output_type: multiple_choice` task:
- the context is a plain completion prompt, `Question: {question}\\n` then one `{letter}. {text}\\n` line per
  option, then `Answer:`;
- the choices are the option letters, each scored as the continuation `" " + letter` (lm-eval's default
  `target_delimiter` is a space);
- a choice's score is the sum of the log-probabilities of its continuation tokens given the context, with
  the context and continuation tokenised as lm-eval's `_encode_pair` does (encode context + continuation,
  the continuation being what follows the context's own tokens);
- `acc` is the share of questions whose highest-scoring choice is the answer. lm-eval's `acc_norm` divides
  each score by the choice's length in characters; MedQA-style choices are single letters, so it equals
  `acc` and is not reported separately.

The prompt is the plain one, not the chat template the fine-tuned model was trained on, so that the number
is the one `lm_eval --tasks medqa_4options` gives for the same records: it measures what the model knows
without depending on whether it learned to write `<think>`/`<response>`. The tokenizer adds its own special
tokens (BOS on Llama), as lm-eval does when run with `add_bos_token=True`.
Published MedQA accuracies of chat models are often measured otherwise: the HuatuoGPT-o1 paper, for one,
generates a reasoned answer with the chat template and reads the letter out of it (its evaluation/eval.py),
so its numbers are context for this one, not the same measurement.

We score with transformers directly rather than depend on `lm-eval`: it would add 18 packages
(scikit-learn, scipy, sacrebleu, ...) to the environment to run one metric on records we already hold.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch

# lm-eval's default target_delimiter: each choice is scored as " A", " B", ...
TARGET_DELIMITER = " "


@dataclass(frozen=True)
class MultipleChoiceScores:
    """What the log-likelihood scorer found over a set of rows, one entry a row in `chosen` and `loglikelihoods`."""

    accuracy: float | None  # None when no row has options and an answer letter: nothing was measured
    n: int  # rows scored: those with options and an answer letter among them
    chosen: list[str | None]  # the highest-likelihood letter of each row; None for rows not scored
    loglikelihoods: list[dict[str, float] | None]
    correct: list[float] = field(default_factory=list)  # 1.0 / 0.0 for each scored row, in row order (paired comparisons)


def parse_options(options: Mapping[str, str] | str | None) -> dict[str, str] | None:
    """Options as a dict of letter -> text; the formatted splits store them as a JSON string, or null."""
    if options is None or isinstance(options, dict):
        return options or None
    if isinstance(options, Mapping):
        return dict(options) or None
    if isinstance(options, str):
        parsed = json.loads(options)
        if not isinstance(parsed, dict):
            raise ValueError(f"options must be a JSON object of letter -> text, got {options[:80]!r}")
        return parsed or None
    if pd.api.types.is_scalar(options) and pd.isna(options):
        return None
    raise ValueError(f"options must be a dict or a JSON string, got {type(options).__name__}")


def answer_letter(options: Mapping[str, str] | None, answer_idx: str | None, answer: str | None = None) -> str | None:
    """The correct option's letter: `answer_idx` when it names an option, else the one option whose text is `answer`."""
    if not options:
        return None
    if isinstance(answer_idx, str) and answer_idx.strip() in options:
        return answer_idx.strip()
    if isinstance(answer, str) and answer.strip():
        matches = [letter for letter, text in options.items() if text.strip() == answer.strip()]
        if len(matches) == 1:
            return matches[0]
    return None


def multiple_choice_prompt(question: str, options: Mapping[str, str]) -> str:
    """lm-eval's medqa context: the question, one lettered line per option, and `Answer:`."""
    lines = "".join(f"{letter}. {text}\n" for letter, text in options.items())
    return f"Question: {question}\n{lines}Answer:"


def option_loglikelihoods(model, tokenizer, question: str, options: Mapping[str, str] | str, *, batch_size: int = 8) -> dict[str, float]:
    """Log-likelihood of each option letter as the answer to `question`: sum of log P(continuation token | context)."""
    parsed = parse_options(options)
    if not parsed:
        raise ValueError("option_loglikelihoods needs at least one option")
    return _score_questions(model, tokenizer, [(question, parsed)], batch_size)[0]


def score_multiple_choice(model, tokenizer, rows: pd.DataFrame, *, batch_size: int = 8) -> MultipleChoiceScores:
    """Score every row that has options and an answer letter (columns question, options, answer_idx; answer optional).

    Rows without options (or without an options column) are left out of the accuracy and n; with none
    left, accuracy is None, never 0.0.
    """
    if "question" not in rows.columns:
        raise ValueError("multiple-choice rows: column(s) question missing")
    options_column = rows["options"].tolist() if "options" in rows.columns else [None] * len(rows)
    answers_idx = rows["answer_idx"].tolist() if "answer_idx" in rows.columns else [None] * len(rows)
    answers = rows["answer"].tolist() if "answer" in rows.columns else [None] * len(rows)

    scored: list[int] = []
    items: list[tuple[str, dict[str, str]]] = []
    letters: list[str] = []
    for i, (question, options, idx, answer) in enumerate(zip(rows["question"].tolist(), options_column, answers_idx, answers, strict=True)):
        try:
            parsed = parse_options(options)
        except ValueError as err:
            raise ValueError(f"multiple-choice row {i}: {err}") from err
        letter = answer_letter(parsed, idx, answer)
        if letter is None or parsed is None:  # no options means no letter: nothing to score
            continue
        scored.append(i)
        items.append((question, parsed))
        letters.append(letter)

    loglikelihoods: list[dict[str, float] | None] = [None] * len(rows)
    chosen: list[str | None] = [None] * len(rows)
    for i, scores in zip(scored, _score_questions(model, tokenizer, items, batch_size), strict=True):
        loglikelihoods[i] = scores
        chosen[i] = max(scores, key=scores.__getitem__)  # ties go to the earlier letter, as numpy's argmax in lm-eval
    correct = [float(chosen[i] == letter) for i, letter in zip(scored, letters, strict=True)]
    return MultipleChoiceScores(
        accuracy=sum(correct) / len(scored) if scored else None,
        n=len(scored),
        chosen=chosen,
        loglikelihoods=loglikelihoods,
        correct=correct,
    )


def multiple_choice_accuracy(model, tokenizer, rows: pd.DataFrame, *, batch_size: int = 8) -> tuple[float | None, int]:
    """(accuracy, n) over the rows with options; (None, 0) when none has any."""
    scores = score_multiple_choice(model, tokenizer, rows, batch_size=batch_size)
    return scores.accuracy, scores.n


def _encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    # lm-eval's HFLM._encode_pair: trailing spaces of the context move to the continuation, and the
    # continuation's tokens are whatever follows the context's tokens in the encoding of the whole.
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer(context + continuation)["input_ids"]
    context_ids = tokenizer(context)["input_ids"]
    return context_ids, whole[len(context_ids) :]


def _score_questions(model, tokenizer, items: Sequence[tuple[str, Mapping[str, str]]], batch_size: int) -> list[dict[str, float]]:
    """Per question, {letter: log-likelihood}.

    Each (question, letter) request needs one forward over context + continuation minus its last token;
    requests with the same input (single-token letters all share the bare context) share one forward, as
    lm-eval's grouping by context does, so a question usually costs a single forward, not one per option.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    max_length = getattr(model.config, "max_position_embeddings", None)
    requests: list[tuple[int, str, tuple[int, ...], list[int]]] = []  # (question, letter, input ids, continuation ids)
    for q, (question, options) in enumerate(items):
        context = multiple_choice_prompt(question, options)
        for letter in options:
            context_ids, continuation_ids = _encode_pair(tokenizer, context, TARGET_DELIMITER + letter)
            if not continuation_ids:
                raise ValueError(f"option {letter} of question {q} tokenises to nothing after the prompt")
            sequence = context_ids + continuation_ids
            if max_length is not None:
                sequence = sequence[-(max_length + 1) :]  # lm-eval keeps the end when a prompt overflows
            requests.append((q, letter, tuple(sequence[:-1]), continuation_ids))

    inputs = sorted({request[2] for request in requests}, key=len, reverse=True)
    # Logits of the last `keep` positions of each input; enough for the longest continuation sharing it.
    keep = {ids: 1 for ids in inputs}
    for _, _, ids, continuation in requests:
        keep[ids] = max(keep[ids], len(continuation))
    log_probs: dict[tuple[int, ...], torch.Tensor] = {}
    for start in range(0, len(inputs), batch_size):
        batch = inputs[start : start + batch_size]
        log_probs.update(zip(batch, _last_log_probs(model, tokenizer, batch, max(keep[ids] for ids in batch)), strict=True))

    results: list[dict[str, float]] = [{} for _ in items]
    for q, letter, ids, continuation in requests:
        rows = log_probs[ids][-len(continuation) :]
        results[q][letter] = float(rows.gather(1, torch.tensor(continuation).unsqueeze(1)).sum())
    return results


def _last_log_probs(model, tokenizer, batch: list[tuple[int, ...]], keep: int) -> list[torch.Tensor]:
    """log_softmax over the vocabulary at each input's last `keep` positions, on the CPU in float32."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    width = max(len(ids) for ids in batch)
    # Left padding puts every input's last positions at the end, so the model computes logits only there.
    input_ids = torch.tensor([[pad_id] * (width - len(ids)) + list(ids) for ids in batch])
    attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch])
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # positions count real tokens only, as in generate
    device = model.device
    with torch.inference_mode():
        logits = model(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            position_ids=position_ids.to(device),
            logits_to_keep=keep,
            use_cache=False,
        ).logits
        log_probs = torch.log_softmax(logits.float(), dim=-1).cpu()
    return [log_probs[row, keep - min(keep, len(ids)) :] for row, ids in enumerate(batch)]
