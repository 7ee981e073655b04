#!/usr/bin/env bash
# The test suite: bootstraps .venv with the dev requirements, lints, and runs pytest on the CPU.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k loader -x`.
source "$(dirname "${BASH_SOURCE[0]}")/_bootstrap.sh"
ensure_venv requirements-dev.txt
cd "$REPO_ROOT"
"$PYTHON" -m ruff check .
CUDA_VISIBLE_DEVICES="" "$PYTHON" -m pytest "$@"
