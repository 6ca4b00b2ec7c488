"""Does the h100 profile's data layout train as well as the t4 profile's? Validation loss after the same records, on CPU.

Random weights cannot answer this, so it runs SmolLM2-135M-Instruct (real weights, the embedded default) on
the real medical-o1 records. Each layout trains on the same number of records through the pipeline's own
training code and is evaluated on the same held-out records:

  t4     batch 1 x 8 accumulation, padded, learning rate LR
  h100   24 packed padding-free rows a step (about 24 records), learning rate LR x sqrt(3), a third of the steps
         (as 6 micro-batches of 4 rows: the same optimizer steps, within a CPU's memory)

Both start from the same LoRA initialisation. LR is higher than the profiles' 1e-5 so that a few CPU steps move
the loss measurably; the two keep the profiles' ratio. Writes quality_parity.json.

    python benchmarks/quality_parity.py --records 96 --out quality_parity.json     # ~30 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

from random_model import DEFAULT_RECORDS, load_formatted_records


def train_and_evaluate(layout: str, model_dir: str, train, validation, args) -> dict:
    import torch

    from medcot_pipeline import backends
    from medcot_pipeline.settings import TrainingSettings
    from medcot_pipeline.training.sft_trainer import build_trainer

    records_per_step = {"t4": 8, "h100": 24}[layout]
    common = dict(backend="transformers", load_in_4bit=False, optim="adamw_torch", gradient_checkpointing=False,
                  eval_steps=None, save_steps=10**9, report_to_wandb=False, lr_scheduler_type="constant_with_warmup")
    if layout == "t4":
        config = TrainingSettings(**common, per_device_train_batch_size=1, gradient_accumulation_steps=8,
                                learning_rate=args.lr, max_steps=args.records // 8, warmup_steps=1)
    else:
        # 24 packed rows per optimizer step, fed as 6 micro-batches of 4 so that a CPU's memory holds the activations.
        config = TrainingSettings(**common, per_device_train_batch_size=4, gradient_accumulation_steps=6,
                                packing=True, padding_free=True, learning_rate=args.lr * math.sqrt(3),
                                max_steps=math.ceil(args.records / records_per_step), warmup_steps=0)
    torch.manual_seed(0)
    model, tokenizer = backends.TRANSFORMERS.load_for_training(model_dir, config, args.max_seq_length)
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = build_trainer(
            model, tokenizer, config, args.max_seq_length, train.head(args.records), validation, output_dir,
            # Both layouts are judged on the same unpacked validation batches.
            sft_overrides={"per_device_eval_batch_size": 4, "eval_packing": False},
        )
        before = trainer.evaluate()["eval_loss"]
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
        after = trainer.evaluate()["eval_loss"]
    return {"layout": layout, "steps": config.max_steps, "learning_rate": config.learning_rate,
            "records_trained": args.records, "tokens_trained": trainer.state.num_input_tokens_seen,
            "eval_loss_before": before, "eval_loss_after": after, "train_seconds": round(seconds, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records-file", type=Path, default=DEFAULT_RECORDS)
    parser.add_argument("--records", type=int, default=96, help="training records per layout (a multiple of 24)")
    parser.add_argument("--validation", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-4, help="the t4 layout's learning rate")
    parser.add_argument("--max-seq-length", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=Path("quality_parity.json"))
    args = parser.parse_args(argv)

    from medcot_pipeline.base_models import EMBEDDED_SMOLLM2, resolve_base_model

    model_dir = resolve_base_model(EMBEDDED_SMOLLM2, Path(tempfile.gettempdir()) / "medcot-base-models")
    frame = load_formatted_records(args.records_file)
    validation, train = frame.head(args.validation), frame.iloc[args.validation:].reset_index(drop=True)
    results = [train_and_evaluate(layout, model_dir, train, validation, args) for layout in ("t4", "h100")]
    t4, h100 = results
    report = {
        "model": "SmolLM2-135M-Instruct (real weights), CPU",
        "records_file": str(args.records_file),
        "validation_records": len(validation),
        "layouts": results,
        "relative_difference": round((h100["eval_loss_after"] - t4["eval_loss_after"]) / t4["eval_loss_after"], 4),
    }
    report["within_2_percent"] = abs(report["relative_difference"]) <= 0.02
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
