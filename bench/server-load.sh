#!/usr/bin/env bash
# Serving benchmark against the llama-server anchors (docs/benchmarks.md, "Serving"): starts `veil serve` with TLS
# (RA-TLS certificate, simulated TEE) and response signing on, on a SYNTHETIC GPT-2 124M Q8_0 model, and measures
# aggregate tok/s at 1, 4 and 16 concurrent clients with bench/server_load.py (Python standard library only).
#
#   bench/server-load.sh [VEIL_BINARY]          # default build/dev/src/cli/veil
# Environment: MODEL (default /tmp/veil-gpt2-124m-q8_0.gguf, synthesised if absent), THREADS (2), CLIENTS (1,4,16),
# NEW_TOKENS (64), SLOTS (16), REQUESTS (per level; default max(2, 32/C) per client).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
veil="${1:-$repo/build/dev/src/cli/veil}"
model="${MODEL:-/tmp/veil-gpt2-124m-q8_0.gguf}"
threads="${THREADS:-2}"
[ -x "$veil" ] || { echo "error: server-load: $veil is not an executable (build the veil target)" >&2; exit 1; }
if [ ! -f "$model" ]; then
  "$veil" synth --shape gpt2-124m --type Q8_0 --vocab "$repo/../shared/models/gpt2-tokenizer/encoder.json" -o "$model"
fi
work="$(mktemp -d /tmp/veil-server-load.XXXXXX)"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill -TERM "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
export VEIL_DATA_DIR="$work"
key="$("$veil" keys add --models '*' --rpm 1000000 --burst 100000 --db "$work/server.db" | head -n 1)"
"$veil" serve -m "$model" --listen 127.0.0.1:0 --db "$work/server.db" --cert-out "$work/cert.pem" -t "$threads" \
  --slots "${SLOTS:-16}" --grace 5 >"$work/serve.out" 2>"$work/serve.err" &
server_pid=$!
line=""
for _ in $(seq 1 600); do  # the model loads first: wait for the line that names the port (bounded: 60 s)
  line="$(grep -m1 '^veil serve: model ' "$work/serve.out" || true)"
  [ -n "$line" ] && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/serve.err" >&2; exit 1; }
  sleep 0.1
done
[ -n "$line" ] || { echo "error: server-load: veil serve did not start within 60 s" >&2; exit 1; }
port="${line##*:}"
model_id="$(echo "$line" | sed -E 's/^veil serve: model (.*) on https?:.*$/\1/')"
echo "$line (threads $threads); load before: $(uptime | sed 's/.*load average/load average/')"
python3 "$here/server_load.py" --port "$port" --cert "$work/cert.pem" --key "$key" --model "$model_id" \
  --clients "${CLIENTS:-1,4,16}" --new-tokens "${NEW_TOKENS:-64}" --requests "${REQUESTS:-0}"
echo "load after: $(uptime | sed 's/.*load average/load average/')"
