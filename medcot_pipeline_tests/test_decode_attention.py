"""The grouped_triton decode kernel against SDPA, run in Triton's interpreter on the CPU (skipped where Triton is absent)."""

import os

import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: kernels run as Python on the CPU
pytest.importorskip("triton")


@pytest.mark.parametrize("batch,kv_heads,groups,head_dim,kv_len,split_len", [(3, 2, 3, 64, 300, 128), (2, 1, 3, 128, 77, 256), (4, 2, 1, 32, 64, 64)])
def test_kernel_matches_sdpa_on_left_padded_static_caches(batch, kv_heads, groups, head_dim, kv_len, split_len):
    from medcot_pipeline.evaluation.decode_attention import grouped_decode_attention

    torch.manual_seed(kv_len)
    q = torch.randn(batch, kv_heads, groups, head_dim)
    k, v = torch.randn(batch, kv_heads, kv_len, head_dim), torch.randn(batch, kv_heads, kv_len, head_dim)
    written = kv_len - 5  # the static cache's tail is unwritten: masked
    pad = torch.randint(0, written // 2, (batch,))
    positions = torch.arange(kv_len)
    mask = (positions[None, :] >= pad[:, None]) & (positions[None, :] < written)
    k[:, :, written:] = float("nan")  # never read: a tile past the written part is skipped before its K/V load
    v[:, :, written:] = float("nan")
    expected = torch.nn.functional.scaled_dot_product_attention(q, k.nan_to_num(), v.nan_to_num(), attn_mask=mask[:, None, None, :])
    out = grouped_decode_attention(q, k, v, mask, split_len=split_len)
    assert not out.isnan().any()
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_attention_calls_the_kernel_as_an_operator_that_compiles_without_inductor():
    """A decode step through transformers' attention signature, eager and under torch.compile's aot_eager backend
    with fullgraph (the kernel is an opaque operator, so a backend without Inductor captures it): both equal SDPA
    on K/V repeated to every query head."""
    from medcot_pipeline.evaluation.decode_attention import grouped_triton_attention_forward

    torch.manual_seed(0)
    batch, query_heads, kv_heads, head_dim, kv_len = 2, 6, 2, 64, 96
    q = torch.randn(batch, query_heads, 1, head_dim)
    k, v = torch.randn(batch, kv_heads, kv_len, head_dim), torch.randn(batch, kv_heads, kv_len, head_dim)
    keep = torch.arange(kv_len)[None, :] >= torch.tensor([0, 7])[:, None]  # the second row is left padded
    mask = keep[:, None, None, :]
    groups = query_heads // kv_heads
    expected = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1), attn_mask=mask
    ).transpose(1, 2)
    eager, _ = grouped_triton_attention_forward(None, q, k, v, mask, scaling=head_dim**-0.5)
    torch._dynamo.reset()
    compiled = torch.compile(grouped_triton_attention_forward, backend="aot_eager", fullgraph=True)
    traced, _ = compiled(None, q, k, v, mask, scaling=head_dim**-0.5)
    torch.testing.assert_close(eager, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(traced, expected, atol=1e-5, rtol=1e-5)
