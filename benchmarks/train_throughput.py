"""Trained tokens per second of LoRA fine-tuning on Llama-3.2-3B's shape: the seed's baseline and the project's profiles.

Not a test: run it on a CUDA host and keep the JSON it writes. Each variant trains `--warmup` + `--steps` optimizer
steps on the real medical-o1 records (tokenized with the real Llama-3.2 tokenizer) through the pipeline's own
training code (`medcot_pipeline.training`), and is timed after the warm-up steps.

    python benchmarks/train_throughput.py --variants baseline,t4,h100 --out train_throughput.json
    python benchmarks/train_throughput.py --variants h100 --nproc 4 --out ddp4/train_throughput.json   # torchrun, 4 GPUs

Variants:
  baseline   plain transformers + PEFT + bitsandbytes 4-bit + TRL at the seed's settings (the t4 profile's
             numbers with backend=transformers): what a user would otherwise run
  t4, h100   the profiles in profiles/, as `lora_adapter` runs them (Unsloth on CUDA)
  NAME       any key of CANDIDATES: a profile with some settings changed, to choose the profile's values

Variants that load Unsloth run in one worker process (under torchrun with `--nproc N`: N data-parallel ranks,
one GPU each, global rate = every rank's tokens over the slowest rank's time) and the rest in another, so that
the baseline runs on unpatched libraries. `--check-varlen` compares the loss and every LoRA gradient of one
packed batch through flash varlen and through per-record SDPA; `--profile NAME` writes a torch.profiler table of
one step of that variant. `--tiny` trains a two-layer model on the CPU: a smoke run of this script.
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
_H100_AS_SHIPPED = {"lora_dropout": 0.05, "packed_attention": "per_record", "per_device_train_batch_size": 24, "lora_r": 16, "lora_alpha": 32}
CANDIDATES: dict[str, tuple[str, dict]] = {
    "h100-4bit-b16": ("h100", {"load_in_4bit": True, "per_device_train_batch_size": 16, "gradient_checkpointing": True}),
    "h100-16bit-b16": ("h100", {"load_in_4bit": False, "per_device_train_batch_size": 16, "gradient_checkpointing": True}),
    "h100-16bit-b32": ("h100", {"load_in_4bit": False, "per_device_train_batch_size": 32, "gradient_checkpointing": True}),
    "h100-16bit-b64": ("h100", {"load_in_4bit": False, "per_device_train_batch_size": 64, "gradient_checkpointing": True}),
    "h100-16bit-nogc-b8": ("h100", {"load_in_4bit": False, "per_device_train_batch_size": 8, "gradient_checkpointing": False}),
    "h100-16bit-nogc-b16": ("h100", {"load_in_4bit": False, "per_device_train_batch_size": 16, "gradient_checkpointing": False}),
    "h100-16bit-nogc-b24": ("h100", {"load_in_4bit": False, "per_device_train_batch_size": 24, "gradient_checkpointing": False}),
    # Issue 19: the h100 layout as shipped before it (dropout 0.05, one SDPA call per packed record), then one change at a time.
    "h100-prev": ("h100", dict(_H100_AS_SHIPPED)),
    "h100-varlen": ("h100", {**_H100_AS_SHIPPED, "packed_attention": "varlen"}),
    "h100-nodrop": ("h100", {**_H100_AS_SHIPPED, "lora_dropout": 0.0}),
    "h100-nodrop-varlen": ("h100", {**_H100_AS_SHIPPED, "lora_dropout": 0.0, "packed_attention": "varlen"}),
    "h100-nodrop-varlen-b32": ("h100", {**_H100_AS_SHIPPED, "lora_dropout": 0.0, "packed_attention": "varlen", "per_device_train_batch_size": 32}),
    # The h100 profile as it is now with more rows per step (changes the global batch: speed only).
    "h100-b32": ("h100", {"per_device_train_batch_size": 32}),
}
# Never checkpoint, evaluate or report inside a benchmark.
BENCH_OVERRIDES = {"eval_steps": None, "save_steps": 10**9, "logging_steps": 1, "report_to_wandb": False}


def variant_spec(name: str) -> tuple[str, dict]:
    """(profile, settings changed on top of its lora_adapter config)."""
    if name == "baseline":
        # The seed: its layout (the t4 profile's) and its LoRA values, on transformers + PEFT.
        return "t4", {"backend": "transformers", "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "learning_rate": 1e-5}
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


def resolved_backend(config, processes: int = 1):
    from medcot_pipeline.backends import resolve_backend

    return resolve_backend(config.backend, "training", processes)


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
    """Rates between the end of the warm-up steps and the end of the last step; with several data-parallel
    ranks, every rank's tokens over the slowest rank's time."""
    start = next(m for m in marks if m["step"] == warmup)
    end = marks[-1]
    seconds = end["t"] - start["t"]
    steps = end["step"] - start["step"]
    tokens, trained = end["tokens"] - start["tokens"], end["trained_tokens"] - start["trained_tokens"]
    local_tokens = tokens
    processes = world_size()
    if processes > 1:
        import torch.distributed as dist

        device = "cuda" if torch.cuda.is_available() else "cpu"
        totals = torch.tensor([tokens, trained], dtype=torch.float64, device=device)
        dist.all_reduce(totals)
        slowest = torch.tensor([seconds], dtype=torch.float64, device=device)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        tokens, trained, seconds = totals[0].item(), totals[1].item(), slowest.item()
    return {
        "processes": processes,
        "measured_steps": steps,
        "measured_seconds": round(seconds, 3),
        "step_time_s": round(seconds / steps, 3),
        "tokens_per_second": round(tokens / seconds, 1),
        "tokens_per_second_per_gpu": round(tokens / seconds / processes, 1),
        "trained_tokens_per_second": round(trained / seconds, 1),
        "tokens_per_step": round(tokens / steps, 1),
        "tokens_per_step_rank0": round(local_tokens / steps, 1),
    }


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def packing_leak_check(trainer, dataset) -> dict:
    """Logits of two records packed into one row against each alone, through the trainer's own collator.

    A packed row that let the second record attend to the first would change its logits far beyond rounding.
    """
    model = trainer.model
    examples = [dataset[i] for i in range(2)]
    was_training = model.training
    routes_before = attention_routes()
    model.eval()
    try:
        with torch.no_grad():
            def logits(features):
                batch = {k: v.to(model.device) for k, v in trainer.data_collator(features).items() if isinstance(v, torch.Tensor)}
                batch.pop("labels", None)
                # A KV cache turns off transformers' packed-sequence detection: never pass one with packed rows.
                return model(**batch, use_cache=False).logits.float()

            first_len = len(examples[0]["input_ids"])
            packed = logits(examples)[0, first_len:]
            alone = logits(examples[1:])[0]
            n = min(len(packed), len(alone))
            diff = (packed[:n] - alone[:n]).abs().max().item()
            scale = alone[:n].abs().max().item()
    finally:
        model.train(was_training)
    result = {"max_abs_logit_diff": diff, "logit_scale": scale, "isolated": diff <= 0.05 * max(scale, 1e-6)}
    routes = attention_routes()
    if routes is not None and routes_before is not None:
        result["attention_routes"] = {k: routes[k] - routes_before[k] for k in routes}
    return result


def attention_routes() -> dict | None:
    """Unsloth's packed-attention calls so far by route (varlen / per-record SDPA), when Unsloth is loaded."""
    if "medcot_pipeline.backends.unsloth_varlen" not in sys.modules:
        return None
    return sys.modules["medcot_pipeline.backends.unsloth_varlen"].route_counts()


