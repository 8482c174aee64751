# The gateway under uvicorn. Triton runs elsewhere (see platform/triton/README.md).
#
#   docker build -t llmgateway .
#   docker run -p 9900:9900 -e SECRET_KEY=... -e DATABASE_URL=postgres://... \
#     -e TOKENIZER_PATH=/models/Qwen1.5-1.8B-Chat -v /models:/models:ro \
#     -e TRITON_SERVER_HOST=10.0.0.5 -e TRITON_SERVER_PORT=8001 -e MODEL_TYPE=qwen2-chat llmgateway
#   (several Tritons: -e TRITON_SERVER_URLS=10.0.0.5:8001,10.0.0.6:8001 instead of HOST/PORT)
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DEBUG=false \
    LOG_FORMAT=json \
    PORT=9900 \
    WORKERS=4 \
    MODEL_NAME=tensorrt_llm \
    MODEL_TYPE=qwen2-chat \
    TRITON_SERVER_PORT=8001 \
    STATIC_ROOT=/app/var/static \
    HF_HUB_OFFLINE=1

WORKDIR /app

# Dependencies first, so code changes don't reinstall them.
COPY pyproject.toml README.md ./
COPY llmgateway/__init__.py llmgateway/__init__.py
COPY accounts/__init__.py accounts/__init__.py
# qwen-vl: tiktoken, which Qwen-VL-Chat's tokenizer code imports.
RUN pip install ".[qwen-vl,otel]"

COPY manage.py ./
COPY llmgateway ./llmgateway
COPY accounts ./accounts
COPY platform ./platform
COPY docker/entrypoint.sh /usr/local/bin/llmgateway-entrypoint
# Reinstall the project itself (no dependency changes) so site-packages matches the code.
RUN pip install --no-deps . \
    && SECRET_KEY=collectstatic-only python manage.py collectstatic --noinput --verbosity 0 \
    && useradd --system --uid 10001 --home /app gateway \
    && mkdir -p /app/var && chown -R gateway /app/var \
    && chmod +x /usr/local/bin/llmgateway-entrypoint

# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001
EXPOSE 9900
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s \
    CMD python -c "import urllib.request,os; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"PORT\"]}/health', timeout=2)"
ENTRYPOINT ["llmgateway-entrypoint"]
