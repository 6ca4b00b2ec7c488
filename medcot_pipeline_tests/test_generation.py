"""Generation on a tiny random Llama: load errors, truncation and continuation flags, stop-token cutting, prompt shortening."""

import logging
import shutil

import pytest
import torch

from medcot_pipeline.settings import EvaluationSettings
from medcot_pipeline.evaluation.generation import (
    ModelLoadError,
    encode_prompt,
    generate_answers,
    generate_token_ids,
    load_for_inference,
)

QUESTIONS = [
    "Which drug treats strep throat?",
    "A 45-year-old man has crushing chest pain radiating to the left arm. What is the next step?",
    "What causes iron deficiency anemia?",
]


@pytest.fixture(scope="module")
def loaded(tiny_llama_dir):
    return load_for_inference(str(tiny_llama_dir), device="cpu")


def load_error(path) -> str:
    with pytest.raises(ModelLoadError) as caught:
        load_for_inference(str(path), device="cpu")
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    return message


def test_load_errors_are_one_line_and_name_the_path(tiny_llama_dir, tmp_path):
    assert "does not exist" in load_error(tmp_path / "missing")
    (tmp_path / "weights.bin").write_text("x")
    assert "is a file, not a model directory" in load_error(tmp_path / "weights.bin")
    (tmp_path / "empty").mkdir()
    assert "no config.json" in load_error(tmp_path / "empty")
    (tmp_path / "no_tokenizer").mkdir()
    shutil.copy(tiny_llama_dir / "config.json", tmp_path / "no_tokenizer")
    shutil.copy(tiny_llama_dir / "model.safetensors", tmp_path / "no_tokenizer")
    assert "has no tokenizer" in load_error(tmp_path / "no_tokenizer")


def test_open_answers_are_continued_then_flagged_truncated(loaded):
    model, tokenizer = loaded
    config = EvaluationSettings(batch_size=2, max_new_tokens=5, continuation_tokens=3)
    run = generate_answers(model, tokenizer, QUESTIONS, config)
    assert [a.question for a in run.answers] == QUESTIONS
    # Random weights never write </response> (nor, here, a stop token): 5 tokens, then 3 more, still open.
    for a in run.answers:
        assert (a.truncated, a.continued, a.new_tokens, a.prompt_truncated) == (True, True, 8, False)
    assert run.total_new_tokens == 24
    # Greedy decoding is deterministic.
    again = generate_answers(model, tokenizer, QUESTIONS, config)
    assert [a.text for a in again.answers] == [a.text for a in run.answers]

    without = generate_answers(model, tokenizer, QUESTIONS, config.model_copy(update={"continuation_tokens": 0}))
    for a in without.answers:
        assert (a.truncated, a.continued, a.new_tokens) == (True, False, 5)


def test_generate_token_ids_cuts_after_the_stop_token_in_prompt_order(loaded):
    model, tokenizer = loaded
    prompts = [encode_prompt(tokenizer, q, None)[0] for q in QUESTIONS[:2]]  # the second is longer, so batched first
    free = generate_token_ids(model, tokenizer, prompts, batch_size=2, max_new_tokens=8, do_sample=False)
    assert [stopped for _, stopped in free] == [False, False]
    # transformers' sequence_bias forces eos as the 3rd new token of the first prompt only (its tail is in the key).
    eos = tokenizer.eos_token_id
    forced = {tuple(prompts[0][-8:] + free[0][0][:2] + [eos]): 1e4}
    cut = generate_token_ids(
        model, tokenizer, prompts, batch_size=2, max_new_tokens=8, do_sample=False, sequence_bias=forced
    )
    # The first sample's padding after eos is cut off; the second ran to the limit.
    assert cut == [(free[0][0][:2] + [eos], True), free[1]]


def test_a_stop_token_in_the_continuation_closes_the_answer(loaded):
    model, tokenizer = loaded
    config = EvaluationSettings(batch_size=1, max_new_tokens=5, continuation_tokens=3)
    prompt = encode_prompt(tokenizer, QUESTIONS[0], None)[0]
    free = generate_token_ids(model, tokenizer, [prompt], batch_size=1, max_new_tokens=8, do_sample=False)[0][0]
    forced = {tuple(prompt[-8:] + free[:6] + [tokenizer.eos_token_id]): 1e4}  # eos as the 7th token
    answer = generate_answers(model, tokenizer, QUESTIONS[:1], config, sequence_bias=forced).answers[0]
    assert (answer.truncated, answer.continued, answer.new_tokens) == (False, True, 7)


