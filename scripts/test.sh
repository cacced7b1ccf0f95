#!/usr/bin/env bash
# The README's second command: install what is missing, build Release, run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
if [[ -x tests/js/setup.sh ]]; then tests/js/setup.sh; fi
scripts/build.sh release
ctest --test-dir build/release --output-on-failure -j "${VEIL_JOBS:-$(nproc)}" --timeout 600 "$@"
