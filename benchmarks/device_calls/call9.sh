#!/usr/bin/env bash
# Call 9 (the same nvidia-h100-x2 machine, still warm): the training table in one call, each run on its own GPU:
# the seed's baseline on GPU 0 while h100 and then t4 run on GPU 1. 10 measured steps each.
set -u
source benchmarks/device_calls/env.sh
cd benchmarks
CFG="--config $D/llama-3.2-3b-instruct.config.json --records $D/huatuo_o1_demo.json"
T="python3 train_throughput.py $CFG --model-dir /tmp/rand3b --warmup 2 --steps 10"
(CUDA_VISIBLE_DEVICES=0 UNSLOTH_COMPILE_LOCATION=/tmp/ucc0 timeout 290 $T --variants baseline --out $R/x2base/train_throughput.json > $R/x2base.log 2>&1) &
(CUDA_VISIBLE_DEVICES=1 timeout 140 $T --variants h100 --out $R/x2h100/train_throughput.json > $R/x2h100.log 2>&1
 CUDA_VISIBLE_DEVICES=1 timeout 150 $T --variants t4 --out $R/x2t4/train_throughput.json > $R/x2t4.log 2>&1)
wait
cd ..
tar -C /tmp/gpu -czf $OUT/call9.tgz results/x2base results/x2h100 results/x2t4 results/x2base.log results/x2h100.log results/x2t4.log
