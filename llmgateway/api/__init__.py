"""The HTTP edge: one NinjaAPI, routers mounted in one place."""

from __future__ import annotations

from ninja import NinjaAPI

from llmgateway.api.errors import install_error_handlers
from llmgateway.api.parser import JSONParser


def build_api() -> NinjaAPI:
    from llmgateway.api import generate, health

    api = NinjaAPI(
        title="LLM gateway",
        version="1",
        parser=JSONParser(),
        urls_namespace="gateway",
        docs_url="/docs",
    )
    install_error_handlers(api)
    api.add_router("", health.router)
    api.add_router("", generate.router)
    return api
