# Shared by scripts/run.sh and scripts/test.sh: get a fresh machine to a working state.
# Everything here is idempotent: a second run only checks.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "Need root to run: $*" >&2; return 1; fi
}

apt_install() {
  command -v apt-get >/dev/null || { echo "Please install: $*" >&2; return 1; }
  say "Installing system packages: $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null \
    || { as_root apt-get update -q >/dev/null && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null; }
}

find_python() {
  for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      echo "$candidate"; return 0
    fi
  done
  apt_install python3 python3-venv python3-pip >&2 && echo python3
}

# ensure_venv REQUIREMENTS_FILE: a virtualenv with exactly those pins installed.
ensure_venv() {
  local requirements="$1" python stamp digest
  python="$(find_python)"
  if [ ! -x "$PY" ]; then
    say "Creating virtualenv in $VENV"
    "$python" -m venv "$VENV" 2>/dev/null || { apt_install python3-venv && "$python" -m venv "$VENV"; }
  fi
  stamp="$VENV/.installed-$(basename "$requirements")"
  digest="$(cat "$ROOT/requirements.txt" "$ROOT/$requirements" | sha256sum | cut -d' ' -f1)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$digest" ]; then
    say "Installing Python packages from $requirements"
    "$PY" -m pip install -q --disable-pip-version-check -r "$ROOT/$requirements" 2>&1 \
      | grep -v "^WARNING: Location" || true
    "$PY" -c "import django" || { echo "pip install failed" >&2; return 1; }
    echo "$digest" > "$stamp"
  fi
}

ensure_postgres() {
  if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then return 0; fi
  command -v pg_ctlcluster >/dev/null || apt_install postgresql postgresql-client
  local version
  version="$(ls /etc/postgresql | sort -V | tail -n1)"
  say "Starting PostgreSQL $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && return 0; sleep 1; done
  echo "PostgreSQL did not come up on 127.0.0.1:5432" >&2; return 1
}

ensure_redis() {
  if command -v redis-cli >/dev/null && redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then return 0; fi
  command -v redis-server >/dev/null || apt_install redis-server
  say "Starting Redis"
  as_root mkdir -p /var/lib/redis /var/log/redis
  as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
    --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 1 30); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && return 0; sleep 1; done
  echo "Redis did not come up on 127.0.0.1:6379" >&2; return 1
}

# Browser tests drive Debian's Chromium through Playwright (Playwright's own browser
# download needs the internet; the distribution package does not).
ensure_chromium() {
  if [ -x /usr/bin/chromium ]; then return 0; fi
  apt_install chromium
}
