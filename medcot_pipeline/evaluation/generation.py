"""Load a trained model for inference and answer questions with it: batched, greedy by default, never passing off a cut answer as whole."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from medcot_pipeline import backends, model_paths
from medcot_pipeline.base_models import BaseModelError, load_tokenizer
from medcot_pipeline.chat_format import RESPONSE_CLOSE, has_chat_template, render_prompt
from medcot_pipeline.evaluation import grouped_attention
from medcot_pipeline.model_paths import ModelLoadError
from medcot_pipeline.settings import GenerationSettings
from medcot_pipeline.tagged_output import ParsedAnswer, parse_tagged_output

logger = logging.getLogger(__name__)

# Marks where the middle of an over-long question was cut out.
_ELISION = "\n[…]\n"


@dataclass(frozen=True)
class GeneratedAnswer:
    question: str
    text: str
    parsed: ParsedAnswer
    truncated: bool  # cut at the token limit (after any continuation) before </response>
    new_tokens: int  # tokens the model generated for it, continuation and stop token included
    continued: bool  # it hit max_new_tokens with </response> still open and was given continuation_tokens more
    prompt_truncated: bool = False  # the question was shortened to fit the context


@dataclass(frozen=True)
class GenerationRun:
    answers: list[GeneratedAnswer]
    wall_seconds: float  # time spent inside model.generate
    total_new_tokens: int

    @property
    def tokens_per_second(self) -> float:
        return self.total_new_tokens / self.wall_seconds if self.wall_seconds > 0 else 0.0


# ---------------------------------------------------------------------------------------------
# Loading


def load_for_inference(
    model_path: str,
    adapter_path: str | None = None,
    *,
    device: str = "auto",
    dtype: str = "auto",
    backend: str = "auto",
    attention: str = grouped_attention.NAME,
):
    """(model, tokenizer) ready for `generate_answers`: a merged model, or a base model plus a LoRA adapter.

    `model_path` may also be an adapter directory on its own; its base then comes from adapter_config.json.
    `backend` goes through `backends.resolve_backend` ("auto" is transformers); `attention` is the transformers
    attention implementation (Unsloth brings its own).
    """
    model_ref, adapter_dir = model_paths.resolve_model_paths(model_path, adapter_path)
    tokenizer_source = model_paths.tokenizer_source(model_ref, adapter_dir)
    torch_device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    if dtype == "auto":
        torch_dtype = torch.bfloat16 if torch_device.type == "cuda" else torch.float32
    else:
        torch_dtype = getattr(torch, dtype)

    try:
        tokenizer = load_tokenizer(tokenizer_source)
    except (BaseModelError, OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load the tokenizer of {tokenizer_source}: {_first_line(err)}") from err

    try:
        chosen = backends.resolve_backend(backend, "inference")
        model = chosen.load_for_inference(model_ref, adapter_dir, torch_dtype=torch_dtype, device=torch_device, attention=attention)
    except (OSError, ValueError, RuntimeError) as err:
        if isinstance(err, ModelLoadError):
            raise
        raise ModelLoadError(
            f"cannot load the model {model_ref}{f' with adapter {adapter_dir}' if adapter_dir else ''}: {_first_line(err)}"
        ) from err
    model.eval()
    return model, tokenizer


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# ---------------------------------------------------------------------------------------------
# Prompts


def prompt_budget(model, config: GenerationSettings, max_prompt_tokens: int | None = None) -> int | None:
    """How many prompt tokens fit: the model's context less the answer's full allowance (continuation included)."""
    if max_prompt_tokens is not None:
        return max_prompt_tokens
    context = getattr(model.config, "max_position_embeddings", None)
    if context is None:
        return None
    budget = context - config.max_new_tokens - config.continuation_tokens
    if budget < 1:
        raise ValueError(
            f"max_new_tokens ({config.max_new_tokens}) + continuation_tokens ({config.continuation_tokens}) "
            f"leave no room for a prompt in the model's {context}-token context"
        )
    return budget


def encode_prompt(tokenizer, question: str, budget: int | None, *, label: str = "question") -> tuple[list[int], bool]:
    """Token ids of the chat prompt for `question`, and whether the question had to be shortened to fit `budget`.

    An over-long question loses its middle: the case presentation opens it and the actual ask ends it.
    """
    ids = _encode(tokenizer, render_prompt(tokenizer, question))
    if budget is None or len(ids) <= budget:
        return ids, False
    question_ids = tokenizer(question, add_special_tokens=False)["input_ids"]
    overhead = len(ids) - len(question_ids) + len(tokenizer(_ELISION, add_special_tokens=False)["input_ids"])
    keep = budget - overhead
    while keep >= 2:
        head = keep // 2
        shortened = tokenizer.decode(question_ids[:head]) + _ELISION + tokenizer.decode(question_ids[len(question_ids) - (keep - head) :])
        shortened_ids = _encode(tokenizer, render_prompt(tokenizer, shortened))
        if len(shortened_ids) <= budget:
            logger.warning(
                "%s: the prompt has %d tokens but the context leaves room for %d; kept the first %d and last %d "
                "tokens of the question and cut the middle",
                label,
                len(ids),
                budget,
                head,
                keep - head,
            )
            return shortened_ids, True
        # Re-tokenising across the cut can merge or split tokens; shrink by the overshoot and retry.
        keep -= len(shortened_ids) - budget
    raise ValueError(f"{label}: a prompt budget of {budget} tokens cannot hold even the chat template ({overhead} tokens)")


def _encode(tokenizer, prompt: str) -> list[int]:
    # A chat template writes its own BOS; the plain prompt needs the tokenizer's (as in training).
    return tokenizer(prompt, add_special_tokens=not has_chat_template(tokenizer))["input_ids"]


# ---------------------------------------------------------------------------------------------
# Generation


def stop_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends a turn: the tokenizer's eos and the model's (Llama-3.2 has three)."""
    ids: list[int] = []
    for source in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        for token_id in source if isinstance(source, (list, tuple)) else [source]:
            if token_id is not None and token_id not in ids:
                ids.append(int(token_id))
    if not ids:
        raise ValueError("neither the tokenizer nor the model's generation_config defines an eos token")
    return ids


