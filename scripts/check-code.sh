#!/usr/bin/env bash
# Lint and type-check the package, as configured in pyproject.toml ([tool.ruff], [tool.mypy]): ruff's rules
# (pyflakes, pycodestyle, import order, bugbear, pyupgrade at Python 3.10), its formatting, then mypy with the
# pydantic plugin. scripts/run-tests.sh (and so CI) runs this before the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
"$BIN/ruff" check medcot_pipeline
"$BIN/ruff" format --check medcot_pipeline
"$BIN/mypy"
