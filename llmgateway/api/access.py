"""The access line: one log line per request, once its response is sent.

Logger `llmgateway.access` at INFO (LOG_ACCESS=false turns it off): method, path,
status, latency, and for a generation its time to first token, tokens and how it
ended. Probes and scrapes (/health*, /metrics), a line every few seconds from each
kubelet and Prometheus, are at DEBUG. The request's id, key, model and route come with every line
(llmgateway/logconfig.py). Never a query string, a header or the body.
"""

from __future__ import annotations

import logging
import time

from django.http import HttpRequest

from llmgateway.context import request_context

logger = logging.getLogger("llmgateway.access")


QUIET_PREFIXES = ("/health", "/metrics")


def access_log(request: HttpRequest, status: int) -> None:
    level = logging.DEBUG if request.path.startswith(QUIET_PREFIXES) else logging.INFO
    if not logger.isEnabledFor(level):
        return
    context = request_context(request)
    latency_ms = round((time.monotonic() - context.started) * 1000, 2)
    fields: dict[str, object] = {
        "method": request.method,
        "path": request.path,
        "status": status,
        "latency_ms": latency_ms,
    }
    summary = f"{request.method} {request.path} {status} {latency_ms}ms"
    if context.time_to_first_token is not None:
        fields["ttft_ms"] = ttft = round(context.time_to_first_token * 1000, 2)
        summary += f" ttft={ttft}ms"
    if context.prompt_tokens is not None:
        fields["prompt_tokens"] = context.prompt_tokens
        fields["completion_tokens"] = context.completion_tokens
        summary += f" tokens={context.prompt_tokens}+{context.completion_tokens}"
    if context.error_type:
        fields["error"] = context.error_type
        summary += f" error={context.error_type}"
    logger.log(level, summary, extra=fields)
