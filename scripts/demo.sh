#!/usr/bin/env bash
# Install, then start the demo: dev Triton (CPU), the demo models, the gateway on :9900.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  # Answered before installing anything: a fresh clone has no .venv yet, and installing
  # takes minutes. tests/test_demo.py checks this lists every option of `manage.py demo`.
  cat <<'HELP'
usage: scripts/demo.sh [--host HOST] [--port PORT] [--workers N] [--trtllm-version {0.8,recent}]

Installs the project into .venv (the first run takes a few minutes), then starts the demo:
the real tritonserver on CPU serving a scripted chat model (qwen1.5-chat) and the Qwen-VL
pair (qwen-vl-chat, takes images), the gateway on SQLite (var/demo.sqlite3), an admin user
and an API key, printed with curl lines to try. Ctrl-C stops everything.

options:
  --host HOST           Address the gateway listens on (default: 127.0.0.1; 0.0.0.0 for
                        every interface).
  --port PORT           The gateway's port (default: 9900).
  --workers N           uvicorn worker processes (default: 1).
  --trtllm-version {0.8,recent}
                        The TensorRT-LLM interface the chat model declares: 0.8 (Triton
                        24.02, the seed's) or recent (guided decoding, so structured
                        outputs work); default recent, as for `devtriton`.
  -h, --help            Show this help and exit.

environment: SQLITE_PATH (default var/demo.sqlite3), and any variable of .env.example.
HELP
}

for arg in "$@"; do
  if [ "$arg" = "-h" ] || [ "$arg" = "--help" ]; then
    usage
    exit 0
  fi
done

scripts/bootstrap.sh
mkdir -p var
export SQLITE_PATH=${SQLITE_PATH:-$PWD/var/demo.sqlite3}
exec .venv/bin/python manage.py demo "$@"
