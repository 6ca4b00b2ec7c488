"""Decode-step attention that reads each KV head once on grouped-query models.

Llama-3.2-3B has 24 query heads over 8 KV heads. transformers' "sdpa" attention copies K and V out to
every query head (`repeat_kv`) whenever a mask is passed, and a padded batch always passes one: at batch
100 with a 1,300-token cache that is ~45 GB of copies per generated token, most of a decode step. While
decoding, each sequence has a single new token, so its query heads sharing a KV head can instead be laid
out as rows of one query against that head: the same scores, the same mask row, no copy.

Registered with transformers' AttentionInterface under NAME; load a model with `attn_implementation=NAME`.
Prefill (several new tokens) and anything unusual go to the stock "sdpa" function unchanged.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "grouped_sdpa"


def grouped_sdpa_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    batch, query_heads, new_tokens, head_dim = query.shape
    kv_heads = key.shape[1]
    groups = query_heads // kv_heads
    if new_tokens != 1 or groups == 1 or kwargs.get("position_bias") is not None or kwargs.get("output_attentions"):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    # Query head h uses KV head h // groups (repeat_kv's order), so [batch, heads, 1, dim] folds to
    # [batch, kv_heads, groups, dim]; the mask [batch, 1, 1, kv_len] broadcasts over the folded rows.
    folded = query.reshape(batch, kv_heads, groups, head_dim)
    output = torch.nn.functional.scaled_dot_product_attention(
        folded, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling
    )
    return output.reshape(batch, 1, query_heads, head_dim), None


def register() -> str:
    """Make NAME loadable; repeat calls are harmless."""
    AttentionInterface.register(NAME, grouped_sdpa_attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME
