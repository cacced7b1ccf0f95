#!/usr/bin/env bash
# Runs every libFuzzer target found in a build directory for a short time (default 20 s each),
# starting from its seed corpus in fuzz/corpus/<name>/. Fails if any target crashes.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-build/asan}
seconds=${FUZZ_SECONDS:-20}
shopt -s nullglob
targets=("$dir"/fuzz/veil_fuzz_*)
if [[ ${#targets[@]} -eq 0 ]]; then echo "fuzz-smoke: no fuzz targets in $dir/fuzz"; exit 0; fi
status=0
for t in "${targets[@]}"; do
  name=$(basename "$t"); name=${name#veil_fuzz_}
  work=$(mktemp -d)
  corpus=()
  [[ -d fuzz/corpus/$name ]] && corpus=(fuzz/corpus/"$name")
  if "$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=0 \
       -artifact_prefix="$work/" "$work" "${corpus[@]}" >"$work/log" 2>&1; then
    echo "fuzz $name: ok ($(grep -Eo '#[0-9]+' "$work/log" | tail -n1 | tr -d '#') runs in ${seconds}s)"
  else
    echo "fuzz $name: FAILED"; tail -n 40 "$work/log"; status=1
  fi
  rm -rf "$work"
done
exit $status
