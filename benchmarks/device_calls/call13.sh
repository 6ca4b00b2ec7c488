#!/usr/bin/env bash
# Call 13 (nvidia-h100-x1, the machine of call 12): random Llama-3.2-3B weights sized to the tokenizer. What grading
# during training costs in lora_adapter (h100 profile, 17 steps, one graded evaluation of 16 questions x 1,024
# tokens, the worst case: random weights never stop early) against grade_questions 0; then rouge_report end to end
# (100 questions, both models) now that both models share one vocabulary size and so one compiled graph.
set -u
source benchmarks/device_calls/env.sh
DEADLINE=$(( $(date +%s) + 570 ))
left() { echo $(( DEADLINE - $(date +%s) )); }
nvidia-smi --query-gpu=index,name,memory.total --format=csv > $R/gpus13.csv 2>&1
cd benchmarks
[ -d /tmp/rand3b ] || timeout 150 python3 train_throughput.py --config $D/llama-3.2-3b-instruct.config.json --build-model /tmp/rand3b > $R/build13.log 2>&1
COMMON="--profile h100 --model-dir /tmp/rand3b --config $D/llama-3.2-3b-instruct.config.json --records $D/huatuo_o1_demo.json"
timeout 130 python3 pipeline_on_gpu.py $COMMON --max-steps 17 --through lora_adapter --out-dir $R/grade13-on > $R/grade13-on.log 2>&1
timeout 110 python3 pipeline_on_gpu.py $COMMON --max-steps 17 --through lora_adapter --set lora_adapter.grade_questions=0 --out-dir $R/grade13-off > $R/grade13-off.log 2>&1
timeout $(( $(left) - 10 )) python3 pipeline_on_gpu.py $COMMON --max-steps 2 --through rouge_report --questions 100 \
  --set lora_adapter.grade_questions=0 --out-dir $R/e2e13 > $R/e2e13.log 2>&1
cd ..
for f in grade13-on grade13-off e2e13; do echo "== $f"; grep -h "validation questions answered\|Finished execution of step \"lora_adapter\"\|compiled graph\|as a model of its own\|generated tokens/s\|Finished execution of step \"rouge_report\"" $R/$f.log | cut -c1-300; tail -n 3 $R/$f.log | cut -c1-300; done
tar -C /tmp/gpu -czf $OUT/call13.tgz results/grade13-on results/grade13-off results/e2e13 results/grade13-on.log results/grade13-off.log results/e2e13.log results/gpus13.csv results/build13.log
