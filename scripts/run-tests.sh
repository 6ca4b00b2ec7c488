#!/usr/bin/env bash
# Install the project, lint and type-check the package, and run the test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
# Lint and type-check first (seconds): a finding fails the run before the suite's half hour.
bash scripts/check-code.sh
.venv/bin/python -m pytest "$@"
