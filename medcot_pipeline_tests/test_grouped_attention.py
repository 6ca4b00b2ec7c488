"""grouped_sdpa must give transformers' sdpa results without its K/V copies, and must really take its own path."""

import pytest
import torch
from transformers.integrations import sdpa_attention

from medcot_pipeline.evaluation import grouped_attention
from medcot_pipeline.evaluation.generation import encode_prompt, load_for_inference

QUESTIONS = [
    "Which drug treats strep throat?",
    "A 45-year-old man has crushing chest pain radiating to the left arm. What is the next step?",
    "Why?",
]


class _Module(torch.nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = True


@pytest.mark.parametrize("mask_kind", ["bool", "float", "none"])
def test_one_decode_step_matches_stock_sdpa(mask_kind):
    torch.manual_seed(0)
    batch, kv_heads, groups, kv_len, dim = 3, 2, 3, 11, 8
    query = torch.randn(batch, kv_heads * groups, 1, dim)
    key, value = torch.randn(2, batch, kv_heads, kv_len, dim).unbind(0)
    mask = None
    if mask_kind != "none":
        # Left padding: each row sees a different number of real keys.
        keep = torch.arange(kv_len)[None, :] >= torch.tensor([0, 4, 9])[:, None]
        mask = keep[:, None, None, :]
        if mask_kind == "float":
            mask = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
    module = _Module(groups)

    expected, _ = sdpa_attention.sdpa_attention_forward(module, query, key, value, mask, scaling=dim**-0.5)
    got, _ = grouped_attention.grouped_sdpa_attention_forward(module, query, key, value, mask, scaling=dim**-0.5)

    assert got.shape == expected.shape == (batch, 1, kv_heads * groups, dim)
    torch.testing.assert_close(got, expected)


def test_prefill_and_plain_multi_head_models_go_to_stock_sdpa(monkeypatch):
    calls = []
    monkeypatch.setattr(grouped_attention, "sdpa_attention_forward", lambda *a, **k: calls.append(a[1].shape) or (None, None))
    key = value = torch.randn(1, 2, 5, 4)
    grouped_attention.grouped_sdpa_attention_forward(_Module(2), torch.randn(1, 4, 5, 4), key, value, None)  # 5 new tokens
    grouped_attention.grouped_sdpa_attention_forward(_Module(1), torch.randn(1, 2, 1, 4), key, value, None)  # no groups
    assert calls == [(1, 4, 5, 4), (1, 2, 1, 4)]


@pytest.mark.parametrize("kv_cache", ["dynamic", "static"])
def test_padded_batch_generation_is_unchanged(tiny_llama_dir, monkeypatch, kv_cache):
    stock_model, tokenizer = load_for_inference(str(tiny_llama_dir), device="cpu", attention="sdpa")
    grouped_model, _ = load_for_inference(str(tiny_llama_dir), device="cpu")
    assert grouped_model.config._attn_implementation == grouped_attention.NAME
    prompts = [encode_prompt(tokenizer, q, None)[0] for q in QUESTIONS]
    inputs = tokenizer.pad({"input_ids": prompts}, padding_side="left", return_tensors="pt")
    settings = dict(
        max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id,
        output_logits=True, return_dict_in_generate=True,
        **({"cache_implementation": "static"} if kv_cache == "static" else {}),
    )
    with torch.inference_mode():
        stock = stock_model.generate(**inputs, **settings)
        fallbacks = []
        stock_forward = grouped_attention.sdpa_attention_forward
        monkeypatch.setattr(
            grouped_attention, "sdpa_attention_forward",
            lambda *a, **k: fallbacks.append(a[1].shape[2]) or stock_forward(*a, **k),
        )
        grouped = grouped_model.generate(**inputs, **settings)

    assert torch.equal(grouped.sequences, stock.sequences)
    torch.testing.assert_close(torch.stack(grouped.logits), torch.stack(stock.logits))
    # Only the prefill (one call per layer, several tokens each) left the grouped path.
    layers = grouped_model.config.num_hidden_layers
    assert len(fallbacks) == layers and all(new_tokens > 1 for new_tokens in fallbacks)
