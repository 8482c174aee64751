#!/bin/sh
# Start the gateway from the seed's environment variables:
#   TOKENIZER_PATH, TRITON_SERVER_HOST, TRITON_SERVER_PORT, MODEL_TYPE, WORKERS
# plus MODEL_NAME (Triton model, default tensorrt_llm), SERVED_MODEL_NAME, PORT, and
# TRUST_REMOTE_CODE=true for a tokenizer shipped as code (Qwen-VL's).
# TRITON_SERVER_URLS, when set, replaces TRITON_SERVER_HOST/PORT: several Tritons as
# host:port, comma-separated (a name resolving to several addresses is one each).
# Without TOKENIZER_PATH no model is registered: manage models in the admin.
# GATEWAY_MIGRATE=false skips `migrate` at start-up (when a separate job migrates, as in
# platform/compose and platform/k8s: replicas starting together must not race on it).
set -eu
if [ -z "${SECRET_KEY:-}" ]; then
  echo "SECRET_KEY must be set (API keys are hashed with it; keep it stable)." >&2
  exit 2
fi
set -- --host 0.0.0.0 --port "${PORT:-9900}" --workers "${WORKERS:-4}"
if [ "${GATEWAY_MIGRATE:-true}" = "false" ]; then
  set -- "$@" --no-migrate
fi
if [ -n "${TOKENIZER_PATH:-}" ]; then
  set -- "$@" --model-name "${MODEL_NAME:-tensorrt_llm}" \
    --tokenizer-path "$TOKENIZER_PATH" \
    --server-url "${TRITON_SERVER_URLS:-${TRITON_SERVER_HOST:-127.0.0.1}:${TRITON_SERVER_PORT:-8001}}" \
    --model_type "${MODEL_TYPE:-qwen2-chat}"
  if [ -n "${SERVED_MODEL_NAME:-}" ]; then
    set -- "$@" --served-model-name "$SERVED_MODEL_NAME"
  fi
  if [ "${TRUST_REMOTE_CODE:-false}" = "true" ]; then
    set -- "$@" --trust-remote-code
  fi
fi
exec python manage.py serve "$@"
