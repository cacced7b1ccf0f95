#!/usr/bin/env bash
# The model table of docs/benchmarks.md: Veil's prefill and decode speed on SYNTHETIC models (fixed-seed random
# weights at real shapes, `veil synth`) next to llama.cpp's figures, as ratios.
#
#   bench/model-table.sh path/to/veil [rows...]
#
# Builds nothing: give it a built `veil`. Each model is synthesised into a temporary directory (deleted at the
# end, and each model as soon as its rows are measured), then measured with
#   veil bench -m MODEL -p 128 -n 128 -r 3 --json --threads 2   (and --threads 1)
# Decode starts from an empty KV cache (`-d 0`, the default), as llama-bench's tg128 test does; pass
# BENCH_ARGS="-p 128 -n 128 -r 3 -d 128" to decode after a 128-token context instead.
# Rows (all by default): gpt2-q8_0 gpt2-q4_0 gpt2-f16 stories15m-q8_0 stories15m-q4_0 tinyllama-q4_0 tinyllama-q8_0.
# Environment: VEIL_SHARED_DIR (default: ../shared beside the checkout) for the vocabularies; TMPDIR for the models
# (TinyLlama Q8_0 needs 1.2 GB); BENCH_THREADS (default "2 1"); BENCH_ARGS (default "-p 128 -n 128 -r 3").
# Needs python3 (formatting) and uptime. The machine's load average is printed before and after: figures from a
# loaded machine are low and only the ratios measured side by side mean much.
set -euo pipefail

if [[ $# -lt 1 || ! -x "$1" ]]; then
  echo "usage: $0 path/to/veil [rows...]   (rows: gpt2-q8_0 gpt2-q4_0 gpt2-f16 stories15m-q8_0 stories15m-q4_0 tinyllama-q4_0 tinyllama-q8_0)" >&2
  exit 2
fi
VEIL=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
shift
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${VEIL_SHARED_DIR:-$ROOT/../shared}
GPT2_VOCAB=$SHARED/models/gpt2-tokenizer/encoder.json
LLAMA_VOCAB=$SHARED/models/llama2c-tokenizer/tokenizer.bin
for f in "$GPT2_VOCAB" "$LLAMA_VOCAB"; do
  [[ -r $f ]] || { echo "$0: missing vocabulary $f (set VEIL_SHARED_DIR)" >&2; exit 2; }
done
THREADS=${BENCH_THREADS:-"2 1"}
read -r -a BENCH_ARGS <<< "${BENCH_ARGS:--p 128 -n 128 -r 3}"

ALL_ROWS=(gpt2-q8_0 gpt2-q4_0 gpt2-f16 stories15m-q8_0 stories15m-q4_0 tinyllama-q4_0 tinyllama-q8_0)
ROWS=("$@")
[[ ${#ROWS[@]} -gt 0 ]] || ROWS=("${ALL_ROWS[@]}")

# row -> "shape type output-type vocab". Q4_0 rows keep output.weight in Q6_K as llama.cpp's Q4_0 files do (stories15M's
# 288-wide rows fall back to Q8_0, as llama.cpp's do); the file sizes then match anchors.md's.
synth_args() {
  case $1 in
    gpt2-q8_0) echo "gpt2-124m Q8_0 - $GPT2_VOCAB" ;;
    gpt2-q4_0) echo "gpt2-124m Q4_0 Q6_K $GPT2_VOCAB" ;;
    gpt2-f16) echo "gpt2-124m F16 - $GPT2_VOCAB" ;;
    stories15m-q8_0) echo "stories15m Q8_0 - $LLAMA_VOCAB" ;;
    stories15m-q4_0) echo "stories15m Q4_0 Q6_K $LLAMA_VOCAB" ;;
    tinyllama-q4_0) echo "tinyllama-1.1b Q4_0 Q6_K $LLAMA_VOCAB" ;;
    tinyllama-q8_0) echo "tinyllama-1.1b Q8_0 - $LLAMA_VOCAB" ;;
    *) echo "$0: unknown row '$1' (${ALL_ROWS[*]})" >&2; return 2 ;;
  esac
}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/veil-model-table.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
RESULTS=$WORK/results.jsonl
: > "$RESULTS"

LOAD_BEFORE=$(uptime)
START=$(date -u '+%Y-%m-%d %H:%M UTC')
for row in "${ROWS[@]}"; do
  read -r shape type out_type vocab <<< "$(synth_args "$row")"
  model=$WORK/$row.gguf
  synth=("$VEIL" synth --shape "$shape" --type "$type" --vocab "$vocab" -o "$model")
  [[ $out_type == - ]] || synth+=(--output-type "$out_type")
  echo "== $row: veil ${synth[*]:1}" >&2
  "${synth[@]}" >&2
  for t in $THREADS; do
    echo "   veil bench -m $row.gguf ${BENCH_ARGS[*]} --threads $t --json" >&2
    json=$("$VEIL" bench -m "$model" "${BENCH_ARGS[@]}" --threads "$t" --json)
    printf '{"row":"%s","load":"%s","result":%s}\n' "$row" "$(cut -d" " -f1-3 /proc/loadavg 2>/dev/null || true)" \
      "$json" >> "$RESULTS"
  done
  rm -f "$model"
