"""How long benchmark_report takes: N benchmark questions x both models, as the h100 profile answers them.

The model is a randomly initialised Llama-3.2-3B (speed does not depend on weight values; a random model never
stops early, so every answer runs to the token limit: the worst case). The questions are the multiple-choice
parts of the real medical-o1 records (MedQA-style vignettes with their options), repeated to N. The call is
`evaluation.benchmark_report.write_benchmark_report` itself, loading, compiling and scoring included, with the
profile's `benchmark_report` settings; both models are the same checkpoint, loaded twice, as the fine-tuned and
the base model are loaded in a run.

    python benchmarks/benchmark_eval.py --questions 1000 --out $OUT/benchmark_eval.json            # on a GPU host
    python benchmarks/benchmark_eval.py --tiny --questions 6 --out /tmp/benchmark_eval_tiny.json   # CPU smoke run
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from random_model import DEFAULT_CONFIG, DEFAULT_RECORDS, build_random_checkpoint, llama32_instruct_tokenizer  # noqa: E402


def questions_from_records(records_path: Path, count: int) -> pd.DataFrame:
    """The records' own multiple-choice questions as benchmark rows, repeated to `count`."""
    from medcot_pipeline.data.benchmarks import to_frame

    rows = []
    for record in json.loads(Path(records_path).read_text()):
        options = record.get("options")
        options = ast.literal_eval(options) if isinstance(options, str) else options
        if options:
            rows.append({"question": record["question"], "options": options, "answer_idx": record["answer_idx"], "context": None})
    repeated = [dict(rows[i % len(rows)], id=f"q{i}") for i in range(count)]
    frame, _ = to_frame("medqa", repeated, str(records_path))
    return frame


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=1000)
    parser.add_argument("--profile", type=Path, default=REPO_ROOT / "profiles" / "h100.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a benchmark_report setting (YAML value)")
    parser.add_argument("--records", type=Path, default=DEFAULT_RECORDS)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--tiny", action="store_true", help="a two-layer random model on the CPU")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--model-dir", type=Path, help="the random checkpoint: built there if missing, reused if present")
    parser.add_argument("--out", type=Path, default=Path("benchmark_eval.json"))
    args = parser.parse_args(argv)

    import torch
    import yaml

    from medcot_pipeline.contracts import BenchmarkSource
    from medcot_pipeline.defs.stages import read_profile
    from medcot_pipeline.evaluation.benchmark_report import write_benchmark_report
    from medcot_pipeline.settings import BenchmarkEvaluationSettings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    log = logging.getLogger("benchmark_eval")
    profile = read_profile(args.profile)
    values = {**profile.ops.get("benchmark_report", {}), **{k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}}
    values["max_questions"] = None  # every question given
    if args.tiny:
        values.update(kv_cache="dynamic", attention="grouped_sdpa", max_new_tokens=8, batch_size=4)
    settings = BenchmarkEvaluationSettings(**values)

    work = args.work or Path(tempfile.mkdtemp(prefix="medcot-benchmark-eval-"))
    started = time.perf_counter()
    checkpoint = args.model_dir or work / "model"
    if not (checkpoint / "config.json").exists():
        build_random_checkpoint(args.config, llama32_instruct_tokenizer(), checkpoint, tiny=args.tiny)
    log.info(f"random checkpoint in {time.perf_counter() - started:.1f} s")
    questions = questions_from_records(args.records, args.questions)
    sources = [BenchmarkSource(name="medqa", title="medical-o1 records' MedQA-style questions (timing only)",
                               questions=len(questions), location=str(args.records))]
    report = write_benchmark_report(str(checkpoint), str(checkpoint), questions, sources, settings, work / "report", log=log)

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.machine()})"
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "device": device,
        "questions": report.questions,
        "models": len(report.models),
        "wall_seconds": round(report.wall_seconds, 1),
        "target_seconds": 240,
        "what": "benchmark_report's write_benchmark_report: both models loaded, compiled, answering every question to its "
                "token limit (random weights never stop early), option log-likelihood scored, answers read and compared",
        "weights": "random Llama-3.2-3B-Instruct shape" if not args.tiny else "random two-layer Llama (CPU smoke run)",
        "settings": settings.model_dump(),
        "generation": {label: totals.model_dump() for label, totals in report.generation.items()},
        "new_tokens_per_model": {label: totals.total_new_tokens for label, totals in report.generation.items()},
        "host": platform.node(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    log.info(f"{report.questions} questions x {len(report.models)} models in {report.wall_seconds:.1f} s on {device}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
