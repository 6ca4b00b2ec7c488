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
