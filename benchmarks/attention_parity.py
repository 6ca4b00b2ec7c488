"""Are grouped_sdpa and grouped_triton as accurate as stock sdpa on the GPU, in bf16, at the benchmark's shape?

Random Llama-3.2-3B weights, 100 real questions left padded in one batch. Three chains decode from their own
prefill and KV cache, fed the same tokens step after step: a float32 copy of the model with stock sdpa (the
reference, whose greedy choice feeds the others), and the bf16 model with stock sdpa, with grouped_sdpa and (on
CUDA) with the grouped_triton decode kernel. Two bf16 kernels never agree bit for bit, so the question is whether
the grouped ones stray from the float32 reference more than stock sdpa does; the JSON gives every chain's error
and how often each picks the reference's token.

    python benchmarks/attention_parity.py --steps 32 --out attention_parity.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

from random_model import DEFAULT_CONFIG, DEFAULT_RECORDS, TINY_SHAPE, llama32_instruct_tokenizer, load_questions  # noqa: E402
from medcot_pipeline.evaluation import grouped_attention  # noqa: E402
from medcot_pipeline.evaluation.generation import encode_prompt  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--records", type=Path, default=DEFAULT_RECORDS)
    parser.add_argument("--n-prompts", type=int, default=100)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--tiny", action="store_true", help="two-layer float32 model on the CPU: a smoke run")
    parser.add_argument("--out", type=Path, default=Path("attention_parity.json"))
    args = parser.parse_args(argv)

    from transformers import AutoConfig, AutoModelForCausalLM

    device = "cpu" if args.tiny or not torch.cuda.is_available() else "cuda"
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    config = AutoConfig.from_pretrained(args.config)
    if args.tiny:
        config.update(TINY_SHAPE)
        args.n_prompts, args.steps = min(args.n_prompts, 4), min(args.steps, 4)
    grouped_attention.register()
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa").eval()
    reference = copy.deepcopy(model).float() if dtype != torch.float32 else model

    tokenizer = llama32_instruct_tokenizer()
    prompts = [encode_prompt(tokenizer, q, None)[0] for q in load_questions(args.records, args.n_prompts)]
    batch = tokenizer.pad({"input_ids": prompts}, padding_side="left", return_tensors="pt").to(device)
    mask = batch["attention_mask"]
    chains = {"reference": (reference, "sdpa"), "sdpa": (model, "sdpa"), grouped_attention.NAME: (model, grouped_attention.NAME)}
    if device == "cuda":
        from medcot_pipeline.evaluation import decode_attention

        chains[decode_attention.register()] = (model, decode_attention.NAME)

    def step(chain: str, ids, cache):
        net, attention = chains[chain]
        net.set_attn_implementation(attention)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1] :]
        output = net(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True, logits_to_keep=1)
        return output.logits[:, -1].float(), output.past_key_values

    errors = {name: [] for name in chains if name != "reference"}
    agree = {name: [] for name in errors}
    with torch.inference_mode():
        caches, prefill = {}, {}
        for name in chains:
            prefill[name], caches[name] = step(name, batch["input_ids"], None)
        token = prefill["reference"].argmax(-1, keepdim=True)
        for _ in range(args.steps):
            mask = torch.cat([mask, torch.ones_like(token)], dim=1)
            expected, caches["reference"] = step("reference", token, caches["reference"])
            for name in errors:
                logits, caches[name] = step(name, token, caches[name])
                errors[name].append((logits - expected).abs().max().item())
                agree[name].append((logits.argmax(-1) == expected.argmax(-1)).float().mean().item())
            token = expected.argmax(-1, keepdim=True)

    report = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "dtype": str(dtype),
        "prompts": len(prompts),
        "decode_steps": args.steps,
        "reference": "the same weights in float32 with stock sdpa",
        "logit_std": expected.std().item(),
        **{
            name: {
                "max_abs_logit_error": max(errors[name]),
                "mean_step_max_abs_logit_error": sum(errors[name]) / len(errors[name]),
                "same_next_token_share": sum(agree[name]) / len(agree[name]),
            }
            for name in errors
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
