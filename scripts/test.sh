#!/usr/bin/env bash
# Install everything and run the whole test suite on PostgreSQL and Redis (127.0.0.1):
# lint, format check, type check, then pytest (migrations check included).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

ensure_venv requirements-dev.txt
ensure_postgres
ensure_redis
ensure_chromium

say "Lint, format and types"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
"$VENV/bin/mypy"

say "Tests"
"$VENV/bin/pytest" -n "${TEST_WORKERS:-2}" --create-db "$@"
