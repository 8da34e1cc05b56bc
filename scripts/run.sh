#!/usr/bin/env bash
# Install everything and run the product: migrations, demo data, the ASGI server, and (when a
# broker is configured) a Celery worker with the beat scheduler, and (when Redis is
# configured) a gateway settler. With nothing configured it runs on SQLite with tasks
# executed in-process and gateway calls settled by the web process.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

ensure_venv requirements.txt
export DJANGO_SETTINGS_MODULE="${DJANGO_SETTINGS_MODULE:-config.settings.local}"
HOST="${HOST:-127.0.0.1}"
PORT="${PORT:-8000}"

say "Applying migrations"
"$PY" manage.py migrate --noinput -v0
"$PY" manage.py seed_demo

pids=()
cleanup() { for pid in "${pids[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM

if [ -n "${CELERY_BROKER_URL:-}" ]; then
  say "Starting a Celery worker with beat (broker $CELERY_BROKER_URL)"
  "$VENV/bin/celery" -A config worker --beat --loglevel INFO --concurrency 2 &
  pids+=("$!")
else
  say "No CELERY_BROKER_URL: background tasks run in-process (eager)"
fi

if [ -n "${REDIS_URL:-}" ]; then
  say "Starting a gateway settler (Redis $REDIS_URL)"
  "$PY" manage.py gateway_settler &
  pids+=("$!")
fi

say "Serving on http://$HOST:$PORT/ (admin at /admin/, API docs at /api/docs/)"
"$VENV/bin/uvicorn" config.asgi:application --host "$HOST" --port "$PORT" \
  --workers "${WEB_CONCURRENCY:-1}" --no-access-log &
pids+=("$!")
wait -n "${pids[@]}"
