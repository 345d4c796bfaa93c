#!/usr/bin/env bash
# Builds the scratch detector end to end, from a fixed seed:
#   generate -> train -> export (ONNX) -> evaluate -> model card, reference, plots, samples.
# Writes models/scratch-detector/1/ and samples/. Extra arguments go to the pipeline
# (e.g. --seed N, --epochs N, --no-gate); see `python -m vigil_train.pipeline --help`.
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/env.sh"
ROOT="$(cd "$TRAINING_DIR/.." && pwd)"
cd "$TRAINING_DIR"
exec "$PY" -m vigil_train.pipeline \
    --out "$ROOT/models/scratch-detector/1" \
    --samples "$ROOT/samples" \
    "$@"
