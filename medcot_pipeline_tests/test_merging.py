"""Merging: the merged checkpoint computes what base + adapter computed, and a full disk is caught first."""

import shutil
from collections import namedtuple

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from medcot_pipeline import merging
from medcot_pipeline.artifact_io import files_sha256


@pytest.fixture(scope="module")
def adapter_dir(tiny_llama_dir, tmp_path_factory):
    """A LoRA adapter whose B matrices are random, so merging changes the weights."""
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    model = get_peft_model(base, lora)
    out = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(out)
    shutil.copy(tiny_llama_dir / "tokenizer.json", out)
    shutil.copy(tiny_llama_dir / "tokenizer_config.json", out)
    return out


def logits(model, input_ids):
    with torch.no_grad():
        return model(input_ids=input_ids).logits


def test_merged_model_reproduces_the_adapter_logits(tiny_llama_dir, adapter_dir, tmp_path):
    info = merging.merge_adapter(str(tiny_llama_dir), adapter_dir, tmp_path / "merged", dtype="float32")

    merged_dir = tmp_path / "merged"
    assert info["path"] == str(merged_dir) and info["dtype"] == "float32"
    assert (merged_dir / "model.safetensors").is_file() and (merged_dir / "tokenizer.json").is_file()
    assert not list(merged_dir.glob("adapter_*"))
    assert info["size_bytes"] == (merged_dir / "model.safetensors").stat().st_size
    assert info["sha256"] == files_sha256([merged_dir / "model.safetensors"])
    assert [p.name for p in tmp_path.iterdir()] == ["merged"]  # staging renamed away

    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    assert info["parameters"] == base.num_parameters()
    input_ids = torch.randint(0, base.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    base_logits = logits(base, input_ids)
    adapted = logits(PeftModel.from_pretrained(base, adapter_dir), input_ids)
    merged = logits(AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32), input_ids)

    assert not torch.allclose(adapted, base_logits, atol=1e-3)  # the adapter does change the model
    torch.testing.assert_close(merged, adapted, atol=1e-4, rtol=1e-4)


def test_bfloat16_merge_writes_16_bit_weights(tiny_llama_dir, adapter_dir, tmp_path):
    info = merging.merge_adapter(str(tiny_llama_dir), adapter_dir, tmp_path / "merged")

    assert info["dtype"] == "bfloat16"
    assert info["size_bytes"] < info["parameters"] * 2 + 1_000_000  # two bytes a weight, plus the header
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert reloaded.model.embed_tokens.weight.dtype == torch.bfloat16


def test_too_little_disk_fails_before_writing(tiny_llama_dir, adapter_dir, tmp_path, monkeypatch):
    with pytest.raises(merging.MergeError, match=r"needs about [\d.]+ GiB, [\d.]+ GiB free"):
        merging.check_free_space(tmp_path, 2**60)

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(merging.shutil, "disk_usage", lambda path: usage(2**40, 2**40 - 2**20, 2**20))
    with pytest.raises(merging.MergeError, match=r"needs about 0\.\d+ GiB, 0\.00 GiB free"):
        merging.merge_adapter(str(tiny_llama_dir), adapter_dir, tmp_path / "merged")
    assert list(tmp_path.iterdir()) == []


def test_a_bnb_4bit_base_is_merged_into_its_16_bit_original(tiny_llama_dir, tmp_path):
    import json

    quantized = tmp_path / "Tiny-Instruct-bnb-4bit"
    shutil.copytree(tiny_llama_dir, quantized)
    config = json.loads((quantized / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (quantized / "config.json").write_text(json.dumps(config))

    assert merging.sixteen_bit_source(str(quantized)) == str(tmp_path / "Tiny-Instruct")
    assert merging.sixteen_bit_source(str(tiny_llama_dir)) == str(tiny_llama_dir)
    config["quantization_config"] = {"quant_method": "gptq"}
    (quantized / "config.json").write_text(json.dumps(config))
    with pytest.raises(merging.MergeError, match="gptq-quantized weights"):
        merging.sixteen_bit_source(str(quantized))


def test_an_adapter_saved_with_a_grown_vocabulary_merges(tiny_llama_dir, tmp_path):
    """Unsloth grows the embeddings when the tokenizer has more tokens than the model; PEFT then saves them."""
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    vocab = base.config.vocab_size
    base.resize_token_embeddings(vocab + 1)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
    adapter = tmp_path / "adapter"
    with pytest.warns(UserWarning, match="save_embedding_layers"):
        model.save_pretrained(adapter)
    shutil.copy(tiny_llama_dir / "tokenizer.json", adapter)
    shutil.copy(tiny_llama_dir / "tokenizer_config.json", adapter)
    assert merging.adapter_vocab_rows(adapter) == vocab + 1

    merging.merge_adapter(str(tiny_llama_dir), adapter, tmp_path / "merged", dtype="float32")

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    assert merged.config.vocab_size == vocab + 1
    input_ids = torch.randint(0, vocab + 1, (1, 16), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(logits(merged, input_ids), logits(model, input_ids), atol=1e-4, rtol=1e-4)
