#!/usr/bin/env bash
# Call 6 (nvidia-h100-x1, the machine of calls 4 and 5 still warm): the h100 profile again beside the baseline, over
# more steps, and with 32 rows per step instead of 24.
set -u
source benchmarks/device_calls/env.sh
cd benchmarks
[ -d /tmp/rand3b ] || timeout 120 python3 train_throughput.py --config $D/llama-3.2-3b-instruct.config.json --build-model /tmp/rand3b > $R/build6.log 2>&1
timeout 540 python3 train_throughput.py --config $D/llama-3.2-3b-instruct.config.json --records $D/huatuo_o1_demo.json --model-dir /tmp/rand3b \
  --warmup 2 --steps 10 --variants baseline,h100,h100-b32 --out $R/h100x1b/train_throughput.json > $R/h100x1b.log 2>&1
cd ..
tail -n 6 $R/h100x1b.log | cut -c1-300
tar -C /tmp/gpu -czf $OUT/call6.tgz results/h100x1b results/h100x1b.log
