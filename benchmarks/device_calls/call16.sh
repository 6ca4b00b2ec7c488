#!/usr/bin/env bash
# Calls 16 and 17 (nvidia-h100-x1, one warm machine): rouge_report end to end through Dagster, h100 profile, 100
# held-out questions, both models, random Llama-3.2-3B weights sized to the tokenizer (so the base reuses the
# fine-tuned model's compiled graph). Call 16 (`cold`) on a fresh Inductor cache; call 17 (`warm`) the same run
# again on that host, its Inductor and Triton caches filled by call 16, as a host's second scheduled run finds them.
# Calls 19 (`cold-parallel-rouge`) and 20 (`warm-parallel-rouge`): the same two after ROUGE-L went to one process per core.
# Call 22 (`cold-call22`): after ROUGE-L went to rapidfuzz and the decode kernel became an opaque operator. Calls 24
# (`cold-call24`), 25 (`cold-call25`), 26 (`warm-call26`) and 27 (`cold-call27-fresh-machine`, the first call of a newly
# started machine): after torch and the scorer were also preloaded by the step server.
set -u
LABEL=${1:?cold or warm (cold* clears the caches)}
source benchmarks/device_calls/env.sh
export TORCHINDUCTOR_CACHE_DIR=/tmp/gpu-inductor-cache TRITON_CACHE_DIR=/tmp/gpu-triton-cache
case $LABEL in cold*) rm -rf $TORCHINDUCTOR_CACHE_DIR $TRITON_CACHE_DIR;; esac
nvidia-smi --query-gpu=index,name,memory.total --format=csv > $R/gpus-$LABEL.csv 2>&1
cd benchmarks
[ -d /tmp/rand3b ] || timeout 150 python3 train_throughput.py --config $D/llama-3.2-3b-instruct.config.json --build-model /tmp/rand3b > $R/build16.log 2>&1
timeout 520 python3 pipeline_on_gpu.py --profile h100 --model-dir /tmp/rand3b --config $D/llama-3.2-3b-instruct.config.json \
  --records $D/huatuo_o1_demo.json --max-steps 2 --through rouge_report --questions 100 --set lora_adapter.grade_questions=0 \
  --out-dir $R/e2e-$LABEL > $R/e2e-$LABEL.log 2>&1
cd ..
grep -h "rouge_report - \(fine_tuned\|base\)\|compiled graph\|as a model of its own\|Finished execution of step \"\(lora_adapter\|merged_model\|rouge_report\)\"" $R/e2e-$LABEL.log | cut -c1-300
tail -n 2 $R/e2e-$LABEL.log | cut -c1-400
tar -C /tmp/gpu -czf $OUT/e2e-$LABEL.tgz results/e2e-$LABEL results/e2e-$LABEL.log results/gpus-$LABEL.csv
