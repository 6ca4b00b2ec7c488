#!/usr/bin/env bash
# Call 23 (nvidia-h100-x1): Inductor with transformers' compile config (static-triton) against the pipeline's
# (static-triton-pipeline: no pointwise autotuning), each in its own process on a fresh Inductor cache; and what
# importing the evaluation code costs on this host. (static-triton-pipeline was then removed from generation_throughput.py: it saved nothing.)
set -u
source benchmarks/device_calls/env.sh
nvidia-smi --query-gpu=index,name,memory.total --format=csv > $R/gpus23.csv 2>&1
python3 -X importtime -c "import medcot_pipeline.evaluation.report" 2> $R/importtime23.log
echo "== import medcot_pipeline.evaluation.report: cumulative us, the 8 largest"; sort -t'|' -k2 -n $R/importtime23.log | tail -n 8
s=$SECONDS; python3 -c "import torch"; echo "import torch alone: $((SECONDS-s)) s"
cd benchmarks
[ -d /tmp/rand3b ] || timeout 150 python3 train_throughput.py --config $D/llama-3.2-3b-instruct.config.json --build-model /tmp/rand3b > $R/build23.log 2>&1
G="--config $D/llama-3.2-3b-instruct.config.json --records $D/huatuo_o1_demo.json --model-dir /tmp/rand3b --n-prompts 100 --max-new-tokens 1024 --batch-size 100 --repeats 1"
n=0
for v in static-triton-pipeline static-triton; do
  n=$((n+1))
  export TORCHINDUCTOR_CACHE_DIR=/tmp/gpu/inductor-cache-23-$n TRITON_CACHE_DIR=/tmp/gpu/triton-cache-23-$n
  start=$SECONDS; timeout 170 python3 generation_throughput.py $G --variants $v --out $R/gen23/run$n-$v.json > $R/gen23-run$n.log 2>&1; echo "process wall $((SECONDS-start)) s" >> $R/gen23-run$n.log
  echo "== run $n $v"; grep -h "run [01]\|process wall" $R/gen23-run$n.log | cut -c1-300; tail -n 1 $R/gen23-run$n.log | cut -c1-300
done
cd ..
tar -C /tmp/gpu -czf $OUT/call23.tgz results/gen23 results/gen23-run1.log results/gen23-run2.log results/gpus23.csv results/importtime23.log