def test_an_overlong_question_loses_its_middle_with_a_warning(loaded, caplog):
    model, tokenizer = loaded
    question = "Patient history begins here. " + "The patient reports intermittent symptoms. " * 2400
    question += "What is the most likely diagnosis?"
    assert len(question) > 100_000
    ids, shortened = encode_prompt(tokenizer, question, 96)
    assert shortened and len(ids) <= 96
    prompt = tokenizer.decode(ids)
    assert "Patient history begins here." in prompt and "What is the most likely diagnosis?" in prompt
    assert "[…]" in prompt

    config = EvaluationSettings(batch_size=1, max_new_tokens=2, continuation_tokens=0)
    with caplog.at_level(logging.WARNING, logger="medcot_pipeline.evaluation.generation"):
        run = generate_answers(model, tokenizer, [question], config, max_prompt_tokens=96)
    assert run.answers[0].prompt_truncated
    assert any("question 0" in r.message and "cut the middle" in r.message for r in caplog.records)


def _forcing(prompt: list[int], start: list[int], forced: list[int]) -> dict:
    """transformers sequence_bias entries that make greedy decoding emit `forced` right after `start`."""
    bias, context = {}, prompt + start
    for token in forced:
        bias[tuple(context[-8:] + [token])] = 1e4
        context = context + [token]
    return bias


def test_an_answer_closed_before_the_limit_ends_there_in_the_same_pass(loaded):
    model, tokenizer = loaded
    prompt = encode_prompt(tokenizer, QUESTIONS[0], None)[0]
    free = generate_token_ids(model, tokenizer, [prompt], batch_size=1, max_new_tokens=4, do_sample=False)[0][0]
    close = tokenizer("</response>", add_special_tokens=False)["input_ids"]
    bias = _forcing(prompt, free[:1], close)  # </response> right after the first token, and no stop token
    limit = 1 + len(close) + 2
    config = EvaluationSettings(batch_size=1, max_new_tokens=limit, continuation_tokens=5)
    answer = generate_answers(model, tokenizer, QUESTIONS[:1], config, sequence_bias=bias).answers[0]
    # As before the single pass: not continued, cut at max_new_tokens, not truncated (the response is closed).
    assert "</response>" in answer.text
    assert (answer.new_tokens, answer.continued, answer.truncated) == (limit, False, False)


def test_the_stop_check_is_deferred_on_cuda_only(monkeypatch):
    from transformers.generation.utils import DeferredStopCheck

    from medcot_pipeline.evaluation.generation import defer_stop_check

    original = DeferredStopCheck.__dict__["is_supported"]
    monkeypatch.setattr(DeferredStopCheck, "is_supported", original)
    defer_stop_check(True)
    assert DeferredStopCheck.is_supported(torch.device("cuda"), None, False, False)
    assert not DeferredStopCheck.is_supported(torch.device("cuda"), None, False, True)  # an assistant model: never
    legacy = ((torch.zeros(1), torch.zeros(1)),)  # Unsloth's fast generate: a tuple cache, no is_croppable
    assert not DeferredStopCheck.is_supported(torch.device("cuda"), legacy, False, False)
    assert not DeferredStopCheck.is_supported(torch.device("cpu"), None, False, False)  # transformers' own rule
    defer_stop_check(False)
    assert not DeferredStopCheck.is_supported(torch.device("cuda"), None, False, False)


def test_progress_is_reported_during_a_batch_and_after_it(loaded, monkeypatch):
    from medcot_pipeline.evaluation import generation

    monkeypatch.setattr(generation, "PROGRESS_EVERY_SECONDS", 0.0)  # report at every step
    model, tokenizer = loaded
    calls = []
    config = EvaluationSettings(batch_size=2, max_new_tokens=3, continuation_tokens=2)
    generate_answers(model, tokenizer, QUESTIONS, config, progress=lambda *call: calls.append(call))
    tokens = [call for call in calls if call[0] == "tokens"]
    assert [call for call in calls if call[0] == "answers"] == [("answers", 2, 3), ("answers", 3, 3)]
    # Each batch reports its tokens so far against its limit (max_new_tokens + continuation_tokens, one pass).
    assert tokens and {total for _, _, total in tokens} == {5}
    assert all(1 <= done <= 5 for _, done, _ in tokens)
    assert calls[-1] == ("answers", 3, 3)


def test_a_static_cache_keeps_one_shape_for_every_batch(loaded, monkeypatch):
    """Five prompts of different lengths, batches of up to 2: with the static cache every batch has the same rows
    (2, 2, and 1 filled with a copy) and the same width, so the decode step compiles once; the answers are the
    dynamic cache's, in prompt order, the filler's dropped."""
    model, tokenizer = loaded
    questions = ["Croup?", "What is the first-line drug for strep throat in adults?", "Why?", "Peaked T waves mean what?", "Dose?"]
    config = EvaluationSettings(batch_size=2, max_new_tokens=4, continuation_tokens=0)
    shapes = []
    real_generate = model.generate

    def spy(*args, **kwargs):
        shapes.append(tuple(kwargs["input_ids"].shape))
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(model, "generate", spy)
    static = generate_answers(model, tokenizer, questions, config, cache_implementation="static")
    assert len(set(shapes)) == 1 and shapes[0][0] == 2 and len(shapes) == 3
    dynamic = generate_answers(model, tokenizer, questions, config)
    assert [a.text for a in static.answers] == [a.text for a in dynamic.answers]
    assert [a.question for a in static.answers] == questions
