#!/usr/bin/env bash
# Configures (once) and builds a CMake preset: release (default), debug or asan.
# Quiet when there is nothing to do; prints compiler output only on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
preset=${1:-release}
shift || true
dir=build/$preset
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if [[ ! -f $dir/build.ninja ]]; then
  if ! cmake --preset "$preset" -DVEIL_WERROR="${VEIL_WERROR:-OFF}" "$@" >"$log" 2>&1; then
    cat "$log" >&2; echo "error: build: configuring preset $preset failed" >&2; exit 1
  fi
fi
jobs=${VEIL_JOBS:-$(nproc)}
if ! cmake --build "$dir" -j "$jobs" >"$log" 2>&1; then
  grep -E -A12 'error|FAILED' "$log" | head -n 80 >&2 || cat "$log" >&2
  echo "error: build: preset $preset failed (full log: rerun 'cmake --build $dir')" >&2
  exit 1
fi
if ! grep -q "no work to do" "$log"; then echo "built $dir"; fi
