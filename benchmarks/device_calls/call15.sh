#!/usr/bin/env bash
# Call 15 (nvidia-h100-x1): where rouge_report's first minute goes. The decode step of the grouped_triton path
# compiled by Inductor (the profiles' way), captured by Dynamo as CUDA graphs without Inductor, and compiled by
# Inductor again in a fresh process (its on-disk cache warm, as on a host's second run). Each in its own process;
# the warm-up run's wall time is compilation plus one full generation.
# (static-triton-cudagraphs failed in this call, see results/generation_compile_cache_h100_call15.json, and was then
# removed from generation_throughput.py.)
set -u
source benchmarks/device_calls/env.sh
nvidia-smi --query-gpu=index,name,memory.total --format=csv > $R/gpus15.csv 2>&1
cd benchmarks
[ -d /tmp/rand3b ] || timeout 150 python3 train_throughput.py --config $D/llama-3.2-3b-instruct.config.json --build-model /tmp/rand3b > $R/build15.log 2>&1
export TORCHINDUCTOR_CACHE_DIR=/tmp/gpu/inductor-cache
rm -rf $TORCHINDUCTOR_CACHE_DIR
G="--config $D/llama-3.2-3b-instruct.config.json --records $D/huatuo_o1_demo.json --model-dir /tmp/rand3b --n-prompts 100 --max-new-tokens 1024 --batch-size 100 --repeats 1"
n=0
for v in static-triton static-triton-cudagraphs static-triton; do
  n=$((n+1))
  timeout 170 python3 generation_throughput.py $G --variants $v --out $R/gen15/run$n-$v.json > $R/gen15-run$n.log 2>&1
  echo "== run $n $v (cache $(du -sh $TORCHINDUCTOR_CACHE_DIR 2>/dev/null | cut -f1))"; grep -h "run [01]" $R/gen15-run$n.log | cut -c1-300; tail -n 2 $R/gen15-run$n.log | cut -c1-300
done
cd ..
tar -C /tmp/gpu -czf $OUT/call15.tgz results/gen15 results/gen15-run1.log results/gen15-run2.log results/gen15-run3.log results/gpus15.csv
