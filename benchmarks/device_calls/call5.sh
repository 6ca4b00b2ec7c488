#!/usr/bin/env bash
# Call 5 (nvidia-h100-x1, the same H100 as call 4): training speed of the seed's baseline, t4 and h100 in one call
# on one H100.
set -u
source benchmarks/device_calls/env.sh
cd benchmarks
[ -d /tmp/rand3b ] || timeout 120 python3 train_throughput.py --config $D/llama-3.2-3b-instruct.config.json --build-model /tmp/rand3b > $R/build5.log 2>&1
timeout 560 python3 train_throughput.py --config $D/llama-3.2-3b-instruct.config.json --records $D/huatuo_o1_demo.json --model-dir /tmp/rand3b \
  --warmup 2 --steps 5 --variants baseline,t4,h100 --out $R/h100x1/train_throughput.json > $R/h100x1.log 2>&1
cd ..
tail -n 8 $R/h100x1.log | cut -c1-300
tar -C /tmp/gpu -czf $OUT/call5.tgz results/h100x1 results/h100x1.log
