#!/usr/bin/env bash
# Install, then run the whole test suite against the real dev Triton.
# DATABASE_URL unset: SQLite. Set it (postgres://...) to run on PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
mkdir -p var test-artifacts
exec .venv/bin/python -m pytest "$@"
