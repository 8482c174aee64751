#!/usr/bin/env bash
# Install, then start the demo: dev Triton (CPU), the demo model, the gateway on :9900.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
mkdir -p var
export SQLITE_PATH=${SQLITE_PATH:-$PWD/var/demo.sqlite3}
exec .venv/bin/python manage.py demo "$@"