def sampling_kwargs(config: GenerationSettings) -> dict:
    kwargs: dict[str, bool | float | int] = (
        {"do_sample": True, "temperature": config.temperature, "top_p": config.top_p} if config.do_sample else {"do_sample": False}
    )
    # Unset means transformers' own default (no penalty), so rouge_report's answers stay as they were.
    if config.repetition_penalty is not None:
        kwargs["repetition_penalty"] = config.repetition_penalty
    if config.no_repeat_ngram_size is not None:
        kwargs["no_repeat_ngram_size"] = config.no_repeat_ngram_size
    return kwargs


def cache_kwargs(config: GenerationSettings) -> dict:
    """`model.generate` arguments for `config.kv_cache`: with the static cache, transformers compiles the decode step
    (Inductor, CUDA graphs). Turning off pointwise autotuning saved no compile time (call 23), so its config stays."""
    return {"cache_implementation": "static"} if config.kv_cache == "static" else {}


# Called with ("answers", prompts done, prompts in all) after each batch, and with ("tokens", new tokens so far,
# the batch's token limit) every PROGRESS_EVERY_SECONDS while a batch generates.
Progress = Callable[[str, int, int], None]
# A CPU batch of the demo takes minutes; a line this often says it is still going without flooding the log.
PROGRESS_EVERY_SECONDS = 30.0


class _ReportTokens:
    """A `StoppingCriteria` that stops nothing: it reports how many tokens the batch has, now and then.

    It reads only the host-side length of `input_ids`, so it never waits for the device.
    """

    def __init__(self, progress: Progress, prompt_length: int, limit: int):
        self.progress, self.prompt_length, self.limit = progress, prompt_length, limit
        self.last = time.perf_counter()
        self.stops_nothing: torch.Tensor | None = None  # made once: no allocation per decode step

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.Tensor:
        now = time.perf_counter()
        if now - self.last >= PROGRESS_EVERY_SECONDS:
            self.last = now
            self.progress("tokens", input_ids.shape[1] - self.prompt_length, self.limit)
        if self.stops_nothing is None:
            self.stops_nothing = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        return self.stops_nothing


