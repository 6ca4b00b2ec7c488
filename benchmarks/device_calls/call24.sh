#!/usr/bin/env bash
# Call 24 (nvidia-h100-x1): rouge_report end to end, cold, after call 22 plus torch preloaded in the step server and the decode compiled without pointwise autotuning.
set -u
LABEL=${1:?cold or warm (cold* clears the caches)}
source benchmarks/device_calls/env.sh
export TORCHINDUCTOR_CACHE_DIR=/tmp/gpu-inductor-cache TRITON_CACHE_DIR=/tmp/gpu-triton-cache
case $LABEL in cold*) rm -rf $TORCHINDUCTOR_CACHE_DIR $TRITON_CACHE_DIR;; esac
nvidia-smi --query-gpu=index,name,memory.total --format=csv > $R/gpus-$LABEL.csv 2>&1
cd benchmarks
[ -d /tmp/rand3b ] || timeout 150 python3 train_throughput.py --config $D/llama-3.2-3b-instruct.config.json --build-model /tmp/rand3b > $R/build24.log 2>&1
timeout 520 python3 pipeline_on_gpu.py --profile h100 --model-dir /tmp/rand3b --config $D/llama-3.2-3b-instruct.config.json \
  --records $D/huatuo_o1_demo.json --max-steps 2 --through rouge_report --questions 100 --set lora_adapter.grade_questions=0 \
  --out-dir $R/e2e-$LABEL > $R/e2e-$LABEL.log 2>&1
cd ..
grep -h "rouge_report - \(fine_tuned\|base\)\|compiled graph\|as a model of its own\|Finished execution of step \"\(lora_adapter\|merged_model\|rouge_report\)\"" $R/e2e-$LABEL.log | cut -c1-300
tail -n 2 $R/e2e-$LABEL.log | cut -c1-400
tar -C /tmp/gpu -czf $OUT/e2e-$LABEL.tgz results/e2e-$LABEL results/e2e-$LABEL.log results/gpus-$LABEL.csv
