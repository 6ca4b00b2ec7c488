#!/usr/bin/env bash
# Call 4 (nvidia-h100-x1, one H100): generation with grouped_sdpa and the fixed grouped_triton kernel, then
# rouge_report end to end through Dagster with the faster of the two (h100 profile, 100 held-out questions).
set -u
source benchmarks/device_calls/env.sh
DEADLINE=$(( $(date +%s) + 560 ))
left() { echo $(( DEADLINE - $(date +%s) )); }
nvidia-smi --query-gpu=index,name,memory.total --format=csv > $R/gpus4.csv 2>&1
cd benchmarks
[ -d /tmp/rand3b ] || timeout 120 python3 train_throughput.py --config $D/llama-3.2-3b-instruct.config.json --build-model /tmp/rand3b > $R/build4.log 2>&1
timeout 210 python3 generation_throughput.py --config $D/llama-3.2-3b-instruct.config.json --records $D/huatuo_o1_demo.json \
  --model-dir /tmp/rand3b --n-prompts 100 --max-new-tokens 1024 --batch-size 100 --repeats 1 --variants static-grouped,static-triton \
  --check-kernel --out $R/gen4/generation_throughput.json > $R/gen4.log 2>&1
ATT=$(python3 -c "import json; v={r['variant']: r.get('tokens_per_second') or 0 for r in json.load(open('$R/gen4/generation_throughput.json'))['variants']}; print('grouped_triton' if v.get('static-triton', 0) > v.get('static-grouped', 0) else 'grouped_sdpa')" 2>/dev/null || echo grouped_sdpa)
echo "rouge_report attention: $ATT" | tee $R/e2e4_attention.txt
timeout $(( $(left) - 15 )) python3 pipeline_on_gpu.py --profile h100 --max-steps 2 --through rouge_report --questions 100 --model-dir /tmp/rand3b \
  --config $D/llama-3.2-3b-instruct.config.json --records $D/huatuo_o1_demo.json --set rouge_report.attention=$ATT --out-dir $R/e2e4 > $R/e2e4.log 2>&1
cd ..
tail -n 4 $R/gen4.log | cut -c1-400
grep -h "compiled graph\|as a model of its own\|generated tokens/s\|Finished execution of step \"rouge_report\"" $R/e2e4.log | cut -c1-300
tail -n 6 $R/e2e4.log | cut -c1-400
tar -C /tmp/gpu -czf $OUT/call4.tgz results/gen4 results/e2e4 results/gen4.log results/e2e4.log results/gpus4.csv results/e2e4_attention.txt
