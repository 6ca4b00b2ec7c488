"""Packed rows through one flash-varlen call per layer on Unsloth 2026.10.9 with torch 2.11 (CUDA only).

Unsloth trains padding-free packed rows through its own attention (`unsloth.utils.attention_dispatch`). It
takes torch's varlen flash kernel only when `torch.nn.attention.varlen.varlen_attn` has both `window_size`
(torch 2.11) and `enable_gqa` (torch 2.12); on torch 2.11 it falls back to `_sdpa_packed_segments`: one SDPA
call per run of equal-length records, about 25 per layer at 24 packed rows, plus slicing and a concatenation.
Its own `_LeanFlashVarlen` already calls torch's `aten._flash_attention_forward/backward` in varlen mode with
grouped-query K/V, which torch 2.11 has with the same signature; it is only switched off by that feature test.
`enable()` switches it on by setting the module's globals, subject to Unsloth's own per-call checks
(`_torch_varlen_takes`, `_torch_varlen_beats_segments`). The same documents attend to the same keys either way:
benchmarks/train_throughput.py --check-varlen compares loss and every LoRA gradient of one batch both ways.

Imported only by `backends.unsloth_lora`, after Unsloth.
"""

from __future__ import annotations

import functools

import torch

_SAVED: dict = {}
_COUNTS = {"varlen": 0, "segments": 0}


def _counting(route: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _COUNTS[route] += 1
        return fn(*args, **kwargs)

    wrapper._medcot_counting = True  # type: ignore[attr-defined]  # our mark on the wrapper, so it is never wrapped twice
    return wrapper


def _dispatch():
    import unsloth.utils.attention_dispatch as dispatch

    # Count which route each packed attention call takes (benchmarks report it; the cost is a Python increment).
    if not getattr(dispatch._torch_varlen_packed, "_medcot_counting", False):
        dispatch._torch_varlen_packed = _counting("varlen", dispatch._torch_varlen_packed)
    if not getattr(dispatch._sdpa_packed_segments, "_medcot_counting", False):
        dispatch._sdpa_packed_segments = _counting("segments", dispatch._sdpa_packed_segments)
    return dispatch


def route_counts(reset: bool = False) -> dict[str, int]:
    """Packed attention calls (layers x forwards) that took varlen and per-record SDPA since the last reset."""
    counts = dict(_COUNTS)
    if reset:
        _COUNTS.update(varlen=0, segments=0)
    return counts


def enable() -> str:
    """Route Unsloth's packed rows through flash varlen; returns what was done, in words."""
    dispatch = _dispatch()
    if dispatch._TORCH_VARLEN_ATTN is not None and dispatch._LEAN_VARLEN:
        return "native (this torch's varlen_attn has enable_gqa)"
    if not torch.cuda.is_available() or not torch.backends.cuda.is_flash_attention_available():
        return "unavailable (no CUDA flash attention in this torch build): per-record SDPA"
    from torch.nn.attention.varlen import varlen_attn

    def varlen_gqa(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False):
        # Unsloth's lean path calls aten's flash varlen ops directly (grouped K/V native) in eager mode; this
        # stand-in for varlen_attn is reached only while torch.compile traces, so it expands K/V itself.
        if enable_gqa and k.shape[1] != q.shape[1]:
            groups = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        return varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, scale=scale, window_size=tuple(window_size))

    _SAVED.setdefault("state", (dispatch._TORCH_VARLEN_ATTN, dispatch._LEAN_VARLEN, getattr(dispatch, "_varlen_can_use_cudnn", None)))
    dispatch._TORCH_VARLEN_ATTN = varlen_gqa
    dispatch._varlen_can_use_cudnn = lambda *args, **kwargs: False  # torch 2.11's varlen never picks cuDNN either
    dispatch._LEAN_VARLEN = True
    return "enabled (aten flash varlen, grouped K/V)"


def disable() -> str:
    """Back to what Unsloth chose by itself (per-record SDPA on torch 2.11)."""
    dispatch = _dispatch()
    if "state" not in _SAVED:
        return "per-record SDPA (varlen was not enabled)"
    varlen, lean, can_use_cudnn = _SAVED.pop("state")
    dispatch._TORCH_VARLEN_ATTN, dispatch._LEAN_VARLEN = varlen, lean
    if can_use_cudnn is None:
        if hasattr(dispatch, "_varlen_can_use_cudnn"):
            del dispatch._varlen_can_use_cudnn
    else:
        dispatch._varlen_can_use_cudnn = can_use_cudnn
    return "per-record SDPA"