class _EndClosedAnswersAtLimit:
    """A `StoppingCriteria` for one batch: at `limit` new tokens, end the rows whose text has closed </response>.

    This makes one `generate` call of max_new_tokens + continuation_tokens behave like answering with
    max_new_tokens and then continuing only the answers still open: the closed ones stop at the limit, the
    open ones run on. One pass instead of two keeps a single cache shape (no second prefill or compile).
    """

    def __init__(self, tokenizer, prompt_length: int, limit: int):
        self.tokenizer, self.prompt_length, self.limit = tokenizer, prompt_length, limit
        self.closed_at_limit: list[bool] | None = None

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.Tensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        # A host-side length: the decode only runs (and waits for the device) once, at the limit.
        if input_ids.shape[1] - self.prompt_length == self.limit:
            texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length :], skip_special_tokens=True)
            self.closed_at_limit = [RESPONSE_CLOSE in text for text in texts]
            done |= torch.tensor(self.closed_at_limit, dtype=torch.bool, device=input_ids.device)
        return done


# Read by generate_token_ids; a benchmark turns it off to measure what it is worth.
DEFER_STOP_CHECK_ON_CUDA = True


def defer_stop_check(enabled: bool = True) -> None:
    """Let transformers read "have all rows stopped?" one decode step late on CUDA too, as it does on MPS.

    transformers 5.17 asks the device after every step whether every row has finished (`StopCheck`), so the
    host idles until the step is done before it can queue the next one; `DeferredStopCheck` reads the
    previous step's answer instead and undoes the one extra step it may run. Only the timing changes: the
    tokens are the same. transformers enables it on MPS only; this widens that to CUDA (its own other
    conditions kept: no assistant model, a cache that is dropped or can be cropped).
    """
    from transformers.generation import utils as generation_utils

    checker = generation_utils.DeferredStopCheck
    original = checker.__dict__.get("_medcot_original") or checker.__dict__["is_supported"]
    checker._medcot_original = original  # type: ignore[attr-defined]  # our mark on transformers' class, to undo the patch

    def on_cuda_too(device, cache, cache_is_returned, is_assistant):
        if device.type != "cuda":
            return original.__func__(device, cache, cache_is_returned, is_assistant)
        if is_assistant:
            return False
        if cache is None:
            return True
        # Unsloth's fast generate (grading during training) keeps the legacy tuple of key/value tensors, which
        # cannot be cropped back by the extra step: its stop check stays per step, as transformers has it.
        if not hasattr(cache, "is_croppable"):
            return False
        return cache.is_croppable or not cache_is_returned

    checker.is_supported = staticmethod(on_cuda_too) if enabled else original  # type: ignore[method-assign]  # the patch itself


