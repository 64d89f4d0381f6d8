# Sourced by scripts/up and scripts/test: installs (Debian packages) and starts what the shop
# needs, whatever the machine already runs. Idempotent.
set -euo pipefail

MICROMART_HOME="${MICROMART_HOME:-$HOME/.local/share/micromart}"
export MICROMART_HOME
mkdir -p "$MICROMART_HOME"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

ensure_build_deps() {
  # consulrs pulls reqwest 0.11 with native TLS: it links OpenSSL. jemalloc (the gateway's
  # allocator) is built from its C sources with make.
  apt_install pkg-config libssl-dev gcc make
}

ensure_postgres() {
  if ! command -v pg_ctlcluster >/dev/null || ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    apt_install postgresql
  fi
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    log "starting PostgreSQL $version"
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    for _ in $(seq 1 60); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.5; done
    pg_isready -q -h 127.0.0.1 -p 5432 || { echo "PostgreSQL did not start on 127.0.0.1:5432" >&2; exit 1; }
  fi
  # The shop's role: may create its databases; its password lives outside the repository.
  local pwfile="$MICROMART_HOME/pgpassword"
  if [ ! -s "$pwfile" ]; then
    (umask 077; head -c 24 /dev/urandom | base64 | tr -d '/+=' > "$pwfile")
  fi
  PGPASSWORD="$(cat "$pwfile")"
  export PGPASSWORD
  $SUDO runuser -u postgres -- psql -q -v ON_ERROR_STOP=1 -d postgres >/dev/null <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'micromart') THEN
    CREATE ROLE micromart LOGIN CREATEDB;
  END IF;
END \$\$;
ALTER ROLE micromart LOGIN CREATEDB PASSWORD '$PGPASSWORD';
SQL
}

ensure_redis() {
  if ! command -v redis-server >/dev/null; then
    apt_install redis-server
    # Debian's package starts a Redis of its own that keeps no append-only file: the shop's
    # streams would not survive its restart. Installed here, it is set to keep one (and to
    # keep doing so after a reboot); one found running is only checked (redis_keeps_streams).
    # Only the package's own (its config file is Debian's), not one that happened to start
    # meanwhile elsewhere (a container, say). -e: redis-cli exits 0 on an error reply without it.
    if redis-cli -h 127.0.0.1 -p 6379 INFO server 2>/dev/null | grep -q '^config_file:/etc/redis/redis.conf'; then
      log "making the Redis just installed keep an append-only file"
      redis-cli -e -h 127.0.0.1 -p 6379 CONFIG SET appendonly yes >/dev/null
      redis-cli -e -h 127.0.0.1 -p 6379 CONFIG SET appendfsync always >/dev/null
      redis-cli -e -h 127.0.0.1 -p 6379 CONFIG REWRITE >/dev/null \
        || echo "warning: Redis could not write its config; it keeps an append-only file only until it restarts" >&2
    fi
  fi
  if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    log "starting Redis"
    mkdir -p "$MICROMART_HOME/redis"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly yes --appendfsync always \
      --dir "$MICROMART_HOME/redis" --logfile "$MICROMART_HOME/redis/redis.log"
    for _ in $(seq 1 40); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.25; done
    redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null || { echo "Redis did not start on 127.0.0.1:6379" >&2; exit 1; }
  fi
}

# deploy's tests run `vagrant validate` on the Vagrantfile (no VM provider needed).
ensure_vagrant() {
  if ! command -v vagrant >/dev/null; then apt_install vagrant; fi
}

# The notification tests send real SMTP to Python's aiosmtpd.
ensure_aiosmtpd() {
  if ! command -v python3 >/dev/null || ! python3 -m pip --version >/dev/null 2>&1; then
    apt_install python3 python3-pip
  fi
  if ! python3 -c "import aiosmtpd" >/dev/null 2>&1; then
    log "installing aiosmtpd"
    # Debian's own Python refuses pip outside a venv (PEP 668): then into the user's site.
    python3 -m pip install --quiet aiosmtpd 2>/dev/null \
      || python3 -m pip install --quiet --user --break-system-packages aiosmtpd
    python3 -c "import aiosmtpd" || { echo "aiosmtpd could not be installed" >&2; exit 1; }
  fi
}

# Redocly CLI lints the committed OpenAPI documents (duplicate keys, missing operationIds,
# invalid OpenAPI). 1.x runs on the Node.js 18 that Debian 12 ships.
REDOCLY_VERSION="1.34.5"
ensure_redocly() {
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then apt_install nodejs npm; fi
  local dir="$MICROMART_HOME/tools/redocly-$REDOCLY_VERSION"
  if [ ! -x "$dir/node_modules/.bin/redocly" ]; then
    log "installing @redocly/cli $REDOCLY_VERSION"
    mkdir -p "$dir"
    npm install --prefix "$dir" --silent --no-audit --no-fund "@redocly/cli@$REDOCLY_VERSION" >/dev/null
  fi
  REDOCLY="$dir/node_modules/.bin/redocly"
}

# Warns when the Redis at 127.0.0.1:6379 keeps no append-only file: events relayed to its
# streams and not yet consumed would be lost if it restarted (the outboxes keep only what is
# not yet relayed). A Redis this script did not start or install is left as it is.
redis_keeps_streams() {
  local aof
  aof=$(redis-cli -h 127.0.0.1 -p 6379 CONFIG GET appendonly 2>/dev/null | sed -n 2p)
  if [ "$aof" != "yes" ]; then
    echo "warning: the Redis at 127.0.0.1:6379 keeps no append-only file (appendonly $aof): events not yet consumed are lost if it restarts; 'redis-cli CONFIG SET appendonly yes' keeps them" >&2
  fi
}