def varlen_parity(trainer, config) -> dict:
    """Loss and every LoRA gradient of one packed batch through flash varlen and through per-record SDPA.

    Run with lora_dropout 0 (or the same dropout masks would be needed): the two routes then compute the same
    function, and any difference is the kernels' bf16 rounding.
    """
    from medcot_pipeline.backends import unsloth_varlen

    model = trainer.model
    batch = next(iter(trainer.get_train_dataloader()))
    batch = {k: v.to(model.device) if torch.is_tensor(v) else v for k, v in batch.items()}
    model.train()
    passes = {}
    for route, switch in (("per_record", unsloth_varlen.disable), ("varlen", unsloth_varlen.enable)):
        switch()
        before = unsloth_varlen.route_counts()
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1234)
        loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
        grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}
        after = unsloth_varlen.route_counts()
        passes[route] = (float(loss), grads, {k: after[k] - before[k] for k in after})
    model.zero_grad(set_to_none=True)
    (l0, g0, r0), (l1, g1, r1) = passes["per_record"], passes["varlen"]
    rel = {n: ((g1[n] - g0[n]).norm() / g0[n].norm().clamp_min(1e-12)).item() for n in g0}
    worst = max(rel, key=rel.get)
    result = {
        "loss_per_record": l0, "loss_varlen": l1, "loss_rel_diff": abs(l0 - l1) / max(abs(l0), 1e-12),
        "grad_rel_diff_max": rel[worst], "grad_rel_diff_max_param": worst,
        "grad_rel_diff_mean": sum(rel.values()) / len(rel), "lora_grads_compared": len(rel),
        "routes_per_record_pass": r0, "routes_varlen_pass": r1, "tokens": int(batch["input_ids"].numel()),
    }
    # bf16 kernels on different shapes: ~1e-3 relative; a leak or a wrong mask would be O(1).
    result["equal_within_bf16"] = result["loss_rel_diff"] < 1e-2 and result["grad_rel_diff_max"] < 5e-2
    (unsloth_varlen.enable if config.packed_attention == "varlen" else unsloth_varlen.disable)()
    return result


