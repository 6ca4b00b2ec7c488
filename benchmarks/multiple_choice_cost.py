"""Call 18: why multiple-choice scoring takes 16-31 s of rouge_report on one H100 (random 3B, 100 questions)."""
import ast, json, sys, time
sys.path.insert(0, "benchmarks")
import pandas as pd
import torch
from medcot_pipeline.evaluation.generation import load_for_inference
from medcot_pipeline.evaluation.multiple_choice import score_multiple_choice

records = json.load(open("/tmp/gpu/data/huatuo_o1_demo.json"))[:100]
rows = pd.DataFrame({
    "question": [r["question"] for r in records],
    "options": [json.dumps(ast.literal_eval(r["options"]) if isinstance(r["options"], str) else r["options"]) for r in records],
    "answer_idx": [r["answer_idx"] for r in records],
})
for attention in ("grouped_triton", "sdpa"):
    model, tok = load_for_inference("/tmp/rand3b", attention=attention)
    print("unsloth imported:", "unsloth" in sys.modules, model.dtype, model.config._attn_implementation, flush=True)
    for batch in (100, 16):
        torch.cuda.synchronize(); t = time.perf_counter()
        scores = score_multiple_choice(model, tok, rows, batch_size=batch)
        torch.cuda.synchronize()
        print(f"{attention} batch {batch}: {time.perf_counter() - t:.2f} s, n={scores.n}, acc={scores.accuracy}", flush=True)
    if attention == "grouped_triton":
        import cProfile, pstats
        prof = cProfile.Profile(); prof.enable()
        score_multiple_choice(model, tok, rows, batch_size=100); torch.cuda.synchronize()
        prof.disable(); pstats.Stats(prof).sort_stats("cumulative").print_stats(18)
    del model; torch.cuda.empty_cache()
