"""The HTTP edge: one NinjaAPI, routers mounted in one place."""

from __future__ import annotations

from django.conf import settings
from ninja import NinjaAPI

from llmgateway.api.errors import install_error_handlers
from llmgateway.api.parser import JSONParser


def inference_auth():
    """accounts' API-key auth, or None when the platform is off (GATEWAY_PLATFORM)."""
    if not settings.GATEWAY_PLATFORM:
        return None
    from accounts.auth import api_key_auth

    return api_key_auth


def build_api() -> NinjaAPI:
    from llmgateway.api import generate, health, openai

    api = NinjaAPI(
        title="LLM gateway",
        version="1",
        parser=JSONParser(),
        urls_namespace="gateway",
        docs_url="/docs",
    )
    install_error_handlers(api)
    # Every inference route needs an API key; /health stays open for probes.
    auth = inference_auth()
    api.add_router("", health.router)
    api.add_router("", generate.router, auth=auth)
    api.add_router("/v1", openai.router, auth=auth)
    return api
