#!/usr/bin/env bash
# Call 8 (the nvidia-h100-x2 machine of call 7, still warm): the h100 profile on one GPU again, on GPU 0 with
# OMP_NUM_THREADS=1 (as torchrun sets for its ranks) and on GPU 1, one after the other.
set -u
source benchmarks/device_calls/env.sh
cd benchmarks
CFG="--config $D/llama-3.2-3b-instruct.config.json --records $D/huatuo_o1_demo.json"
T="python3 train_throughput.py $CFG --model-dir /tmp/rand3b --warmup 2 --steps 10 --variants h100"
CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=1 timeout 170 $T --out $R/x2omp1/train_throughput.json > $R/x2omp1.log 2>&1
CUDA_VISIBLE_DEVICES=1 timeout 170 $T --out $R/x2g1b/train_throughput.json > $R/x2g1b.log 2>&1
cd ..
tar -C /tmp/gpu -czf $OUT/call8.tgz results/x2omp1 results/x2g1b results/x2omp1.log results/x2g1b.log