def generate_token_ids(
    model,
    tokenizer,
    prompts: list[list[int]],
    *,
    batch_size: int,
    streamer=None,
    end_closed_at: int | None = None,
    progress: Progress | None = None,
    **generate_kwargs,
) -> list[tuple[list[int], bool]]:
    """For each prompt, the new token ids and whether a stop token ended them, in prompt order.

    Prompts are batched by length (left padded) so that a batch wastes little on padding; the ids are cut
    after the first stop token, which also drops the padding of samples that finished early. With
    `end_closed_at`, rows whose text has closed </response> after that many new tokens end there.
    """
    stop_ids = stop_token_ids(model, tokenizer)
    if model.device.type == "cuda":
        defer_stop_check(DEFER_STOP_CHECK_ON_CUDA)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    # A static cache is compiled for one shape (rows x prompt width + new tokens): every batch then gets the
    # same number of rows (balanced, the short one filled with copies whose answers are dropped) and the same
    # width, so the decode step compiles once and its cache is reused, instead of once per batch.
    fixed_shape = generate_kwargs.get("cache_implementation") == "static"
    if fixed_shape:
        batch_size = -(-len(order) // -(-len(order) // batch_size))
    width = max(len(prompt) for prompt in prompts) if fixed_shape else None
    results: dict[int, tuple[list[int], bool]] = {}
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        rows = [prompts[i] for i in batch]
        if fixed_shape:
            rows += [rows[-1]] * (batch_size - len(rows))
        padding = {"padding": "max_length", "max_length": width} if fixed_shape else {}
        inputs = tokenizer.pad({"input_ids": rows}, padding_side="left", return_tensors="pt", **padding)
        inputs = inputs.to(model.device)
        criteria: list[_EndClosedAnswersAtLimit | _ReportTokens] = []
        ending = None
        if end_closed_at is not None:
            ending = _EndClosedAnswersAtLimit(tokenizer, inputs["input_ids"].shape[1], end_closed_at)
            criteria.append(ending)
        if progress is not None and "max_new_tokens" in generate_kwargs:
            criteria.append(_ReportTokens(progress, inputs["input_ids"].shape[1], generate_kwargs["max_new_tokens"]))
        stopping = {}
        if criteria:
            from transformers import StoppingCriteriaList

            stopping["stopping_criteria"] = StoppingCriteriaList(criteria)
        with torch.inference_mode():
            output = model.generate(
                **inputs,
                eos_token_id=stop_ids,
                pad_token_id=tokenizer.pad_token_id,
                streamer=streamer,
                **stopping,
                **generate_kwargs,
            )
        new = output[: len(batch), inputs["input_ids"].shape[1] :].tolist()
        for row, (index, ids) in enumerate(zip(batch, new, strict=True)):
            end = next((pos for pos, token in enumerate(ids) if token in stop_ids), None)
            if (
                ending is not None
                and ending.closed_at_limit is not None
                and ending.closed_at_limit[row]
                and (end is None or end >= ending.limit)
            ):
                results[index] = (ids[: ending.limit], False)  # ended at the limit by the rule above, not by a stop token
            else:
                results[index] = (ids, False) if end is None else (ids[: end + 1], True)
        if progress is not None:
            progress("answers", len(results), len(prompts))
    return [results[i] for i in range(len(prompts))]


def generate_answers(
    model,
    tokenizer,
    questions: list[str],
    config: GenerationSettings,
    *,
    max_prompt_tokens: int | None = None,
    streamer=None,
    progress: Progress | None = None,
    **generate_kwargs,
) -> GenerationRun:
    """Answer every question; an answer that reaches max_new_tokens with </response> still open gets
    `config.continuation_tokens` more, and is flagged truncated if that does not close it either.
    Both happen in one `generate` call per batch (`_EndClosedAnswersAtLimit` ends the closed answers at the limit).

    `generate_kwargs` reach `model.generate` (e.g. cache_implementation="static"); the sampling
    settings come from `config`. `progress`, if given, is called after every batch and now and then during
    one (see `Progress`) so a caller can report how far it is.
    """
    if streamer is not None and len(questions) > 1:
        raise ValueError(f"a streamer shows one answer at a time; got {len(questions)} questions")
    budget = prompt_budget(model, config, max_prompt_tokens)
    encoded = [encode_prompt(tokenizer, q, budget, label=f"question {i}") for i, q in enumerate(questions)]
    prompts = [ids for ids, _ in encoded]
    kwargs = {**sampling_kwargs(config), **generate_kwargs}

    started = time.perf_counter()
    limit, more = config.max_new_tokens, config.continuation_tokens
    generated = generate_token_ids(
        model,
        tokenizer,
        prompts,
        batch_size=config.batch_size,
        streamer=streamer,
        progress=progress,
        max_new_tokens=limit + more,
        end_closed_at=limit if more > 0 else None,
        **kwargs,
    )
    new_ids = [ids for ids, _ in generated]
    stopped = [done for _, done in generated]
    # Continued: it reached max_new_tokens without a stop token and with </response> still open.
    open_at_limit = [
        i
        for i, ids in enumerate(new_ids)
        if len(ids) >= limit and not (stopped[i] and len(ids) == limit) and RESPONSE_CLOSE not in tokenizer.decode(ids[:limit])
    ]
    wall = time.perf_counter() - started

    continued = set(open_at_limit) if config.continuation_tokens > 0 else set()
    answers = []
    for i, question in enumerate(questions):
        text = tokenizer.decode(new_ids[i], skip_special_tokens=True)
        parsed = parse_tagged_output(text)
        answers.append(
            GeneratedAnswer(
                question=question,
                text=text,
                parsed=parsed,
                truncated=not stopped[i] and RESPONSE_CLOSE not in text,
                new_tokens=len(new_ids[i]),
                continued=i in continued,
                prompt_truncated=encoded[i][1],
            )
        )
    return GenerationRun(answers=answers, wall_seconds=wall, total_new_tokens=sum(len(ids) for ids in new_ids))
