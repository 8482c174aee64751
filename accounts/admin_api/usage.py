"""Admin API: usage and costs (accounts/usage_api.py does the counting)."""

from __future__ import annotations

from django.http import HttpRequest
from ninja import Router

from accounts import usage_api
from accounts.admin_api.auth import usage_auth
from accounts.admin_api.objects import PageOut
from llmgateway.db import orm

router = Router(auth=usage_auth, tags=["admin: usage"])

# Usage endpoints OpenAI has that serve nothing here: the right envelope, empty buckets.
EMPTY_USAGE = (
    "embeddings",
    "moderations",
    "images",
    "audio_speeches",
    "audio_transcriptions",
    "vector_stores",
    "code_interpreter_sessions",
    "file_search_calls",
    "web_search_calls",
)
ALL_GROUPS = (*usage_api.COMPLETIONS_GROUPS, "size", "source", "vector_store_id", "context_level")


def _completions(query) -> dict:
    parsed = usage_api.usage_query(
        query, groups=usage_api.COMPLETIONS_GROUPS, limits=usage_api.COMPLETIONS_LIMITS
    )
    return usage_api.completions_usage(parsed)


@router.get("/usage/completions", response=PageOut, operation_id="usageCompletions")
async def completions(request: HttpRequest):
    """Query: start_time (required), end_time, bucket_width (1m, 1h, 1d), group_by,
    project_ids, user_ids, api_key_ids, models, batch, limit, page."""
    return await orm(_completions)(request.GET)


def _costs(query) -> dict:
    parsed = usage_api.usage_query(
        query, groups=usage_api.COSTS_GROUPS, limits=usage_api.COSTS_LIMITS
    )
    return usage_api.costs(parsed)


@router.get("/costs", response=PageOut, operation_id="costs")
async def costs(request: HttpRequest):
    """Query: start_time (required), end_time, bucket_width (1d), group_by (project_id,
    line_item, api_key_id), project_ids, api_key_ids, limit, page."""
    return await orm(_costs)(request.GET)


def _empty(query) -> dict:
    parsed = usage_api.usage_query(query, groups=ALL_GROUPS, limits=usage_api.COMPLETIONS_LIMITS)
    return usage_api.empty_usage(parsed)


def _empty_route(name: str):
    async def view(request: HttpRequest):
        return await orm(_empty)(request.GET)

    view.__name__ = f"usage_{name}"
    router.get(f"/usage/{name}", response=PageOut, operation_id=f"usage_{name}")(view)


for _name in EMPTY_USAGE:
    _empty_route(_name)
