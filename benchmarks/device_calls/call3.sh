#!/usr/bin/env bash
# Call 3 (nvidia-h100-x4): generation speed (100 questions x 1,024 new tokens, batch 100) and rouge_report end to
# end through Dagster with the h100 profile (100 held-out questions, both models, random 3B weights from call 1).
set -u
source benchmarks/device_calls/env.sh
# Every job below has its own timeout inside the call's 600 s.
[ -d /tmp/rand3b ] || CUDA_VISIBLE_DEVICES=0 timeout 150 python3 benchmarks/train_throughput.py --config $D/llama-3.2-3b-instruct.config.json --build-model /tmp/rand3b > $R/build3.log 2>&1
cd benchmarks
G="python3 generation_throughput.py --config $D/llama-3.2-3b-instruct.config.json --records $D/huatuo_o1_demo.json --model-dir /tmp/rand3b --n-prompts 100 --max-new-tokens 1024 --batch-size 100 --repeats 1"
P="python3 pipeline_on_gpu.py --profile h100 --max-steps 2 --through rouge_report --questions 100 --model-dir /tmp/rand3b --config $D/llama-3.2-3b-instruct.config.json --records $D/huatuo_o1_demo.json"
(CUDA_VISIBLE_DEVICES=0 timeout 400 $G --variants static-grouped,static-triton --check-kernel --profile static-grouped --out $R/gen0/generation_throughput.json > $R/gen0.log 2>&1) &
(CUDA_VISIBLE_DEVICES=1 timeout 230 $G --variants static-grouped-nodefer --out $R/gen1/generation_throughput.json > $R/gen1.log 2>&1
 CUDA_VISIBLE_DEVICES=1 timeout 150 python3 attention_parity.py --config $D/llama-3.2-3b-instruct.config.json --records $D/huatuo_o1_demo.json --steps 32 --out $R/gen1/attention_parity.json > $R/parity.log 2>&1) &
(CUDA_VISIBLE_DEVICES=2 timeout 480 $P --out-dir $R/e2e_grouped > $R/e2e_grouped.log 2>&1) &
(CUDA_VISIBLE_DEVICES=3 timeout 480 $P --set rouge_report.attention=grouped_triton --out-dir $R/e2e_triton > $R/e2e_triton.log 2>&1) &
wait
cd ..
tail -n 6 $R/gen0.log $R/gen1.log $R/parity.log | cut -c1-400
tail -n 8 $R/e2e_grouped.log $R/e2e_triton.log | cut -c1-400
tar -C /tmp/gpu -czf $OUT/call3.tgz results/gen0 results/gen1 results/e2e_grouped results/e2e_triton results/gen0.log results/gen1.log results/parity.log results/e2e_grouped.log results/e2e_triton.log
