#!/usr/bin/env bash
# Call 1 (nvidia-h100-x4): training speed on one GPU (seed baseline, t4, h100 as shipped and one change at a time),
# varlen parity, a profiled step, and data-parallel scaling on 2 and 4 GPUs of the same machine.
# Ends within ~8.5 minutes; everything lands in $OUT/call1.tgz.
set -u
source benchmarks/device_calls/env.sh
DEADLINE=$(( $(date +%s) + 540 ))  # the call's limit is 600 s: leave time to pack the results
left() { echo $(( DEADLINE - $(date +%s) )); }
nvidia-smi --query-gpu=index,name,memory.total,clocks.max.sm --format=csv > $R/gpus.csv 2>&1
python3 -c 'import torch; print(torch.__version__, torch.cuda.device_count())' >> $R/gpus.csv 2>&1
cd benchmarks
CFG="--config $D/llama-3.2-3b-instruct.config.json --records $D/huatuo_o1_demo.json"
CUDA_VISIBLE_DEVICES=0 timeout 120 python3 train_throughput.py $CFG --build-model /tmp/rand3b > $R/build.log 2>&1
T="python3 train_throughput.py $CFG --model-dir /tmp/rand3b --warmup 2 --steps 5"
# Phase 1, one GPU each: the seed's baseline on GPU 0 and t4 on GPU 2 (each in its own process), h100 as shipped on
# GPU 1, the dropout-0 layouts on GPU 3 (varlen parity + a profiled step). When GPUs 0 and 2 are free, 2 data-parallel
# processes on them, while GPUs 1 and 3 finish.
(CUDA_VISIBLE_DEVICES=0 UNSLOTH_COMPILE_LOCATION=/tmp/ucc0 timeout 170 $T --variants baseline --out $R/g0/train_throughput.json > $R/g0.log 2>&1) &
A=$!
(CUDA_VISIBLE_DEVICES=2 UNSLOTH_COMPILE_LOCATION=/tmp/ucc2 timeout 190 $T --variants t4 --out $R/g2/train_throughput.json > $R/g2.log 2>&1) &
B=$!
(CUDA_VISIBLE_DEVICES=1 UNSLOTH_COMPILE_LOCATION=/tmp/ucc1 timeout 300 $T --variants h100-prev,h100-varlen --profile h100-prev --out $R/g1/train_throughput.json > $R/g1.log 2>&1) &
(CUDA_VISIBLE_DEVICES=3 UNSLOTH_COMPILE_LOCATION=/tmp/ucc3 timeout 330 $T --variants h100-nodrop,h100-nodrop-varlen,h100-nodrop-varlen-b32 --check-varlen --profile h100-nodrop-varlen --out $R/g3/train_throughput.json > $R/g3.log 2>&1) &
wait $A $B
CUDA_VISIBLE_DEVICES=0,2 UNSLOTH_COMPILE_LOCATION=/tmp/ucc02 timeout 170 $T --variants h100-nodrop-varlen --nproc 2 --out $R/ddp2/train_throughput.json > $R/ddp2.log 2>&1
wait
# Phase 2: 4 data-parallel processes, if there is time left.
[ $(left) -gt 100 ] && CUDA_VISIBLE_DEVICES=0,1,2,3 UNSLOTH_COMPILE_LOCATION=/tmp/ucc0123 timeout $(( $(left) < 200 ? $(left) : 200 )) $T --variants h100-nodrop-varlen --nproc 4 --out $R/ddp4/train_throughput.json > $R/ddp4.log 2>&1
cd ..
for f in $R/*/train_*.json; do python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[1].split('/')[-2], json.dumps({k: r.get(k) for k in ('variant','processes','tokens_per_second','tokens_per_second_per_gpu','peak_gpu_memory_gib','step_time_s','attention_routes','packing_isolation','varlen_parity','error')}))" $f; done
tail -n 3 $R/*.log | cut -c1-300
tar -C /tmp/gpu -czf $OUT/call1.tgz results
