"""Trained tokens per second of LoRA fine-tuning on Llama-3.2-3B's shape: the seed's baseline and the project's profiles.

Not a test: run it on a CUDA host and keep the JSON it writes. Each variant trains `--warmup` + `--steps` optimizer
steps on the real medical-o1 records (tokenized with the real Llama-3.2 tokenizer) through the pipeline's own
training code (`medcot_pipeline.training`), and is timed after the warm-up steps.

    python benchmarks/train_throughput.py --variants baseline,t4,h100 --out train_throughput.json

Variants:
  baseline   plain transformers + PEFT + bitsandbytes 4-bit + TRL at the seed's settings (the t4 profile's
             numbers with backend=transformers): what a user would otherwise run
  t4, h100   the profiles in profiles/, as `lora_adapter` runs them (Unsloth on CUDA)
  NAME       any key of CANDIDATES: an h100 profile with some settings changed, to choose the profile's values

Variants that load Unsloth run in one worker process and the rest in another, so that the baseline runs on
unpatched libraries. `--tiny` trains a two-layer model on the CPU: a smoke run of this script.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from random_model import DEFAULT_CONFIG, DEFAULT_RECORDS, REPO_ROOT, build_random_checkpoint, llama32_instruct_tokenizer, load_formatted_records

PROFILES_DIR = REPO_ROOT / "profiles"
# Settings changed on top of a profile, to measure what the h100 profile should hold.
CANDIDATES: dict[str, tuple[str, dict]] = {
    "h100-4bit-b16": ("h100", {"load_in_4bit": True, "per_device_train_batch_size": 16, "gradient_checkpointing": True}),
    "h100-16bit-b16": ("h100", {"load_in_4bit": False, "per_device_train_batch_size": 16, "gradient_checkpointing": True}),
    "h100-16bit-b32": ("h100", {"load_in_4bit": False, "per_device_train_batch_size": 32, "gradient_checkpointing": True}),
    "h100-16bit-b64": ("h100", {"load_in_4bit": False, "per_device_train_batch_size": 64, "gradient_checkpointing": True}),
    "h100-16bit-nogc-b8": ("h100", {"load_in_4bit": False, "per_device_train_batch_size": 8, "gradient_checkpointing": False}),
    "h100-16bit-nogc-b16": ("h100", {"load_in_4bit": False, "per_device_train_batch_size": 16, "gradient_checkpointing": False}),
    "h100-16bit-nogc-b24": ("h100", {"load_in_4bit": False, "per_device_train_batch_size": 24, "gradient_checkpointing": False}),
}
# Never checkpoint, evaluate or report inside a benchmark.
BENCH_OVERRIDES = {"eval_steps": None, "save_steps": 10**9, "logging_steps": 1, "report_to_wandb": False}


def variant_spec(name: str) -> tuple[str, dict]:
    """(profile, settings changed on top of its lora_adapter config)."""
    if name == "baseline":
        return "t4", {"backend": "transformers"}
    if name in CANDIDATES:
        return CANDIDATES[name]
    if (PROFILES_DIR / f"{name}.yaml").exists():
        return name, {}
    raise SystemExit(f"unknown variant {name!r}: use baseline, a profile in {PROFILES_DIR}, or one of {sorted(CANDIDATES)}")


def training_settings(name: str, tiny: bool):
    """The variant's TrainingSettings and max_seq_length, read from its profile like `lora_adapter` does."""
    from medcot_pipeline.defs.stages import read_profile
    from medcot_pipeline.settings import TrainingSettings

    profile_name, changes = variant_spec(name)
    profile = read_profile(PROFILES_DIR / f"{profile_name}.yaml")
    values = {**profile.ops.get("lora_adapter", {}), **changes, **BENCH_OVERRIDES}
    if tiny:
        values.update(backend="transformers", load_in_4bit=False, per_device_train_batch_size=min(values.get("per_device_train_batch_size", 1), 2))
    max_seq_length = profile.resource_values("base_model").get("max_seq_length", 1024)
    return profile_name, TrainingSettings(**values), (256 if tiny else max_seq_length)


def resolved_backend(config) -> str:
    from medcot_pipeline.backends import resolve_backend

    return resolve_backend(config.backend, "training")


class CountingCollator:
    """Wraps the trainer's collator and counts what each batch carries: real (non-padding) tokens and trained ones."""

    def __init__(self, collator, pad_token_id: int):
        self.collator, self.pad_token_id = collator, pad_token_id
        self.tokens = self.trained_tokens = 0

    def __call__(self, features):
        batch = self.collator(features)
        if "attention_mask" in batch:
            self.tokens += int(batch["attention_mask"].sum())
        else:  # padding-free: one flat row; only a pad_to_multiple_of tail could be padding
            self.tokens += int((batch["input_ids"] != self.pad_token_id).sum())
        if "labels" in batch:
            self.trained_tokens += int((batch["labels"] != -100).sum())
        return batch


