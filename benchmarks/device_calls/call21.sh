#!/usr/bin/env bash
# Call 21 (nvidia-h100-x1): the cost of compiling the decode step. The grouped_triton kernel as an opaque operator
# under Inductor (as shipped after this call's change), the same kernel traced by Dynamo (as before), and the operator
# under Dynamo + CUDA graphs without Inductor (compile_backend: cudagraphs). Each variant in its own process on a
# fresh Inductor cache; the warm-up run is compilation plus one generation. First the kernel tests (interpreter).
set -u
source benchmarks/device_calls/env.sh
nvidia-smi --query-gpu=index,name,memory.total --format=csv > $R/gpus21.csv 2>&1
timeout 120 python3 -m pytest -q -p no:cacheprovider medcot_pipeline_tests/test_decode_attention.py > $R/tests21.log 2>&1; tail -n 3 $R/tests21.log
cd benchmarks
[ -d /tmp/rand3b ] || timeout 150 python3 train_throughput.py --config $D/llama-3.2-3b-instruct.config.json --build-model /tmp/rand3b > $R/build21.log 2>&1
G="--config $D/llama-3.2-3b-instruct.config.json --records $D/huatuo_o1_demo.json --model-dir /tmp/rand3b --n-prompts 100 --max-new-tokens 1024 --batch-size 100 --repeats 1"
n=0
for v in static-triton-cudagraphs static-triton static-triton-traced; do
  n=$((n+1))
  export TORCHINDUCTOR_CACHE_DIR=/tmp/gpu/inductor-cache-$n TRITON_CACHE_DIR=/tmp/gpu/triton-cache-$n
  start=$SECONDS; timeout 170 python3 generation_throughput.py $G --variants $v --out $R/gen21/run$n-$v.json > $R/gen21-run$n.log 2>&1; echo "process wall $((SECONDS-start)) s" >> $R/gen21-run$n.log
  echo "== run $n $v"; grep -h "run [01]\|process wall\|skipping cudagraphs" $R/gen21-run$n.log | cut -c1-300; tail -n 1 $R/gen21-run$n.log | cut -c1-300
done
cd ..
tar -C /tmp/gpu -czf $OUT/call21.tgz results/gen21 results/gen21-run1.log results/gen21-run2.log results/gen21-run3.log results/gpus21.csv results/tests21.log
