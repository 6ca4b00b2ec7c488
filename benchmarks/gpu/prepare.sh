#!/usr/bin/env bash
# On this machine, before a GPU call: put into .gpu/ what a bare GPU host lacks (see benchmarks/gpu/run.sh).
#   bash benchmarks/gpu/prepare.sh            # .gpu/site.tar.xz, the 3B config, the real records
#   bash benchmarks/gpu/prepare.sh --smollm2  # also .gpu-model-a/ and .gpu-model-b/: SmolLM2's real weights in two parts
# The packages come from ../shared/gpu/build-site.sh (Unsloth, TRL 1.15, bitsandbytes, Dagster, ...) plus the
# ones medcot needs beyond them: gguf (the embedded model) and rapidfuzz (ROUGE-L). Nothing here is committed.
set -euo pipefail
cd "$(dirname "$0")/../.."
shared=${MEDCOT_SHARED:-../shared}
for ignored in /.gpu/ /.gpu-model-a/ /.gpu-model-b/; do
  grep -qxF "$ignored" .git/info/exclude 2>/dev/null || echo "$ignored" >> .git/info/exclude
done
mkdir -p .gpu
[ -f .gpu/site.tar.xz ] || bash "$shared/gpu/build-site.sh" gguf rapidfuzz
cp "$shared/gpu/llama-3.2-3b-instruct.config.json" "$shared/data/huatuo_o1_demo.json" .gpu/
if [ "${1:-}" = "--smollm2" ]; then
  bash "$shared/gpu/split-embedded-model.sh"
fi
du -sh .gpu $(ls -d .gpu-model-* 2>/dev/null)
