#!/usr/bin/env bash
# Makes the reference tensors for the voice crate's equivalence tests.
#
#   setup.sh MODEL.onnx OUT_DIR
#
# Creates (once) a Python venv with onnxruntime and onnx from PyPI under
# ~/.cache/sonora-tools/voice-ref (override with VOICE_REF_VENV), then runs make_reference.py.
# Safe to run again and concurrently (nextest runs each test in its own process): one lock guards
# the venv and the tensors, and tensors already made (OUT_DIR/DONE) are kept.
set -euo pipefail

model=$1
out=$2
here=$(cd "$(dirname "$0")" && pwd)
venv=${VOICE_REF_VENV:-$HOME/.cache/sonora-tools/voice-ref}

mkdir -p "$(dirname "$venv")" "$out"
exec 9>"$(dirname "$venv")/voice-ref.lock"
flock 9
if [[ -f $out/DONE ]]; then
  exit 0
fi

if [[ ! -x $venv/bin/python ]] || ! "$venv/bin/python" -c 'import onnx, onnxruntime, numpy' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'onnxruntime>=1.17' 'onnx>=1.15' numpy
fi

"$venv/bin/python" "$here/make_reference.py" "$model" "$out"