done
LOAD_AFTER=$(uptime)

python3 - "$RESULTS" "$START" "$LOAD_BEFORE" "$LOAD_AFTER" "$VEIL" "${BENCH_ARGS[*]}" <<'PY'
import json, sys, platform, subprocess

# llama.cpp figures from ../shared/docs/anchors.md ("llama.cpp (build of Feb 2025, CPU, `-t 2`, native flags) on
# synthetic models at real shapes", 2 Zen 4 cores with AVX-512 VNNI): (prefill tok/s for a 128-token prompt,
# decode tok/s), keyed by (row, threads). Only GPT-2 Q8_0 has a 1-thread figure.
ANCHORS = {
    ("gpt2-q8_0", 2): (980, 197), ("gpt2-q4_0", 2): (1136, 257), ("gpt2-f16", 2): (878, 119),
    ("gpt2-q8_0", 1): (531, 145),
    ("stories15m-q8_0", 2): (9625, 1329), ("stories15m-q4_0", 2): (10811, 1468),
    ("tinyllama-q4_0", 2): (114, 48.5), ("tinyllama-q8_0", 2): (101, 28.3),
}
LABELS = {
    "gpt2-q8_0": ("GPT-2 124M shape, output separate", "Q8_0"),
    "gpt2-q4_0": ("GPT-2 124M shape, output separate", "Q4_0 (output Q6_K)"),
    "gpt2-f16": ("GPT-2 124M shape, output separate", "F16"),
    "stories15m-q8_0": ("stories15M shape", "Q8_0"),
    "stories15m-q4_0": ("stories15M shape", "Q4_0 (output Q8_0)"),
    "tinyllama-q4_0": ("TinyLlama-1.1B shape", "Q4_0 (output Q6_K)"),
    "tinyllama-q8_0": ("TinyLlama-1.1B shape", "Q8_0"),
}
path, start, load_before, load_after, veil, args = sys.argv[1:7]
rows = [json.loads(l) for l in open(path) if l.strip()]
mib = float(1 << 20)

def ratio(a, b):
    return f"{a / b:.2f}x" if b else "-"

try:
    cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
except Exception:
    cpu = platform.processor() or "unknown CPU"
version = "; ".join(subprocess.run([veil, "--version"], capture_output=True, text=True).stdout.split("\n")).strip("; ")
print(f"Machine: {cpu}, {subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} CPUs; "
      f"kernels: {rows[0]['result']['kernels'] if rows else '?'}; {version}")
depth = args.split()[args.split().index("-d") + 1] if "-d" in args.split() else "0"
print(f"Date: {start}. Command: `bench/model-table.sh {veil}` (veil bench {args} --json, per row and thread count; "
      f"decode from a cache holding {depth} tokens" + (", as llama-bench's tg test" if depth == "0" else "") + ").")
print(f"Load average before: `{load_before.strip()}`; after: `{load_after.strip()}`.")
print()
print("All models are SYNTHETIC (fixed-seed random weights at the real shape, `veil synth`). tok/s: best of the "
      "repetitions (mean in brackets); llama.cpp figures and ratios: ../shared/docs/anchors.md, 2 threads (1-thread "
      "figure for GPT-2 Q8_0 only).")
print()
print("| synthetic model | type | threads | prefill tok/s | llama.cpp | ratio | decode tok/s | llama.cpp | ratio "
      "| TTFT ms | roofline share | bandwidth GB/s | peak MiB (weights + KV) | load (1/5/15 min) |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    j = r["result"]
    t = j["threads"]
    name, typ = LABELS.get(r["row"], (r["row"], ""))
    pf, dc = j["prefill_tps"], j["decode_tps"]
    a = ANCHORS.get((r["row"], t))
    apf, adc = (a if a else (None, None))
    print(f"| {name} | {typ} | {t} | {pf['best']:.1f} ({pf['mean']:.1f}) | {apf if apf else '-'} | "
          f"{ratio(pf['best'], apf) if apf else '-'} | {dc['best']:.1f} ({dc['mean']:.1f}) | {adc if adc else '-'} | "
          f"{ratio(dc['best'], adc) if adc else '-'} | {j['ttft_ms']:.1f} | {100 * j['decode_roofline_share']:.0f}% | "
          f"{j['bandwidth_gbs']:.1f} | {j['peak_rss_bytes'] / mib:.0f} ({j['model_bytes'] / mib:.0f} + "
          f"{j['kv_cache_bytes'] / mib:.0f}) | {r['load'].strip()} |")
PY
