"""What the demo's training settings teach on a CPU: one setting, trained and graded as the demo would.

Not a test: a bounded experiment for choosing `profiles/demo.yaml`'s training values (issue 15, item 5). It
trains `lora_adapter` with the demo profile's settings, changed by `key=value` arguments, on the splits of a
demo run (`artifacts/formatted_splits/<run>/`) through the pipeline's own training process code
(`training.run.train`), merges the adapter, and answers rouge_report's questions (the first `num_questions`
validation rows, the demo profile's generation settings) as rouge_report would; `base=1` answers with the
base model instead. It writes the scores, times and answers as JSON.

    OMP_NUM_THREADS=1 python benchmarks/demo_settings.py SPLITS_DIR BASE_MODEL_DIR OUT.json \\
        eval_steps=null grade_questions=0 learning_rate=0.001 lora_r=64 lora_alpha=128 lora_dropout=0.0

BASE_MODEL_DIR is the demo's converted SmolLM2 (`artifacts/base_models/smollm2-135m-instruct`). One torch
thread: on a CPU shared with other work, two threads spin-waiting for each other made decoding ~10x slower
(benchmarks/README.md, "The demo on a CPU").
"""

from __future__ import annotations

import json
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from medcot_pipeline.contracts import BaseModelRef, DatasetProvenance, TrainingJob, WandbTarget  # noqa: E402
from medcot_pipeline.profiles import PROFILES_DIR, load_profile  # noqa: E402
from medcot_pipeline.evaluation.generation import generate_answers  # noqa: E402
from medcot_pipeline.evaluation.metrics import summarize  # noqa: E402
from medcot_pipeline.training import run  # noqa: E402


def main(argv: list[str]) -> int:
    splits, base, out = Path(argv[0]), argv[1], Path(argv[2])
    overrides = {key: yaml.safe_load(value) for key, value in (arg.split("=", 1) for arg in argv[3:])}
    only_base = bool(overrides.pop("base", False))
    profile = load_profile(PROFILES_DIR / "demo.yaml")
    training = profile.stages.lora_adapter.model_copy(update={"report_to_wandb": False, **overrides})
    training = type(training).model_validate(training.model_dump())  # the overrides validated as a profile's would be
    evaluation = profile.stages.rouge_report
    max_seq = profile.resources.base_model.max_seq_length

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    work = Path(tempfile.mkdtemp(prefix="demo-settings-"))
    job = TrainingJob(
        base_model=BaseModelRef(name="embedded:smollm2-135m-instruct", reference=base), splits_dir=str(splits),
        output_dir=str(work / "adapter"), checkpoint_dir=str(work / "checkpoints"), max_seq_length=max_seq,
        settings=training, wandb=WandbTarget(enabled=False, mode="offline", project="demo-settings", dir=str(work / "wandb")),
        dataset=DatasetProvenance(source="sample", location="sample", format="jsonl", records=40, content_sha256="0" * 64),
        splits_sha256="1" * 64, lineage={},
    )
    started = time.perf_counter()
    summary = None if only_base else run.train(job, logging.getLogger("demo_settings"))
    trained = time.perf_counter() - started

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from medcot_pipeline.base_models import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(base)
    if not only_base:
        model = PeftModel.from_pretrained(model, str(work / "adapter")).merge_and_unload()
    model.eval()
    rows = pd.read_parquet(splits / "validation.parquet").head(evaluation.num_questions).reset_index(drop=True)
    generation = generate_answers(model, load_tokenizer(base), rows["question"].tolist(), evaluation, max_prompt_tokens=max_seq)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result = {
        "model": "base" if only_base else "fine_tuned", "overrides": overrides,
        **({} if summary is None else {
            "steps": summary.global_step, "train_loss_final": summary.train_loss_final, "eval_losses": summary.eval_losses,
            "graded_steps": summary.graded_steps, "kept_step": summary.kept_step,
        }),
        "training_wall_s": round(trained, 1), "generation_wall_s": round(generation.wall_seconds, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "scores": summarize(generation.answers, rows),
        "answers": [answer.text[:400] for answer in generation.answers],
    }
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "answers"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
