"""The HTTP edge: one NinjaAPI, routers mounted in one place."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from ninja import NinjaAPI, Swagger
from ninja.openapi.schema import OpenAPISchema

from llmgateway.api.errors import install_error_handlers
from llmgateway.api.openapi import document_responses
from llmgateway.api.parser import JSONParser


def inference_auth():
    """accounts' API-key auth, or None when the platform is off (GATEWAY_PLATFORM)."""
    if not settings.GATEWAY_PLATFORM:
        return None
    from accounts.auth import api_key_auth

    return api_key_auth


class TemporalResponse(HttpResponse):
    """Ninja's per-call "temporal response", built only when something uses it.

    Ninja makes an HttpResponse before every call, for views that return data
    rather than a response (it then takes their status and body). Every view
    here returns its own response, so it went unused, and building it cost a
    request ~65 µs with the caches cold, the state a request finds them in after
    Triton's work (~5 µs warm). Here it is built on first use, and then behaves
    as Ninja's own.
    """

    def __init__(self, content_type: str) -> None:
        self.__dict__["_deferred_content_type"] = content_type

    def _build(self) -> bool:
        content_type = self.__dict__.pop("_deferred_content_type", None)
        if content_type is None:
            return False
        HttpResponse.__init__(self, "", content_type=content_type)
        return True

    def __getattr__(self, name: str):
        # Only for attributes not set yet: the first use builds the response.
        if not self._build():
            raise AttributeError(name)
        return getattr(self, name)

    def __setattr__(self, name: str, value) -> None:
        # A write first builds it, or building would overwrite what was written.
        self._build()
        super().__setattr__(name, value)


class GatewayAPI(NinjaAPI):
    def create_temporal_response(self, request: HttpRequest) -> HttpResponse:
        return TemporalResponse(self.get_content_type())

    def get_openapi_schema(self, **kwargs: Any) -> OpenAPISchema:
        # The routes return hand-built responses, so Ninja documents only a bare 200:
        # bodies and error envelopes come from one table (llmgateway/api/openapi.py).
        return document_responses(super().get_openapi_schema(**kwargs))


def build_api() -> NinjaAPI:
    from llmgateway.api import chat, completions, generate, health, model_list, responses

    docs = settings.DOCS_ENABLED
    api = GatewayAPI(
        title="LLM gateway",
        version="1",
        description="OpenAI-compatible API in front of Triton (TensorRT-LLM). Errors use "
        'OpenAI\'s envelope: {"error": {"message", "type", "param", "code"}}.',
        parser=JSONParser(),
        urls_namespace="gateway",
        # Swagger UI's files come from the installed django-ninja ("ninja" in
        # INSTALLED_APPS), so /docs works offline. The base layout has no online
        # validator badge, and validatorUrl null keeps any version from calling it.
        docs=Swagger(settings={"validatorUrl": None, "persistAuthorization": True}),
        docs_url="/docs" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    install_error_handlers(api)
    # Every inference route needs an API key; /health stays open for probes.
    auth = inference_auth()
    api.add_router("", health.router)
    api.add_router("", generate.router, auth=auth)
    for router in (model_list.router, chat.router, completions.router, responses.router):
        api.add_router("/v1", router, auth=auth)
    return api
