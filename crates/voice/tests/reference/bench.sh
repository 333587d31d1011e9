#!/usr/bin/env bash
# Side-by-side benchmark: the candle voice against Piper's reference path (the same ONNX model in
# onnxruntime), on the same sentences, with the same thread count, in one run.
#
#   crates/voice/tests/reference/bench.sh [THREADS] [VOICE.onnx]
#
# Prints both real-time factors (synthesis time / audio duration), the time to the first
# sentence's audio, and the ratio candle / onnxruntime. Scales: the voice's defaults with
# noise_w = 0, so both engines make the same durations.
set -euo pipefail

threads=${1:-2}
model=${2:-$HOME/.cache/sonora/voices/en_US-joe-medium.onnx}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../../.." && pwd)
venv=${VOICE_REF_VENV:-$HOME/.cache/sonora-tools/voice-ref}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/sonora-target}

if [[ ! -x $venv/bin/python ]] || ! "$venv/bin/python" -c 'import onnxruntime, numpy' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'onnxruntime>=1.17' 'onnx>=1.15' numpy
fi
(cd "$root" && cargo build --quiet --release -p voice --example rtf)
rtf_bin=$CARGO_TARGET_DIR/release/examples/rtf

ids=$(mktemp)
trap 'rm -f "$ids"' EXIT
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "threads: $threads"
candle_out=$(RAYON_NUM_THREADS=$threads "$rtf_bin" "$model" "$ids")
ort_out=$("$venv/bin/python" "$here/bench_ort.py" "$model" "$ids" "$threads")
echo "$candle_out"
echo "$ort_out"
c=$(grep -o 'RTF [0-9.]*' <<<"$(tail -1 <<<"$candle_out")" | cut -d' ' -f2)
o=$(grep -o 'RTF [0-9.]*' <<<"$ort_out" | cut -d' ' -f2)
awk -v c="$c" -v o="$o" 'BEGIN { printf "ratio candle/onnxruntime: %.2f\n", c / o }'