def profile_one_step(trainer, out_path: Path) -> dict:
    """torch.profiler over one optimizer step of an already warmed-up trainer: CUDA kernels and host time."""
    from torch.profiler import ProfilerActivity, profile

    batch = next(iter(trainer.get_train_dataloader()))
    model = trainer.model_wrapped if trainer.model_wrapped is not None else trainer.model
    model.train()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    with profile(activities=activities) as prof:
        trainer.training_step(model, batch)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    wall = time.perf_counter() - started
    averages = prof.key_averages()
    sort = "device_time_total" if torch.cuda.is_available() else "cpu_time_total"
    out_path.write_text(
        f"one step, {int(batch['input_ids'].numel())} tokens, {wall:.3f} s under the profiler\n\n"
        + averages.table(sort_by=sort, row_limit=45, max_name_column_width=80)
        + "\n\nby self CPU time\n"
        + averages.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=80)
    )
    device_us = sum(e.self_device_time_total for e in averages) if torch.cuda.is_available() else 0
    return {"file": out_path.name, "wall_s": round(wall, 3), "device_busy_s": round(device_us / 1e6, 3)}


def run_variant(name: str, model_dir: Path, frame, args, reuse: dict) -> dict:
    from medcot_pipeline.training.sft_trainer import build_trainer

    profile_name, config, max_seq_length = training_settings(name, args.tiny)
    config = config.model_copy(update={"max_steps": args.warmup + args.steps})
    backend = resolved_backend(config, world_size())
    # Variants that load the model the same way share it; their LoRA weights start from the same values.
    load_key = (backend.name, config.load_in_4bit, config.gradient_checkpointing, config.lora_r, config.lora_alpha,
                config.lora_dropout, max_seq_length)
    started = time.perf_counter()
    if reuse.get("key") == load_key:
        model, tokenizer = reuse["model"], reuse["tokenizer"]
        model.load_state_dict(reuse["initial_lora"], strict=False)
        if backend.name == "unsloth":
            from medcot_pipeline.backends.unsloth_lora import configure_packed_attention

            configure_packed_attention(config)
    else:
        reuse.clear()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        backend.prepare()
        model, tokenizer = backend.load_for_training(str(model_dir), config, max_seq_length)
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
        routes_before = attention_routes()
        trainer.train()
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        result = {
            "variant": name,
            "profile": profile_name,
            "backend": backend.name,
            "settings": {key: getattr(config, key) for key in (
                "load_in_4bit", "per_device_train_batch_size", "gradient_accumulation_steps", "packing", "padding_free",
                "gradient_checkpointing", "optim", "learning_rate", "lora_r", "lora_alpha", "lora_dropout", "packed_attention",
            )} | {"max_seq_length": max_seq_length},
            "warmup_steps": args.warmup,
            **steady_state(timer.marks, args.warmup),
            "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
            "peak_gpu_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2) if torch.cuda.is_available() else None,
            "loss_first": losses[0] if losses else None,
            "loss_end": losses[-1] if losses else None,
            "load_seconds": round(load_seconds, 1),
            "train_rows": len(dataset),
        }
        routes = attention_routes()
        if routes is not None and routes_before is not None:
            result["attention_routes"] = {k: routes[k] - routes_before[k] for k in routes}
        # Both run one process's model outside the DDP wrapper's step: one process only.
        if args.profile == name and world_size() == 1:
            tag = name.replace("+", "_")
            try:
                result["profile_step"] = profile_one_step(trainer, Path(args.out).parent / f"profile_train_{tag}.txt")
            except Exception as err:  # noqa: BLE001 - the timing above stands without it
                result["profile_step"] = {"error": f"{type(err).__name__}: {str(err)[:1000]}"}
        if args.check_varlen and backend.name == "unsloth" and world_size() == 1 and (config.packing or config.padding_free):
            if config.lora_dropout == 0:
                try:
                    result["varlen_parity"] = varlen_parity(trainer, config)
                except Exception as err:  # noqa: BLE001
                    result["varlen_parity"] = {"error": f"{type(err).__name__}: {str(err)[:1000]}"}
            else:
                result["varlen_parity"] = {"skipped": "lora_dropout > 0 draws different masks on each pass"}
        if config.packing or config.padding_free:
            try:
                # Two tokenized records, flattened into one row by the padding-free collator as packing does
                # (max_length None: TRL refuses a length limit it would not enforce without packing).
                check_config = config.model_copy(update={"packing": False, "padding_free": True})
                checker = build_trainer(model, tokenizer, check_config, None, frame.head(2), None, output_dir)
                result["packing_isolation"] = packing_leak_check(checker, checker.train_dataset)
            except Exception as err:  # noqa: BLE001 - a check that cannot run is reported, not fatal to the timing
                result["packing_isolation"] = {"error": f"{type(err).__name__}: {err}"}
        if hasattr(trainer, "accelerator"):
            trainer.accelerator.free_memory()
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
    if any(resolved_backend(training_settings(n, args.tiny)[1], world_size()).name == "unsloth" for n in names):
        from medcot_pipeline import backends

        backends.UNSLOTH.prepare()  # first (each rank on its own GPU), so that it patches transformers, TRL and PEFT

    frame = load_formatted_records(args.records)
    if args.tiny:
        frame = frame.head(12)  # a smoke run: a few steps' worth of records
    reuse: dict = {}
    out_dir = Path(args.out).parent
    for name in names:
        try:
            result = run_variant(name, Path(args.model_dir), frame, args, reuse)
        except Exception as err:  # noqa: BLE001 - one failed variant must not lose the others' numbers
            import traceback

            traceback.print_exc()
            result = {"variant": name, "error": f"{type(err).__name__}: {err}"}
            if world_size() > 1:
                raise  # a rank that gave up would leave the others waiting in a collective
        result["versions"] = library_versions()
        result["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.tiny else "cpu"
        if is_rank_zero():
            (out_dir / f"train_{name}.json").write_text(json.dumps(result, indent=2))
            print(json.dumps({k: result.get(k) for k in (
                "variant", "processes", "tokens_per_second", "tokens_per_second_per_gpu", "peak_gpu_memory_gib", "step_time_s",
                "attention_routes", "error")}), flush=True)
    return 0


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="baseline,t4,h100")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="model config JSON (Llama-3.2-3B-Instruct)")
    parser.add_argument("--records", type=Path, default=DEFAULT_RECORDS, help="medical-o1 records (JSON)")
    parser.add_argument("--warmup", type=int, default=2, help="optimizer steps before timing starts")
    parser.add_argument("--steps", type=int, default=6, help="timed optimizer steps")
    parser.add_argument("--model-dir", help="an existing checkpoint to train instead of a fresh random one")
    parser.add_argument("--build-model", type=Path, help="only write the random checkpoint to this directory and exit")
    parser.add_argument("--nproc", type=int, default=1, help="data-parallel processes (torchrun) for the Unsloth variants")
    parser.add_argument("--check-varlen", action="store_true", help="loss/gradient parity of varlen vs per-record SDPA (dropout-0 variants)")
    parser.add_argument("--profile", metavar="VARIANT", help="write a torch.profiler table of one step of this variant")
    parser.add_argument("--tiny", action="store_true", help="two-layer model on the CPU: a smoke run of this script")
    parser.add_argument("--out", type=Path, default=Path("train_throughput.json"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def worker_command(args, names: list[str], model_dir: Path, nproc: int) -> list[str]:
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    command = launcher + [__file__, "--worker", "--variants", ",".join(names), "--model-dir", str(model_dir),
                          "--records", str(args.records), "--warmup", str(args.warmup), "--steps", str(args.steps), "--out", str(args.out)]
    if args.check_varlen:
        command.append("--check-varlen")
    if args.profile:
        command += ["--profile", args.profile]
    return command + (["--tiny"] if args.tiny else [])


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    if args.build_model:
        build_random_checkpoint(args.config, llama32_instruct_tokenizer(), args.build_model, tiny=args.tiny)
        print(f"random checkpoint written to {args.build_model}")
        return 0
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
            groups.setdefault(resolved_backend(training_settings(name, args.tiny)[1], args.nproc).name, []).append(name)
        for backend in sorted(groups, key=lambda b: b != "transformers"):
            nproc = args.nproc if backend == "unsloth" or args.tiny else 1
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            if nproc > 1:
                from medcot_pipeline.training.distributed import MULTI_GPU_ENV

                env.update(MULTI_GPU_ENV)
            subprocess.run(worker_command(args, groups[backend], model_dir, nproc), check=False, env=env)

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
        "gpus_visible": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "nproc": args.nproc,
        "model_config": str(args.config),
        "records": str(args.records),
        "tiny": args.tiny,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "variants": results,
    }
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\n{'variant':<24}{'procs':>6}{'tokens/s':>10}{'per GPU':>10}{'x base':>8}{'step s':>8}{'peak GiB':>10}{'loss end':>10}")
    for r in results:
        print(f"{r['variant']:<24}{r.get('processes', ''):>6}{r.get('tokens_per_second', 'error'):>10}{r.get('tokens_per_second_per_gpu', ''):>10}"
              f"{r.get('speedup_vs_baseline', ''):>8}{r.get('step_time_s', ''):>8}{r.get('peak_gpu_memory_gib') or '':>10}{r.get('loss_end') or '':>10}")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
