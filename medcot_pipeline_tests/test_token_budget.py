"""Token lengths as the trainer sees them (real Llama-3.2 tokenizer), their statistics, the over-length policy."""

import copy

import pandas as pd
import pytest
from trl.data_utils import _tokenize  # what SFTTrainer calls per example; the reference for our counts

from medcot_pipeline.base_models import load_tokenizer
from medcot_pipeline.chat_format import has_chat_template, training_example
from medcot_pipeline.settings import RawDatasetSettings
from medcot_pipeline.data.sources import load_records
from medcot_pipeline.data.cleaning import clean_records
from medcot_pipeline.data.splits import format_records
from medcot_pipeline.data.token_budget import apply_overlength_policy, length_stats, record_token_lengths

@pytest.fixture(scope="module")
def llama_tokenizer():
    return load_tokenizer("unsloth/Llama-3.2-3B-Instruct")


@pytest.fixture(scope="module")
def sample_formatted():
    raw, _ = load_records(RawDatasetSettings())
    return format_records(clean_records(raw)[0])


def trl_lengths(tokenizer, df):
    lengths = []
    for question, target in zip(df["question"], df["target"]):
        example = training_example(tokenizer, question, target)
        kwargs = {"chat_template": None} if has_chat_template(tokenizer) else {}
        lengths.append(len(_tokenize(tokenizer, example["prompt"] + example["completion"], **kwargs)["input_ids"]))
    return lengths


def test_offline_llama_instruct_tokenizer_has_the_instruct_turn_layout(llama_tokenizer):
    text = llama_tokenizer.apply_chat_template([{"role": "user", "content": " hi "}], tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date")
    assert text.endswith("<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert llama_tokenizer.eos_token == "<|eot_id|>" and llama_tokenizer.pad_token == "<|finetune_right_pad_id|>"


def test_plain_prompt_lengths_match_trl(llama_tokenizer, sample_formatted):
    plain = copy.deepcopy(llama_tokenizer)
    plain.chat_template = None  # a base model without a template gets the seed's "Question:" prompt
    assert not has_chat_template(plain)
    lengths = record_token_lengths(plain, sample_formatted)
    assert lengths == trl_lengths(plain, sample_formatted)
    ids = plain("Question: " + sample_formatted.loc[0, "question"] + "\n" + sample_formatted.loc[0, "target"] + plain.eos_token)["input_ids"]
    assert ids[0] == plain.bos_token_id and ids[-1] == plain.eos_token_id
    assert lengths[0] == len(ids)


def test_chat_template_lengths_match_trl(llama_tokenizer, sample_formatted):
    lengths = record_token_lengths(llama_tokenizer, sample_formatted)
    assert lengths == trl_lengths(llama_tokenizer, sample_formatted)
    # The template adds the system block, headers and <|eot_id|>; the plain prompt adds "Question: " and eos.
    flat = copy.deepcopy(llama_tokenizer)
    flat.chat_template = None
    plain = record_token_lengths(flat, sample_formatted)
    assert all(chat > flat for chat, flat in zip(lengths, plain))


def test_sample_records_are_short_enough_for_cpu_training(llama_tokenizer, sample_formatted):
    stats = length_stats(record_token_lengths(llama_tokenizer, sample_formatted))
    assert stats["count"] == 40
    assert 120 <= stats["median"] <= 250 and stats["max"] <= 300


def test_real_records_token_budget(llama_tokenizer, real_records_path):
    raw, _ = load_records(RawDatasetSettings(source="file", path=str(real_records_path)))
    formatted = format_records(clean_records(raw)[0])
    stats = length_stats(record_token_lengths(llama_tokenizer, formatted))
    # Measured with the Llama-3.2 tokenizer and the Instruct layout: median 699, p90 902, p99 1050, max 1123.
    assert stats["count"] == 198
    assert 620 <= stats["median"] <= 720
    assert 1000 <= stats["max"] <= 1200
    kept, over = apply_overlength_policy(formatted, record_token_lengths(llama_tokenizer, formatted), 1024, "drop")
    assert 1 <= over <= 5 and len(kept) == 198 - over


def test_length_stats():
    stats = length_stats(list(range(1, 101)))
    assert stats == {"count": 100, "mean": 50.5, "median": 50.5, "p90": 90.1, "p99": 99.0, "max": 100}
    assert length_stats([]) == {"count": 0, "mean": None, "median": None, "p90": None, "p99": None, "max": None}


def test_overlength_policy_drop_and_truncate():
    df = pd.DataFrame({"question": ["a", "b", "c", "d"]}, index=[10, 11, 12, 13])
    lengths = [100, 513, 512, 2000]
    kept, over = apply_overlength_policy(df, lengths, 512, "drop")
    assert kept["question"].tolist() == ["a", "c"] and over == 2
    assert kept.index.tolist() == [0, 1]
    kept, over = apply_overlength_policy(df, lengths, 512, "truncate")
    assert kept["question"].tolist() == ["a", "b", "c", "d"] and over == 2


@pytest.mark.parametrize(
    "lengths,max_len,policy,message",
    [
        ([1, 2], 10, "drop", "2 token lengths for 3 rows"),
        ([1, 2, 3], 0, "drop", "max_seq_length must be at least 1"),
        ([1, 2, 3], 10, "clip", "overlength policy must be 'drop' or 'truncate', got 'clip'"),
    ],
)
def test_overlength_policy_rejects_bad_arguments(lengths, max_len, policy, message):
    with pytest.raises(ValueError, match=message):
        apply_overlength_policy(pd.DataFrame({"question": ["a", "b", "c"]}), lengths, max_len, policy)
