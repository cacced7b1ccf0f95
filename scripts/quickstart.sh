#!/usr/bin/env bash
# The README's first command: install what is missing, build Release, and run the main job on the default model
# (../shared/models/stories260K/stories260K.gguf): `veil serve` with TLS ending in the (simulated) TEE, an API key
# and signed responses, then a client (scripts/quickstart-client.py) that verifies the node's attestation before it
# sends a prompt, prints the greedy story, and checks the response's signatures. The server is stopped at the end;
# its state lives in a temporary folder that is removed.
#   VEIL_QUICKSTART_GENERATE=1 scripts/quickstart.sh    # only `veil generate` the story, no server
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh release
veil=build/release/src/cli/veil
if [[ ${VEIL_QUICKSTART_GENERATE:-0} == 1 ]]; then exec "$veil" generate -n 200; fi

work=$(mktemp -d "${TMPDIR:-/tmp}/veil-quickstart.XXXXXX")
server_pid=""
cleanup() {
  if [[ -n $server_pid ]]; then kill -TERM "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
export VEIL_DATA_DIR=$work  # the simulated platform key, the server's database

# The simulated TEE's platform key and its public half (what a client trusts for sim evidence).
"$veil" attest quote --provider sim --create-key --report-data 00 --out "$work/ev.json" --collateral-out "$work/col.json"
(umask 077; "$veil" keys add --models '*' --db "$work/server.db" | head -n 1 >"$work/api.key")

"$veil" serve --listen 127.0.0.1:0 --db "$work/server.db" --cert-out "$work/cert.pem" --grace 5 \
  >"$work/serve.out" 2>"$work/serve.err" &
server_pid=$!
line=""
for _ in $(seq 1 600); do  # bounded: 60 s for the model to load and the port line to appear
  line=$(grep -m1 '^veil serve: model ' "$work/serve.out" || true)
  [[ -n $line ]] && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/serve.err" >&2; echo "error: quickstart: veil serve exited" >&2; exit 1; }
  sleep 0.1
done
[[ -n $line ]] || { echo "error: quickstart: veil serve did not start within 60 s" >&2; exit 1; }
echo "$line"
port=${line##*:}
model=$(sed -E 's/^veil serve: model (.*) on https?:.*$/\1/' <<<"$line")
python3 scripts/quickstart-client.py --port "$port" --cert "$work/cert.pem" --key-file "$work/api.key" --model "$model" \
  --collateral "$work/col.json"
