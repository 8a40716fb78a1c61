#!/usr/bin/env bash
# The test command: set up the environment (idempotent), lint, then run the whole pytest suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"`.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "${REPO_ROOT}/scripts/setup_env.sh"
cd "${REPO_ROOT}"
# DeepSpeed compiles its C++ ops once per machine and caches them here.
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-${HOME}/.cache/torch_extensions}"
export MPLBACKEND=Agg
python -m ruff check .  # lint first (pyproject.toml [tool.ruff]); a finding fails the run
python -m pytest "$@"
