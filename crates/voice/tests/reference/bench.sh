#!/usr/bin/env bash
# Side-by-side benchmark: the candle voice against Piper's reference path (the same ONNX model in
# onnxruntime), on the same sentences, with the same thread count, in one run.
#
#   BENCH_ROUNDS=5 crates/voice/tests/reference/bench.sh [THREADS] [VOICE.onnx]
#
# Each round runs the candle example and then the onnxruntime script, each in a fresh process,
# so that a noisy neighbour slows both alike; the rounds' medians are compared. Measures:
# the paragraph's real-time factor (synthesis time / audio duration), the time to its first
# sentence's audio, the same six sentences sent one call each, and the time to the first audio
# of short sentences alone ("Hello.", "Thanks for calling."). Scales: the voice's defaults with
# noise_w = 0, so both engines make the same durations. onnxruntime gets phoneme ids; candle's
# times include espeak-ng.
set -euo pipefail

threads=${1:-2}
model=${2:-$HOME/.cache/sonora/voices/en_US-joe-medium.onnx}
rounds=${BENCH_ROUNDS:-5}
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
results=$(mktemp)
trap 'rm -f "$ids" "$results"' EXIT
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "CPU flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx|fma|f16c)' | sort | xargs)"
echo "onnxruntime $("$venv/bin/python" -c 'import onnxruntime; print(onnxruntime.__version__)'); threads: $threads; rounds: $rounds"
for round in $(seq "$rounds"); do
  candle_out=$(RAYON_NUM_THREADS=$threads "$rtf_bin" "$model" "$ids")
  ort_out=$("$venv/bin/python" "$here/bench_ort.py" "$model" "$ids" "$threads")
  if [[ $round == 1 ]]; then
    grep -v '^result' <<<"$candle_out"
    grep -v '^result' <<<"$ort_out"
  fi
  echo "candle $(grep '^result' <<<"$candle_out" | cut -d' ' -f2-)" >>"$results"
  echo "onnxruntime $(grep '^result' <<<"$ort_out" | cut -d' ' -f2-)" >>"$results"
done
python3 - "$results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    engine, *pairs = line.split()
    for key, value in (p.split("=") for p in pairs):
        rows.setdefault((engine, key), []).append(float(value))
names = [("paragraph_rtf", "paragraph, RTF"), ("first_ms", "paragraph, first audio (ms)"),
         ("sentences_rtf", "six sentences one call each, RTF"),
         ("short0_ms", '"Hello." alone, first audio (ms)'),
         ("short1_ms", '"Thanks for calling.", first audio (ms)')]
print(f"{'median of the rounds (min to max)':40} {'candle':>22} {'onnxruntime':>22} {'ratio':>6}")
for key, label in names:
    c, o = rows[("candle", key)], rows[("onnxruntime", key)]
    cm, om = statistics.median(c), statistics.median(o)
    span = lambda v: f"{statistics.median(v):.3f} ({min(v):.3f}-{max(v):.3f})"
    print(f"{label:40} {span(c):>22} {span(o):>22} {cm / om:6.2f}")
PY
