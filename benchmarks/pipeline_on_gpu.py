"""Materialize the pipeline (by default raw_dataset -> formatted_splits -> lora_adapter) with a profile, on a GPU host with no network.

The base model is a random checkpoint of Llama-3.2-3B-Instruct's exact shape (no weights can be downloaded
there), the data the real medical-o1 records from a file; everything else is the profile as users run it,
through `dagster asset materialize`, so the Unsloth training process runs under Dagster Pipes.

    python benchmarks/pipeline_on_gpu.py --profile t4 --out-dir $OUT
    python benchmarks/pipeline_on_gpu.py --profile h100 --max-steps 5 --through rouge_report --out-dir $OUT

Writes pipeline_<profile>.json: the training summary (loss per step, eval losses, tokens/s, peak memory),
and with `--through rouge_report` the report (generation tokens/s of both models) and the asset checks.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from random_model import DEFAULT_CONFIG, DEFAULT_RECORDS, REPO_ROOT, build_random_checkpoint, llama32_instruct_tokenizer


STAGES = ("lora_adapter", "merged_model", "rouge_report")  # hub_release needs the network


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="t4")
    parser.add_argument("--max-steps", type=int, help="stop earlier than the profile (default: its first evaluation)")
    parser.add_argument("--records", type=Path, default=DEFAULT_RECORDS)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--out-dir", type=Path, default=Path("."))
    parser.add_argument("--through", choices=list(STAGES), default="lora_adapter", help="the last asset to materialize")
    parser.add_argument("--tiny", action="store_true", help="two-layer model: a CPU smoke run of this script")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="medcot-gpu-"))
    model_dir = build_random_checkpoint(args.config, llama32_instruct_tokenizer(), work / "model", tiny=args.tiny)
    profile = yaml.safe_load((REPO_ROOT / "profiles" / f"{args.profile}.yaml").read_text())
    training = profile["ops"]["lora_adapter"]["config"]
    training["max_steps"] = args.max_steps or training.get("eval_steps") or training["max_steps"]
    profile["ops"]["raw_dataset"]["config"] = {"source": "file", "path": str(args.records.resolve())}  # dagster runs from the repo root
    profile["resources"]["base_model"]["config"]["name"] = str(model_dir)
    profile.setdefault("resources", {})["artifacts"] = {"config": {"root": str(work / "artifacts")}}
    profile_path = work / f"{args.profile}-gpu.yaml"
    profile_path.write_text(yaml.safe_dump(profile))
    (work / "dagster_home").mkdir()

    env = {**os.environ, "DAGSTER_HOME": str(work / "dagster_home"), "MEDCOT_PROFILE": str(profile_path), "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    command = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "medcot_pipeline.definitions",
               "--select", ",".join(["raw_dataset", "formatted_splits", *STAGES[: STAGES.index(args.through) + 1]]),
               "-c", str(profile_path)]
    run = subprocess.run(command, cwd=REPO_ROOT, env=env)
    wall = time.perf_counter() - started

    summaries = sorted((work / "artifacts" / "lora_adapter").glob("*/adapter/training_summary.json"))
    result = {"profile": args.profile, "returncode": run.returncode, "wall_seconds": round(wall, 1),
              "wandb_offline_files": len(list((work / "artifacts" / "wandb").rglob("*.wandb")))}
    if summaries:
        result["training"] = json.loads(summaries[-1].read_text())
    reports = sorted((work / "artifacts" / "rouge_report").glob("*/report.json"))
    if reports:
        result["rouge_report"] = json.loads(reports[-1].read_text())
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"pipeline_{args.profile}.json").write_text(json.dumps(result, indent=2))
    training_summary = result.get("training", {})
    print(json.dumps({k: training_summary.get(k) for k in ("global_step", "eval_losses", "tokens_per_second", "peak_gpu_memory_gib", "training_seconds")}))
    for label in ("fine_tuned", "base"):
        if label in result.get("rouge_report", {}):
            generated = result["rouge_report"][label]
            print(label, {k: generated.get(k) for k in ("n", "tokens_per_second", "total_new_tokens", "wall_seconds")})
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
