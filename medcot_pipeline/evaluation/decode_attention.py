"""Decode-step attention as one Triton kernel: grouped-query aware, split over the KV cache, blind to masked tiles.

With the static KV cache every decode step of `grouped_sdpa` reads the whole cache of every sequence (the
prompt's left padding and the not-yet-written tail included, masked out), through SDPA's memory-efficient
kernel on 3-row query tiles. This "flash-decoding" kernel instead

  * takes the query heads that share a KV head as the rows of one tile (no K/V copies, like grouped_sdpa),
  * splits each sequence's cache into chunks handled by separate programs, then merges their partial softmax
    results by their log-sum-exp (enough parallel work at batch 100 x 8 KV heads),
  * skips every BLOCK_N-key tile whose mask is all False before loading K/V: it reads only the live cache,
  * has a grid that depends only on tensor shapes, so torch.compile and CUDA graphs capture it; it is called as
    a custom operator, which Inductor compiles around rather than into (a third less compile time).

Registered with transformers' AttentionInterface as NAME. Decode steps with a boolean mask on CUDA go to the
kernel; prefill and anything else go to `grouped_sdpa` (and from there to stock sdpa). Needs Triton (on CUDA
hosts it comes with torch); tests run the kernel in Triton's interpreter (TRITON_INTERPRET=1) against SDPA.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from medcot_pipeline.evaluation import grouped_attention

NAME = "grouped_triton"


@triton.jit
def _split_kernel(
    Q,
    K,
    V,
    M,
    Out,
    Lse,
    stride_qb,
    stride_qh,
    stride_qg,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_mb,
    stride_mn,
    stride_ob,
    stride_oh,
    stride_os,
    stride_og,
    stride_lb,
    stride_lh,
    stride_ls,
    kv_heads,
    kv_len,
    scale,
    SPLIT_LEN: tl.constexpr,
    GROUPS: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
):
    bh = tl.program_id(0)
    split = tl.program_id(1)
    b = bh // kv_heads
    h = bh % kv_heads
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_n = tl.arange(0, BLOCK_N)
    g_ok = offs_g < GROUPS
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_g[:, None] * stride_qg + offs_d[None, :], mask=g_ok[:, None], other=0.0)
    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, HEAD_DIM], dtype=tl.float32)
    start = split * SPLIT_LEN
    end = tl.minimum(start + SPLIT_LEN, kv_len)
    for i in range(0, SPLIT_LEN, BLOCK_N):  # the same trip count in every program: bounds are masks
        n = start + i + offs_n
        in_range = n < end
        keep = tl.load(M + b * stride_mb + n * stride_mn, mask=in_range, other=0) != 0
        if tl.max(keep.to(tl.int32), axis=0) > 0:  # a fully masked tile costs no K/V read
            k = tl.load(K + b * stride_kb + h * stride_kh + n[:, None] * stride_kn + offs_d[None, :], mask=keep[:, None], other=0.0)
            # The product stays float32 however the scale arrives (torch.compile passes Python floats as fp64).
            s = (tl.dot(q, tl.trans(k)).to(tl.float32) * scale).to(tl.float32)
            s = tl.where(keep[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp(m_i - m_safe)
            p = tl.exp(s - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            v = tl.load(V + b * stride_vb + h * stride_vh + n[:, None] * stride_vn + offs_d[None, :], mask=keep[:, None], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v).to(tl.float32)
            m_i = m_new
    # Partial result of this split: unnormalised acc / l and its log-sum-exp (-inf where nothing was kept).
    lse = tl.where(l_i > 0, m_i + tl.log(l_i), float("-inf"))
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(
        Out + b * stride_ob + h * stride_oh + split * stride_os + offs_g[:, None] * stride_og + offs_d[None, :], out, mask=g_ok[:, None]
    )
    tl.store(Lse + b * stride_lb + h * stride_lh + split * stride_ls + offs_g, lse, mask=g_ok)


@triton.jit
def _combine_kernel(
    Part,
    Lse,
    Out,
    stride_pb,
    stride_ph,
    stride_ps,
    stride_pg,
    stride_lb,
    stride_lh,
    stride_ls,
    stride_ob,
    stride_oh,
    stride_og,
    kv_heads,
    n_splits,
    GROUPS: tl.constexpr,
    BLOCK_G: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    bh = tl.program_id(0)
    b = bh // kv_heads
    h = bh % kv_heads
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_s = tl.arange(0, BLOCK_S)
    g_ok = offs_g < GROUPS
    s_ok = offs_s < n_splits
    lse = tl.load(
        Lse + b * stride_lb + h * stride_lh + offs_s[:, None] * stride_ls + offs_g[None, :],
        mask=s_ok[:, None] & g_ok[None, :],
        other=float("-inf"),
    )  # [S, G]
    m = tl.max(lse, axis=0)  # [G]
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp(lse - m_safe[None, :])  # [S, G]; 0 for empty splits
    total = tl.sum(w, axis=0)
    acc = tl.zeros([BLOCK_G, HEAD_DIM], dtype=tl.float32)
    for s in range(0, BLOCK_S):  # constexpr bound; splits past n_splits carry weight 0
        part = tl.load(
            Part + b * stride_pb + h * stride_ph + s * stride_ps + offs_g[:, None] * stride_pg + offs_d[None, :],
            mask=g_ok[:, None] & (s < n_splits),
            other=0.0,
        )
        ws = tl.sum(tl.where(offs_s[:, None] == s, w, 0.0), axis=0)  # [G]
        acc += part * ws[:, None]
    acc = acc / tl.where(total > 0, total, 1.0)[:, None]
    tl.store(
        Out + b * stride_ob + h * stride_oh + offs_g[:, None] * stride_og + offs_d[None, :],
        acc.to(Out.dtype.element_ty),
        mask=g_ok[:, None],
    )


def grouped_decode_attention(query, key, value, keep_mask, scale=None, split_len: int = 256, block_n: int = 64):
    """query (B, Hkv, G, D); key/value (B, Hkv, L, D) with unit stride on D; keep_mask (B, L) bool, True = attend.
    Returns (B, Hkv, G, D) in query's dtype."""
    batch, kv_heads, groups, head_dim = query.shape
    kv_len = key.shape[2]
    assert key.stride(-1) == 1 and value.stride(-1) == 1 and query.stride(-1) == 1
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    split_len = max(block_n, split_len - split_len % block_n)
    n_splits = -(-kv_len // split_len)  # plain ints: nothing for torch.compile to trace into
    block_g = 16  # tl.dot needs >= 16 rows
    part = torch.empty((batch, kv_heads, n_splits, groups, head_dim), device=query.device, dtype=torch.float32)
    lse = torch.empty((batch, kv_heads, n_splits, groups), device=query.device, dtype=torch.float32)
    _split_kernel[(batch * kv_heads, n_splits)](
        query,
        key,
        value,
        keep_mask,
        part,
        lse,
        query.stride(0),
        query.stride(1),
        query.stride(2),
        key.stride(0),
        key.stride(1),
        key.stride(2),
        value.stride(0),
        value.stride(1),
        value.stride(2),
        keep_mask.stride(0),
        keep_mask.stride(1),
        part.stride(0),
        part.stride(1),
        part.stride(2),
        part.stride(3),
        lse.stride(0),
        lse.stride(1),
        lse.stride(2),
        kv_heads,
        kv_len,
        scale,
        SPLIT_LEN=split_len,
        GROUPS=groups,
        BLOCK_G=block_g,
        BLOCK_N=block_n,
        HEAD_DIM=head_dim,
    )
    out = torch.empty_like(query)
    _combine_kernel[(batch * kv_heads,)](
        part,
        lse,
        out,
        part.stride(0),
        part.stride(1),
        part.stride(2),
        part.stride(3),
        lse.stride(0),
        lse.stride(1),
        lse.stride(2),
        out.stride(0),
        out.stride(1),
        out.stride(2),
        kv_heads,
        n_splits,
        GROUPS=groups,
        BLOCK_G=block_g,
        HEAD_DIM=head_dim,
        BLOCK_S=1 << max(n_splits - 1, 0).bit_length(),
    )
    return out


@torch.library.custom_op("medcot::grouped_decode_attention", mutates_args=())
def grouped_decode_attention_op(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, keep_mask: torch.Tensor, scale: float
) -> torch.Tensor:
    """`grouped_decode_attention` as an operator torch.compile does not look into: Dynamo sees a call with a known
    output shape instead of tracing the Triton launches. Inductor then compiled the decode step in 34 s instead of
    50 s on an H100, generating as fast (benchmarks/README.md, call 21), and backends without Inductor can
    capture the step too."""
    return grouped_decode_attention(query, key, value, keep_mask, scale=scale)


@grouped_decode_attention_op.register_fake
def _(query, key, value, keep_mask, scale):
    return torch.empty_like(query)


# What a decode step calls: the operator. generation_throughput.py swaps in the plain function for one variant,
# to measure Inductor tracing into the kernel against the opaque operator.
DECODE = grouped_decode_attention_op


def grouped_triton_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers attention interface: decode steps with a boolean (B, 1, 1, L) mask through the kernel."""
    batch, query_heads, new_tokens, head_dim = query.shape
    kv_heads = key.shape[1]
    usable = (
        new_tokens == 1
        and (query.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")
        and query_heads % kv_heads == 0
        and query_heads // kv_heads <= 16
        and head_dim in (16, 32, 64, 128, 256)
        and isinstance(attention_mask, torch.Tensor)
        and attention_mask.dtype == torch.bool
        and attention_mask.dim() == 4
        and attention_mask.shape[1] == 1
        and attention_mask.shape[2] == 1
        and attention_mask.shape[-1] == key.shape[2]
        and key.stride(-1) == 1
        and value.stride(-1) == 1
        and not dropout
        and kwargs.get("position_bias") is None
        and not kwargs.get("output_attentions")
    )
    if not usable:
        return grouped_attention.grouped_sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    groups = query_heads // kv_heads
    folded = query.reshape(batch, kv_heads, groups, head_dim)  # query head h -> KV head h // groups (repeat_kv's order)
    mask = attention_mask.reshape(attention_mask.shape[0], attention_mask.shape[-1]).expand(batch, -1)
    out = DECODE(folded, key, value, mask, 1.0 / math.sqrt(head_dim) if scaling is None else float(scaling))
    return out.reshape(batch, 1, query_heads, head_dim), None


def register() -> str:
    """Make NAME loadable (attn_implementation=NAME); repeat calls are harmless."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, grouped_triton_attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME
