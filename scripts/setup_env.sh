#!/usr/bin/env bash
# Install what the project needs, idempotently: into the active virtual environment, or else
# into a project-local .venv (created on first use). `source` it to keep the environment active.
#
# torch: an existing install is kept. Otherwise TORCH_SPEC is installed first
# (default torch==2.13.0: on CPU machines of our CI this resolves to a CPU build; on a GPU
# machine set TORCH_SPEC to the CUDA build you want, e.g. TORCH_SPEC="torch==2.13.0").
#
#   bash scripts/setup_env.sh eval   # instead: .venv-eval, vLLM's own environment for
#                                    # analysis/evaluate_benchmarks.py --backend vllm (requirements-eval.txt)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"

if [[ "${1:-}" == eval ]]; then  # vLLM pins other torch/transformers versions than training
    EVAL_VENV="${REPO_ROOT}/.venv-eval"
    [[ -x "${EVAL_VENV}/bin/python" ]] || "${PYTHON}" -m venv "${EVAL_VENV}"
    "${EVAL_VENV}/bin/python" -m pip install --quiet --upgrade pip
    "${EVAL_VENV}/bin/python" -m pip install --quiet -r "${REPO_ROOT}/requirements-eval.txt"
    "${EVAL_VENV}/bin/python" -m pip install --quiet --no-deps -e "${REPO_ROOT}"
    echo "evaluation environment ready: ${EVAL_VENV} (run: ${EVAL_VENV}/bin/python analysis/evaluate_benchmarks.py --backend vllm ...)"
    return 0 2>/dev/null || exit 0
fi

if [[ -z "${VIRTUAL_ENV:-}" ]]; then
    if [[ ! -x "${REPO_ROOT}/.venv/bin/python" ]]; then
        echo "creating virtual environment ${REPO_ROOT}/.venv"
        "${PYTHON}" -m venv "${REPO_ROOT}/.venv"
    fi
    # shellcheck disable=SC1091
    source "${REPO_ROOT}/.venv/bin/activate"
fi

stamp="${VIRTUAL_ENV}/.fwdrev-requirements.sha256"
wanted="$(cat "${REPO_ROOT}/requirements.txt" "${REPO_ROOT}/constraints.txt" "${REPO_ROOT}/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [[ -f "${stamp}" && "$(cat "${stamp}")" == "${wanted}" ]] && python -c "import fwdrev, torch" 2>/dev/null; then
    echo "environment up to date: ${VIRTUAL_ENV}"
else
    python -m pip install --quiet --upgrade pip
    if ! python -c "import torch" 2>/dev/null; then
        python -m pip install --quiet "${TORCH_SPEC:-torch==2.13.0}"
    fi
    # constraints.txt: the exact versions CI tests (requirements.txt only bounds them)
    (cd "${REPO_ROOT}" && python -m pip install --quiet -r requirements.txt -c constraints.txt)
    echo "${wanted}" > "${stamp}"
    echo "environment ready: ${VIRTUAL_ENV}"
fi