def step_timer(counter: CountingCollator):
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall time and token counts at the end of every optimizer step (the GPU synchronised first)."""

        def __init__(self):
            self.marks: list[dict] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self._mark(0)

        def on_step_end(self, args, state, control, **kwargs):
            self._mark(state.global_step)

        def _mark(self, step: int):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.marks.append({"step": step, "t": time.perf_counter(), "tokens": counter.tokens, "trained_tokens": counter.trained_tokens})

    return StepTimer()


def steady_state(marks: list[dict], warmup: int) -> dict:
    """Rates between the end of the warm-up steps and the end of the last step."""
    start = next(m for m in marks if m["step"] == warmup)
    end = marks[-1]
    seconds = end["t"] - start["t"]
    steps = end["step"] - start["step"]
    return {
        "measured_steps": steps,
        "measured_seconds": round(seconds, 3),
        "step_time_s": round(seconds / steps, 3),
        "tokens_per_second": round((end["tokens"] - start["tokens"]) / seconds, 1),
        "trained_tokens_per_second": round((end["trained_tokens"] - start["trained_tokens"]) / seconds, 1),
        "tokens_per_step": round((end["tokens"] - start["tokens"]) / steps, 1),
    }


def packing_leak_check(trainer, dataset) -> dict:
    """Logits of two records packed into one row against each alone, through the trainer's own collator.

    A packed row that let the second record attend to the first would change its logits far beyond rounding.
    """
    model = trainer.model
    examples = [dataset[i] for i in range(2)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            def logits(features):
                batch = {k: v.to(model.device) for k, v in trainer.data_collator(features).items() if isinstance(v, torch.Tensor)}
                batch.pop("labels", None)
                return model(**batch).logits.float()

            first_len = len(examples[0]["input_ids"])
            packed = logits(examples)[0, first_len:]
            alone = logits(examples[1:])[0]
            n = min(len(packed), len(alone))
            diff = (packed[:n] - alone[:n]).abs().max().item()
            scale = alone[:n].abs().max().item()
    finally:
        model.train(was_training)
    return {"max_abs_logit_diff": diff, "logit_scale": scale, "isolated": diff <= 0.05 * max(scale, 1e-6)}


def run_variant(name: str, model_dir: Path, frame, args, reuse: dict) -> dict:
    from medcot_pipeline import backends
    from medcot_pipeline.training.recipe import build_trainer

    profile_name, config, max_seq_length = training_settings(name, args.tiny)
    config = config.model_copy(update={"max_steps": args.warmup + args.steps})
    backend = resolved_backend(config)
    # Variants that load the model the same way share it; their LoRA weights start from the same values.
    load_key = (backend, config.load_in_4bit, config.gradient_checkpointing, config.lora_r, config.lora_alpha, max_seq_length)
    started = time.perf_counter()
    if reuse.get("key") == load_key:
        model, tokenizer = reuse["model"], reuse["tokenizer"]
        model.load_state_dict(reuse["initial_lora"], strict=False)
    else:
        reuse.clear()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        backends.prepare(backend)
        model, tokenizer = backends.load_for_training(backend, str(model_dir), config, max_seq_length)
        initial = {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}
        reuse.update(key=load_key, model=model, tokenizer=tokenizer, initial_lora=initial)
    load_seconds = time.perf_counter() - started

    with tempfile.TemporaryDirectory() as output_dir:
        trainer = build_trainer(model, tokenizer, config, max_seq_length, frame, None, output_dir)
        dataset = trainer.train_dataset
        counter = CountingCollator(trainer.data_collator, tokenizer.pad_token_id)
        trainer.data_collator = counter
        timer = step_timer(counter)
        trainer.add_callback(timer)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        result = {
            "variant": name,
            "profile": profile_name,
            "backend": backend,
            "settings": {key: getattr(config, key) for key in (
                "load_in_4bit", "per_device_train_batch_size", "gradient_accumulation_steps", "packing", "padding_free",
                "gradient_checkpointing", "optim", "learning_rate", "lora_r", "lora_alpha")} | {"max_seq_length": max_seq_length},
            "warmup_steps": args.warmup,
            **steady_state(timer.marks, args.warmup),
            "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
            "peak_gpu_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2) if torch.cuda.is_available() else None,
            "loss_first": losses[0] if losses else None,
            "loss_end": losses[-1] if losses else None,
            "load_seconds": round(load_seconds, 1),
            "train_rows": len(dataset),
        }
        if config.packing or config.padding_free:
            try:
                # Two tokenized records, flattened into one row by the padding-free collator as packing does
                # (max_length None: TRL refuses a length limit it would not enforce without packing).
                check_config = config.model_copy(update={"packing": False, "padding_free": True})
                checker = build_trainer(model, tokenizer, check_config, None, frame.head(2), None, output_dir)
                result["packing_isolation"] = packing_leak_check(checker, checker.train_dataset)
            except Exception as err:  # noqa: BLE001 - a check that cannot run is reported, not fatal to the timing
                result["packing_isolation"] = {"error": f"{type(err).__name__}: {err}"}
    del trainer
    return result


def library_versions() -> dict:
    versions = {"python": platform.python_version(), "cuda": torch.version.cuda}
    for package in ("torch", "transformers", "trl", "peft", "accelerate", "bitsandbytes", "datasets", "unsloth", "unsloth_zoo"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return versions


def worker(args) -> int:
    names = args.variants.split(",")
    if any(resolved_backend(training_settings(n, args.tiny)[1]) == "unsloth" for n in names):
        import unsloth  # noqa: F401 - first, so that it patches transformers, TRL and PEFT

    frame = load_formatted_records(args.records)
    reuse: dict = {}
    out_dir = Path(args.out).parent
    for name in names:
        try:
            result = run_variant(name, Path(args.model_dir), frame, args, reuse)
        except Exception as err:  # noqa: BLE001 - one failed variant must not lose the others' numbers
            import traceback

            traceback.print_exc()
            result = {"variant": name, "error": f"{type(err).__name__}: {err}"}
        result["versions"] = library_versions()
        (out_dir / f"train_{name}.json").write_text(json.dumps(result, indent=2))
        print(json.dumps({k: result.get(k) for k in ("variant", "tokens_per_second", "peak_gpu_memory_gib", "step_time_s", "error")}), flush=True)
    return 0


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="baseline,t4,h100")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="model config JSON (Llama-3.2-3B-Instruct)")
    parser.add_argument("--records", type=Path, default=DEFAULT_RECORDS, help="medical-o1 records (JSON)")
    parser.add_argument("--warmup", type=int, default=2, help="optimizer steps before timing starts")
    parser.add_argument("--steps", type=int, default=6, help="timed optimizer steps")
    parser.add_argument("--model-dir", help="an existing checkpoint to train instead of a fresh random one")
    parser.add_argument("--tiny", action="store_true", help="two-layer model on the CPU: a smoke run of this script")
    parser.add_argument("--out", type=Path, default=Path("train_throughput.json"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    if not args.tiny and not torch.cuda.is_available():
        print("no CUDA device: run with --tiny for a CPU smoke run", file=sys.stderr)
        return 2
    names = args.variants.split(",")
    for name in names:
        variant_spec(name)  # unknown names fail before anything loads
    args.out.parent.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory() as work:
        model_dir = Path(args.model_dir) if args.model_dir else build_random_checkpoint(
            args.config, llama32_instruct_tokenizer(), Path(work) / "model", tiny=args.tiny
        )
        # Unpatched libraries first (the baseline), then everything that imports Unsloth, each in its own process.
        groups: dict[str, list[str]] = {}
        for name in names:
            groups.setdefault(resolved_backend(training_settings(name, args.tiny)[1]), []).append(name)
        for backend in sorted(groups, key=lambda b: b != "transformers"):
            command = [sys.executable, __file__, "--worker", "--variants", ",".join(groups[backend]), "--model-dir", str(model_dir),
                       "--records", str(args.records), "--warmup", str(args.warmup), "--steps", str(args.steps), "--out", str(args.out)]
            subprocess.run(command + (["--tiny"] if args.tiny else []), check=False, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    results = []
    for name in names:
        path = args.out.parent / f"train_{name}.json"
        results.append(json.loads(path.read_text()) if path.exists() else {"variant": name, "error": "worker wrote no result"})
    baseline = next((r.get("tokens_per_second") for r in results if r["variant"] == "baseline"), None)
    for result in results:
        if baseline and result.get("tokens_per_second"):
            result["speedup_vs_baseline"] = round(result["tokens_per_second"] / baseline, 2)
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() and not args.tiny else platform.processor() or "cpu",
        "model_config": str(args.config),
        "records": str(args.records),
        "tiny": args.tiny,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "variants": results,
    }
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\n{'variant':<22}{'tokens/s':>10}{'x base':>8}{'step s':>8}{'peak GiB':>10}{'loss end':>10}")
    for r in results:
        print(f"{r['variant']:<22}{r.get('tokens_per_second', 'error'):>10}{r.get('speedup_vs_baseline', ''):>8}"
              f"{r.get('step_time_s', ''):>8}{r.get('peak_gpu_memory_gib') or '':>10}{r.get('loss_end') or '':>10}")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
