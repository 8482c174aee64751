"""Request-log records: built once per request, written with the settlement.

A record is a plain JSON-safe dict so it can travel through the Redis outbox
(accounts/quota/redis_store.py) as well as straight into the database.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import UTC, datetime

import orjson
from django.conf import settings
from django.http import HttpRequest

from accounts.models import RequestLog

logger = logging.getLogger(__name__)

MAX_TEXT = 100_000  # characters of prompt or response text kept when content logging is on


def request_started(request: HttpRequest) -> None:
    request.gateway_started = time.monotonic()
    request.gateway_started_at = time.time()


def _client_ip(request: HttpRequest) -> str | None:
    return request.META.get("REMOTE_ADDR") or None


def body_model(request: HttpRequest) -> str:
    """The `model` a request body names, for logging requests refused before admission."""
    try:
        body = orjson.loads(request.body)
    except Exception:
        return ""
    model = body.get("model") if isinstance(body, dict) else None
    return model[:128] if isinstance(model, str) else ""


def log_record(
    request: HttpRequest,
    *,
    key=None,
    model: str = "",
    endpoint: str = "",
    status: int,
    error_type: str | None = None,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    finish_reason: str | None = None,
    ttft_s: float | None = None,
    streamed: bool = False,
    cancelled: bool = False,
    response_text: str | None = None,
) -> dict:
    started = getattr(request, "gateway_started", None) or time.monotonic()
    record = {
        "log_id": uuid.uuid4().hex,
        "created_at": getattr(request, "gateway_started_at", None) or time.time(),
        "request_id": getattr(request, "request_id", "")[:200],
        "api_key_id": key.id if key is not None else None,
        "key_public_id": key.public_id if key is not None else "",
        "model": model,
        "endpoint": (endpoint or request.path)[:64],
        "status": status,
        "error_type": (error_type or "")[:64],
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "finish_reason": (finish_reason or "")[:32],
        "latency_ms": round((time.monotonic() - started) * 1000, 3),
        "ttft_ms": round(ttft_s * 1000, 3) if ttft_s is not None else None,
        "streamed": streamed,
        "cancelled": cancelled,
        "client_ip": _client_ip(request),
        "prompt_text": None,
        "response_text": None,
    }
    if settings.REQUEST_LOG_CONTENT:
        try:
            record["prompt_text"] = request.body.decode("utf-8", "replace")[:MAX_TEXT]
        except Exception:  # a body over the size limit cannot be read (413)
            record["prompt_text"] = None
        if response_text is not None:
            record["response_text"] = response_text[:MAX_TEXT]
    return record


def log_row(record: dict) -> RequestLog:
    fields = dict(record)
    fields["log_id"] = uuid.UUID(fields["log_id"])
    fields["created_at"] = datetime.fromtimestamp(fields["created_at"], UTC)
    return RequestLog(**fields)


def logs_write(records: list[dict]) -> None:
    """Insert records; one already written (a re-drained outbox item) is skipped."""
    RequestLog.objects.bulk_create([log_row(r) for r in records], ignore_conflicts=True)
