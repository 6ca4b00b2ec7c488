"""Shared fixtures: real libraries on small real inputs, all offline."""

import os
from pathlib import Path

import pytest

# PostgreSQL, SeaweedFS S3 and a Ray cluster on loopback, for the scale-out tests (started only when asked for).
pytest_plugins = ("medcot_pipeline_tests.scale_out_services",)

# Nothing here may reach the Hub; fail fast instead of retrying DNS for a minute.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_RECORDS = REPO_ROOT.parent / "shared" / "data" / "huatuo_o1_demo.json"


@pytest.fixture(scope="session")
def real_records_path() -> Path:
    """198 real medical-o1 records, read from ../shared (never copied into the repo)."""
    if not SHARED_RECORDS.exists():
        pytest.skip(f"{SHARED_RECORDS} is not present")
    return SHARED_RECORDS


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    """Converted base models, shared by the whole session (the GGUF conversion takes ~30 s)."""
    cached = os.environ.get("MEDCOT_TEST_MODEL_CACHE")
    return Path(cached) if cached else tmp_path_factory.mktemp("base_models")


@pytest.fixture(scope="session")
def smollm2_dir(model_cache) -> Path:
    """SmolLM2-135M-Instruct (real weights) as a plain safetensors checkpoint."""
    from medcot_pipeline.base_models import EMBEDDED_SMOLLM2, resolve_base_model

    return Path(resolve_base_model(EMBEDDED_SMOLLM2, model_cache))


@pytest.fixture(scope="session")
def tiny_llama_dir(smollm2_dir, tmp_path_factory) -> Path:
    """A randomly initialised two-layer Llama with SmolLM2's tokenizer and chat template."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from medcot_pipeline.base_models import load_tokenizer

    tokenizer = load_tokenizer(str(smollm2_dir))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    out = tmp_path_factory.mktemp("tiny_llama")
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    # A model card, as a Hub checkpoint has: a release of a model trained from it reads its license here.
    (out / "README.md").write_text("---\nlicense: apache-2.0\n---\n\n# tiny Llama\n\nRandom weights, SmolLM2's tokenizer.\n")
    return out
