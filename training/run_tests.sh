#!/usr/bin/env bash
# Runs the training tests (generator, features, pipeline smoke test) with the pinned venv.
# Extra arguments go to pytest.
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/env.sh"
cd "$TRAINING_DIR"
if [ $# -eq 0 ]; then set -- tests; fi
exec "$PY" -m pytest -p no:cacheprovider -q -s "$@"
