"""Liveness, readiness and metrics, open without a key."""

from __future__ import annotations

import asyncio
import hmac

from django.conf import settings
from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from ninja import Router

from llmgateway import metrics
from llmgateway.api.errors import not_found_response
from llmgateway.db import orm
from llmgateway.errors import APIError
from llmgateway.services import model_list
from llmgateway.triton.errors import TritonUnavailable
from llmgateway.triton.pool import get_pool

router = Router(tags=["health"])


@router.get("/health")
async def health(request: HttpRequest) -> JsonResponse:
    """The process is up and serving."""
    return JsonResponse({"status": "ok"})


def _select_one() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


async def stores_status() -> dict[str, str]:
    """ "ok" or "unavailable" for the database and, when REDIS_URL is set, Redis.

    Each answers within its own bound (llmgateway/db.py; the Redis client's
    timeout), so a hung store makes readiness fail, never hang.
    """

    async def database() -> bool:
        try:
            await orm(_select_one)()
            return True
        except Exception:
            return False

    checks = {"database": database()}
    if settings.REDIS_URL:
        from accounts.quota import redis_ping  # the quota store's client, as admissions use it

        checks["redis"] = redis_ping()
    results = await asyncio.gather(*checks.values())
    status = {name: "ok" if ok else "unavailable" for name, ok in zip(checks, results, strict=True)}
    metrics.stores_checked(status)
    return status


async def _model_ready(addresses: str, model: str) -> bool:
    """Whether an endpoint serves `model`, as the pool's probes last saw it: no Triton
    call on the way, except a first probe round for a model not probed yet."""
    try:
        return await get_pool(addresses).ready(model)
    except TritonUnavailable:
        return False


@router.get("/health/ready")
async def ready(request: HttpRequest) -> JsonResponse:
    """200 when the database (and Redis, when configured) answer and at least one
    enabled model is ready in Triton (on at least one of its endpoints).

    One broken model must not take every replica out of a load balancer (all
    replicas share the same Tritons), so per-model status is reported in the
    body, and only "nothing can be served" is a 503.
    """
    stores = await stores_status()
    database = stores["database"] == "ok"
    try:
        models = await model_list() if database else []
    except DatabaseError:  # out since the check a moment ago
        models, stores["database"] = [], "unavailable"
    checks = await asyncio.gather(*(_model_ready(m.triton_url, m.triton_model) for m in models))
    model_status = {
        m.name: "ready" if ok else "unavailable" for m, ok in zip(models, checks, strict=True)
    }
    ok = all(status == "ok" for status in stores.values()) and any(checks)
    body = {"status": "ready" if ok else "unavailable", **stores, "models": model_status}
    response = JsonResponse(body, status=200 if ok else 503)
    if not ok:
        response["retry-after"] = "1"
    return response


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus's text format (llmgateway/metrics.py); 404 with METRICS_ENABLED off,
    401 without METRICS_TOKEN as the bearer token when one is set."""
    if not settings.METRICS_ENABLED:
        return not_found_response(request)
    token = settings.METRICS_TOKEN
    if token:
        sent = request.META.get("HTTP_AUTHORIZATION", "")
        if not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
            return APIError(
                401, "/metrics needs the metrics token as a bearer token.", code="invalid_api_key"
            ).response()
    return await metrics.exposition(request)
