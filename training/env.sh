#!/usr/bin/env bash
# Sourced by run.sh and run_tests.sh: makes sure the pinned virtualenv exists and sets $PY.
# The venv lives in $VIGIL_VENV (default ~/.cache/vigil/venv); it needs Python >= 3.12.
VIGIL_VENV="${VIGIL_VENV:-$HOME/.cache/vigil/venv}"
TRAINING_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

_vigil_find_python() {
    local c
    for c in "${VIGIL_PYTHON:-}" python3.12 python3.13 python3 \
        "$HOME"/.pyenv/versions/3.12*/bin/python3 "$HOME"/.pyenv/versions/3.13*/bin/python3; do
        [ -n "$c" ] || continue
        if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; then
            command -v "$c"
            return 0
        fi
    done
    return 1
}

if ! "$VIGIL_VENV/bin/python" -c 'import torch, onnx, onnxruntime, matplotlib, scipy, PIL, pytest' >/dev/null 2>&1; then
    if [ ! -x "$VIGIL_VENV/bin/python" ]; then
        base="$(_vigil_find_python)" || { echo "error: Python >= 3.12 not found (set VIGIL_PYTHON)" >&2; exit 1; }
        echo "== creating virtualenv $VIGIL_VENV with $base"
        "$base" -m venv "$VIGIL_VENV"
    fi
    echo "== installing $TRAINING_DIR/requirements.txt into $VIGIL_VENV"
    "$VIGIL_VENV/bin/python" -m pip install --quiet -r "$TRAINING_DIR/requirements.txt"
fi
PY="$VIGIL_VENV/bin/python"
export PYTHONPATH="$TRAINING_DIR${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
# Fixed thread counts: reproducible numbers, and a fair share of a small machine.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
export MKL_NUM_THREADS="${MKL_NUM_THREADS:-2}"
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}"
# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning threads
# fight the other processes and training gets several times slower.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
