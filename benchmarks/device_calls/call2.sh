#!/usr/bin/env bash
# Call 2 (nvidia-h100-x4): the quality sweep, SmolLM2-135M-Instruct real weights through Dagster, 16 settings,
# 4 at a time on each of the 4 GPUs. Everything lands in $OUT/call2.tgz (and quality_on_gpu.json beside it).
set -u
source benchmarks/device_calls/env.sh
timeout 540 python3 benchmarks/quality_on_gpu.py --records $D/huatuo_o1_demo.json --gpus 0,1,2,3 --per-gpu 4 --timeout 500 \
  --work /tmp/gpu/quality ${QUALITY_EXTRA:-} --out $R/quality/quality_on_gpu.json > $R/quality.log 2>&1
tail -n 40 $R/quality.log | cut -c1-400
mkdir -p $R/quality/logs && for d in /tmp/gpu/quality/*/; do n=$(basename $d); [ -f $d/log.txt ] && tail -c 20000 $d/log.txt > $R/quality/logs/$n.log; done
cp $R/quality/quality_on_gpu.json $OUT/ 2>/dev/null
tar -C /tmp/gpu -czf $OUT/call2.tgz results/quality results/quality.log
