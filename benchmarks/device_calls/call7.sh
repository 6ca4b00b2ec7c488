#!/usr/bin/env bash
# Call 7 (nvidia-h100-x2): data-parallel scaling of the h100 profile (24 rows per GPU) against one GPU of the same
# machine, one after the other in one call, 10 measured steps each.
set -u
source benchmarks/device_calls/env.sh
nvidia-smi --query-gpu=index,name,memory.total --format=csv > $R/gpus7.csv 2>&1
cd benchmarks
CFG="--config $D/llama-3.2-3b-instruct.config.json --records $D/huatuo_o1_demo.json"
[ -d /tmp/rand3b ] || CUDA_VISIBLE_DEVICES=0 timeout 120 python3 train_throughput.py $CFG --build-model /tmp/rand3b > $R/build7.log 2>&1
T="python3 train_throughput.py $CFG --model-dir /tmp/rand3b --warmup 2 --steps 10 --variants h100"
CUDA_VISIBLE_DEVICES=0 timeout 200 $T --out $R/x2g1/train_throughput.json > $R/x2g1.log 2>&1
CUDA_VISIBLE_DEVICES=0,1 timeout 240 $T --nproc 2 --out $R/x2g2/train_throughput.json > $R/x2g2.log 2>&1
cd ..
cat $R/gpus7.csv; tail -n 3 $R/x2g1.log | cut -c1-300; tail -n 3 $R/x2g2.log | cut -c1-300
tar -C /tmp/gpu -czf $OUT/call7.tgz results/x2g1 results/x2g2 results/x2g1.log results/x2g2.log results/gpus7.csv
