#!/usr/bin/env bash
# Call 14 (nvidia-h100-x1, the warm machine of calls 12-13): call 13's grading-on run alone, with time to finish.
set -u
source benchmarks/device_calls/env.sh
cd benchmarks
timeout 380 python3 pipeline_on_gpu.py --profile h100 --model-dir /tmp/rand3b --config $D/llama-3.2-3b-instruct.config.json \
  --records $D/huatuo_o1_demo.json --max-steps 17 --through lora_adapter --out-dir $R/grade14 > $R/grade14.log 2>&1
grep -h "step 17/17\|validation questions answered\|STEP_SUCCESS - Finished execution of step \"lora_adapter\"" $R/grade14.log | cut -c1-300
cp $R/grade14.log $OUT/
